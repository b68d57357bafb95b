//! Where the server keeps its own records in the key space. Everything Xene stores is a key
//! under `/xene/`; the raw `KvService` sees the same keys.

/// Join and API tokens, one key per token ID: `/xene/tokens/<id>`.
pub const TOKENS: &str = "/xene/tokens/";
/// Every node ID ever admitted, one key each: `/xene/cluster/nodes/<id>`. Never deleted, so
/// node IDs are never reused (DESIGN §5.1).
pub const NODES: &str = "/xene/cluster/nodes/";
/// Present once the cluster's first admin token was created.
pub const BOOTSTRAPPED: &str = "/xene/cluster/bootstrapped";

pub fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}

pub fn node(id: u64) -> String {
    format!("{NODES}{id:020}")
}

/// Workflows as applied: `/xene/objects/workflows/<name>`.
pub const WORKFLOWS: &str = "/xene/objects/workflows/";
/// Pipeline status objects: `/xene/objects/pipelines/<workflow>/<pipeline>`.
pub const PIPELINES: &str = "/xene/objects/pipelines/";

pub fn workflow(name: &str) -> String {
    format!("{WORKFLOWS}{name}")
}

pub fn pipeline(workflow: &str, pipeline: &str) -> String {
    format!("{PIPELINES}{workflow}/{pipeline}")
}

/// The prefix of every pipeline status object of `workflow`.
pub fn pipelines_of(workflow: &str) -> String {
    format!("{PIPELINES}{workflow}/")
}

/// Agents, one key each: `/xene/agents/<name>`.
pub const AGENTS: &str = "/xene/agents/";
/// Pipeline leases: `/xene/leases/<workflow>/<pipeline>`. A lease's epoch is the revision
/// that granted it, which is its key's mod revision: grants write the key, nothing renews it.
pub const LEASES: &str = "/xene/leases/";

pub fn agent(name: &str) -> String {
    format!("{AGENTS}{name}")
}

/// The lease key of a pipeline named `WORKFLOW/PIPELINE`.
pub fn lease(pipeline: &str) -> String {
    format!("{LEASES}{pipeline}")
}

/// Runs, by run ID: `/xene/runs/<id>`.
pub const RUNS: &str = "/xene/runs/";
/// Log chunks: `/xene/logs/<run>/<task>/<step>/<execution>/<first seq, 20 digits>`; the
/// execution is `-` for a chunk that names none (an agent older than execution IDs).
pub const LOGS: &str = "/xene/logs/";

pub fn run(id: &str) -> String {
    format!("{RUNS}{id}")
}

pub fn log_chunk(run: &str, task: &str, step: &str, execution: &str, first_seq: u64) -> String {
    let execution = if execution.is_empty() { "-" } else { execution };
    format!("{LOGS}{run}/{task}/{step}/{execution}/{first_seq:020}")
}

/// The prefix of every log chunk of a run.
pub fn logs_of(run: &str) -> String {
    format!("{LOGS}{run}/")
}

/// Secrets: `/xene/secrets/<name>`.
pub const SECRETS: &str = "/xene/secrets/";

pub fn secret(name: &str) -> String {
    format!("{SECRETS}{name}")
}

/// Cron cursors, one per cron trigger of a pipeline:
/// `/xene/cron/<workflow>/<pipeline>/<trigger>`, holding the last fire that made a run. A fire
/// at or before it is refused, so each scheduled time makes at most one run (DESIGN §8.3).
pub const CRON: &str = "/xene/cron/";
/// Webhook deliveries seen, by delivery ID: `/xene/deliveries/<workflow>/<trigger>/<id>`,
/// holding the runs the delivery made, so a redelivery makes none (DESIGN §8.2).
pub const DELIVERIES: &str = "/xene/deliveries/";
/// Webhook payloads, one per run a delivery started: `/xene/payloads/<run>`.
pub const PAYLOADS: &str = "/xene/payloads/";

pub fn cron_cursor(workflow: &str, pipeline: &str, trigger: &str) -> String {
    format!("{CRON}{workflow}/{pipeline}/{trigger}")
}

/// The prefix of the cron cursors of a pipeline.
pub fn cron_cursors_of(workflow: &str, pipeline: &str) -> String {
    format!("{CRON}{workflow}/{pipeline}/")
}

/// Runs started through the API with an idempotency key, kept beside webhook deliveries (and
/// forgotten with them after 7 days): `/xene/deliveries/<workflow>/api.<pipeline>/<key>`. No
/// trigger is named `api.…` (names have no dots). Keys that are not plain are hashed.
pub fn api_request(workflow: &str, pipeline: &str, key: &str) -> String {
    delivery(workflow, &format!("api.{pipeline}"), &crate::triggers::webhook::key_safe(key))
}

pub fn delivery(workflow: &str, trigger: &str, id: &str) -> String {
    format!("{DELIVERIES}{workflow}/{trigger}/{id}")
}

pub fn payload(run: &str) -> String {
    format!("{PAYLOADS}{run}")
}
