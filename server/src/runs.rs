//! Runs in the store (DESIGN §9): created `Pending` by a trigger, handed by the leader to the
//! agent holding the pipeline's lease, and updated only by that agent under its lease epoch.
//! Every agent write here is fenced: it applies only while the lease key's mod revision is
//! still the epoch the agent holds (DESIGN §7.5).

use chrono::Utc;
use rand::RngCore;
use xene_model::status::{ErrorReason, RunPhase};
use xene_model::{LogChunk, LogChunkView, RunObject, RunSpec, RunStatus, Workflow};
use xene_raft_store::{Compare, KeyValue, Op, Txn};

use crate::error::{Result, ServerError};
use crate::keys;
use crate::node::ClusterNode;

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(e.to_string())
}

/// A run read from the store with its revision.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub run: RunObject,
    pub revision: u64,
}

fn decode(kv: &KeyValue) -> Result<StoredRun> {
    let mut run: RunObject = serde_json::from_slice(&kv.value).map_err(|e| {
        ServerError::Internal(format!("the run stored at {:?} is unreadable: {e}", String::from_utf8_lossy(&kv.key)))
    })?;
    run.metadata.resource_version = Some(kv.mod_revision);
    Ok(StoredRun { run, revision: kv.mod_revision })
}

/// A new object's `metadata.uid` (DESIGN §6.3): 128 random bits in the 8-4-4-4-12 form.
pub fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let hex = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn new_id(workflow: &str, pipeline: &str) -> String {
    let mut bytes = [0u8; 3];
    rand::rng().fill_bytes(&mut bytes);
    format!("{workflow}.{pipeline}.{}{}", Utc::now().format("%Y%m%d%H%M%S"), hex::encode(bytes))
}

/// Reads the workflow `workflow` as this server has applied it (callers that need the latest
/// call [`ClusterNode::read_barrier`] first), with the revision it was stored at.
pub async fn workflow(node: &ClusterNode, workflow: &str) -> Result<(Workflow, u64)> {
    let stored = node.reader.range(keys::workflow(workflow).into_bytes(), false, 0).await?;
    let Some(kv) = stored.kvs.first() else {
        return Err(ServerError::NotFound(format!("workflow {workflow:?} not found; apply it first")));
    };
    Ok((serde_json::from_slice(&kv.value).map_err(internal)?, kv.mod_revision))
}

/// A run about to be created: its key, its stored form and the object.
pub struct NewRun {
    pub key: String,
    pub value: Vec<u8>,
    pub run: RunObject,
}

impl NewRun {
    /// The run as created at `revision`.
    pub fn created(mut self, revision: u64) -> StoredRun {
        self.run.metadata.resource_version = Some(revision);
        tracing::info!(run = %self.run.metadata.name, workflow = %self.run.spec.workflow,
            pipeline = %self.run.spec.pipeline, trigger = %self.run.spec.trigger, "run created");
        StoredRun { run: self.run, revision }
    }
}

/// Builds a pending run of `pipeline` of `spec` (applied at `spec_revision`), checking the
/// pipeline and parameter names.
pub fn pending(
    spec: &Workflow,
    spec_revision: u64,
    pipeline: &str,
    trigger: &str,
    parameters: std::collections::BTreeMap<String, String>,
) -> Result<NewRun> {
    let workflow = spec.metadata.name.as_str();
    if !spec.spec.pipelines.contains_key(pipeline) {
        let known: Vec<&str> = spec.spec.pipelines.keys().map(String::as_str).collect();
        return Err(ServerError::NotFound(format!(
            "workflow {workflow:?} has no pipeline {pipeline:?}; its pipelines are {}",
            known.join(", ")
        )));
    }
    for key in parameters.keys() {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ServerError::InvalidArgument(format!(
                "parameter {key:?}: names use letters, digits and '_' (they become environment variables)"
            )));
        }
    }
    let id = new_id(workflow, pipeline);
    let mut run = RunObject::pending(
        &id,
        RunSpec {
            workflow: workflow.into(),
            pipeline: pipeline.into(),
            trigger: trigger.into(),
            parameters,
            cancel_requested: false,
            workflow_revision: spec_revision,
            agent_retries: 0,
        },
    );
    run.metadata.uid = Some(new_uid());
    run.metadata.creation_timestamp = Some(Utc::now());
    let value = serde_json::to_vec(&run).map_err(internal)?;
    Ok(NewRun { key: keys::run(&id), value, run })
}

/// Creates a pending run of `workflow/pipeline` (the API trigger, DESIGN §8.1).
///
/// With an `idempotency_key` (DESIGN §4.4: a retried write is applied once), the first request
/// records the run it made under the key, in the same write, and a request with the same key
/// for the same pipeline within 7 days answers that run instead of making another.
pub async fn create(
    node: &ClusterNode,
    workflow: &str,
    pipeline: &str,
    trigger: &str,
    parameters: std::collections::BTreeMap<String, String>,
    idempotency_key: Option<&str>,
) -> Result<StoredRun> {
    let record_key = match idempotency_key {
        Some(key) if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => {
            return Err(ServerError::InvalidArgument(format!(
                "idempotency key {key:?}: use 1 to 200 printable ASCII characters, e.g. a UUID"
            )));
        }
        Some(key) => Some(keys::api_request(workflow, pipeline, key)),
        None => None,
    };
    node.read_barrier().await?;
    if let Some(record_key) = &record_key {
        if let Some(made) = made_by(node, record_key, &parameters).await? {
            return Ok(made);
        }
    }
    let (spec, spec_revision) = self::workflow(node, workflow).await?;
    let new = pending(&spec, spec_revision, pipeline, trigger, parameters.clone())?;
    let Some(record_key) = record_key else {
        let revision = node.create(new.key.clone(), new.value.clone(), "run").await?;
        return Ok(new.created(revision));
    };
    let record = crate::triggers::webhook::DeliveryRecord::api_request(new.run.metadata.name.clone(), &parameters);
    let response = node
        .txn(Txn {
            compare: vec![Compare::absent(new.key.clone()), Compare::absent(record_key.clone())],
            success: vec![
                Op::Put { key: new.key.clone().into_bytes(), value: new.value.clone() },
                Op::Put { key: record_key.clone().into_bytes(), value: serde_json::to_vec(&record).map_err(internal)? },
            ],
            failure: vec![],
        })
        .await?;
    if response.succeeded {
        return Ok(new.created(response.revision));
    }
    // The same request reached another server first.
    node.read_barrier().await?;
    match made_by(node, &record_key, &parameters).await? {
        Some(made) => Ok(made),
        None => Err(ServerError::Internal("run ID collision; retry".into())),
    }
}

/// The run an earlier request with the same idempotency key made, if there was one; an error
/// if that request had other parameters.
async fn made_by(
    node: &ClusterNode,
    record_key: &str,
    parameters: &std::collections::BTreeMap<String, String>,
) -> Result<Option<StoredRun>> {
    let Some(record) = crate::triggers::webhook::remembered(node, record_key).await? else { return Ok(None) };
    let Some(id) = record.runs.first() else { return Ok(None) };
    if record.parameters.is_some_and(|digest| digest != crate::triggers::webhook::parameters_digest(parameters)) {
        return Err(ServerError::InvalidArgument(format!(
            "this idempotency key already started run {id} with other parameters; use a new key for a new run"
        )));
    }
    match get_local(node, id).await {
        Ok(run) => Ok(Some(run)),
        Err(ServerError::NotFound(_)) => Err(ServerError::FailedPrecondition(format!(
            "this idempotency key already made run {id}, which is no longer kept (run history); use a new key to start another run"
        ))),
        Err(e) => Err(e),
    }
}

/// Reads one run (linearizably).
pub async fn get(node: &ClusterNode, id: &str) -> Result<StoredRun> {
    node.read_barrier().await?;
    get_local(node, id).await
}

/// Reads one run from this server's applied state: for writes that compare its revision, which
/// a stale read only makes fail and retry, so they need no read barrier.
async fn get_local(node: &ClusterNode, id: &str) -> Result<StoredRun> {
    let found = node.reader.range(keys::run(id).into_bytes(), false, 0).await?;
    match found.kvs.first() {
        Some(kv) => decode(kv),
        None => Err(ServerError::NotFound(format!("run {id:?} not found; see xenectl runs"))),
    }
}

/// Every run, oldest first, optionally of one workflow/pipeline and in one phase.
/// A phase that names none, or no run found of a workflow or pipeline that does not exist
/// (a typo), is an error rather than an empty list; runs kept of a deleted one are listed.
pub async fn list(node: &ClusterNode, workflow: &str, pipeline: &str, phase: &str) -> Result<Vec<StoredRun>> {
    if !phase.is_empty() {
        RunPhase::from_name(phase).map_err(ServerError::InvalidArgument)?;
    }
    node.read_barrier().await?;
    let runs = list_local(node, workflow, pipeline, phase).await?;
    if runs.is_empty() && !workflow.is_empty() {
        let (spec, _) = self::workflow(node, workflow).await.map_err(|e| match e {
            ServerError::NotFound(_) => ServerError::NotFound(format!(
                "workflow {workflow:?} not found, and no runs of it are kept; see xenectl get workflows"
            )),
            other => other,
        })?;
        if !pipeline.is_empty() && !spec.spec.pipelines.contains_key(pipeline) {
            let names: Vec<&str> = spec.spec.pipelines.keys().map(String::as_str).collect();
            return Err(ServerError::NotFound(format!(
                "workflow {workflow:?} has no pipeline {pipeline:?} (its pipelines: {}), and no runs of one are kept",
                names.join(", ")
            )));
        }
    }
    Ok(runs)
}

/// Like [`list`], from this server's applied state (the leader's own reads).
pub async fn list_local(node: &ClusterNode, workflow: &str, pipeline: &str, phase: &str) -> Result<Vec<StoredRun>> {
    let prefix = match (workflow.is_empty(), pipeline.is_empty()) {
        (true, _) => keys::RUNS.to_string(),
        (false, true) => format!("{}{workflow}.", keys::RUNS),
        (false, false) => format!("{}{workflow}.{pipeline}.", keys::RUNS),
    };
    let found = node.reader.range(prefix.into_bytes(), true, 0).await?;
    let mut runs = Vec::new();
    for kv in &found.kvs {
        // One unreadable record must not stop every list and every scheduling pass.
        let run = match decode(kv) {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable run skipped");
                continue;
            }
        };
        if phase.is_empty() || run.run.status.phase.as_str().eq_ignore_ascii_case(phase) {
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Asks for a run to stop. A run no agent has started ends at once as `Cancelled`.
pub async fn cancel(node: &ClusterNode, id: &str) -> Result<StoredRun> {
    for _ in 0..5 {
        let mut current = get(node, id).await?;
        if current.run.status.phase.is_terminal() {
            return Ok(current);
        }
        current.run.spec.cancel_requested = true;
        if current.run.status.phase == RunPhase::Pending {
            current.run.status.phase = RunPhase::Cancelled;
            current.run.status.reason = Some(ErrorReason::Cancelled);
            current.run.status.finished = Some(Utc::now());
        }
        if let Some(stored) = put_if(node, &current.run, current.revision, vec![]).await? {
            tracing::info!(run = %id, "cancel requested");
            return Ok(stored);
        }
    }
    Err(ServerError::unavailable("the run kept changing; retry"))
}

/// For deleting `workflow`: the compares and writes that end each of its unfinished runs as
/// `Cancelled`, each compared with the revision read (linearizably) here.
pub async fn cancel_all(node: &ClusterNode, workflow: &str) -> Result<(Vec<Compare>, Vec<Op>)> {
    let mut compare = Vec::new();
    let mut ops = Vec::new();
    for mut stored in list(node, workflow, "", "").await? {
        if stored.run.status.phase.is_terminal() {
            continue;
        }
        let key = keys::run(&stored.run.metadata.name);
        stored.run.spec.cancel_requested = true;
        stored.run.status.end(
            RunPhase::Cancelled,
            ErrorReason::Cancelled,
            format!("workflow {workflow:?} was deleted"),
            Utc::now(),
        );
        stored.run.metadata.resource_version = None;
        compare.push(Compare::mod_revision(key.clone(), stored.revision));
        ops.push(Op::Put { key: key.into_bytes(), value: serde_json::to_vec(&stored.run).map_err(internal)? });
    }
    Ok((compare, ops))
}

/// Writes `run` if it is still at `revision` and `extra` compares hold; `None` otherwise.
async fn put_if(node: &ClusterNode, run: &RunObject, revision: u64, extra: Vec<Compare>) -> Result<Option<StoredRun>> {
    let key = keys::run(&run.metadata.name);
    let mut stored = run.clone();
    stored.metadata.resource_version = None;
    let value = serde_json::to_vec(&stored).map_err(internal)?;
    let mut compare = vec![Compare::mod_revision(key.clone(), revision)];
    compare.extend(extra);
    let response =
        node.txn(Txn { compare, success: vec![Op::Put { key: key.into_bytes(), value }], failure: vec![] }).await?;
    if !response.succeeded {
        return Ok(None);
    }
    stored.metadata.resource_version = Some(response.revision);
    Ok(Some(StoredRun { run: stored, revision: response.revision }))
}

/// Why an agent's write was refused.
#[derive(Debug)]
pub enum Refused {
    /// The agent must stop the run: its lease epoch is not the pipeline's current one, or the
    /// run ended without it (cancelled before the agent's first report).
    StaleEpoch(String),
    Other(ServerError),
}

impl From<ServerError> for Refused {
    fn from(e: ServerError) -> Self {
        Refused::Other(e)
    }
}

/// Whether the lease record `lease` (as read) is `agent`'s at `epoch`. Grants of one
/// scheduling pass share an epoch, so the epoch alone does not say whose lease it is.
pub fn holds(lease: Option<&KeyValue>, agent: &str, epoch: u64) -> bool {
    lease.is_some_and(|kv| {
        kv.mod_revision == epoch
            && serde_json::from_slice::<crate::agents::LeaseRecord>(&kv.value).is_ok_and(|record| record.agent == agent)
    })
}

/// The compares that fence an agent's write to `workflow/pipeline` at `epoch`.
pub fn fence(workflow: &str, pipeline: &str, epoch: u64) -> Compare {
    Compare::mod_revision(keys::lease(&format!("{workflow}/{pipeline}")), epoch)
}

/// Applies an agent's view of a run: its status (never its spec, which the server owns),
/// fenced by the lease epoch; a run that has ended stays as it ended.
pub async fn agent_update(node: &ClusterNode, agent: &str, epoch: u64, reported: RunObject) -> Result<(), Refused> {
    for attempt in 0..5u64 {
        if attempt > 0 {
            // The leader may not have applied the last change yet.
            tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
        }
        let current = get_local(node, &reported.metadata.name).await?;
        let pipeline = format!("{}/{}", current.run.spec.workflow, current.run.spec.pipeline);
        let lease =
            node.reader.range(keys::lease(&pipeline).into_bytes(), false, 0).await.map_err(ServerError::from)?;
        if !holds(lease.kvs.first(), agent, epoch) {
            return Err(Refused::StaleEpoch(format!("agent {agent} does not hold {pipeline} at epoch {epoch}")));
        }
        if current.run.status.phase.is_terminal() {
            if reported.status.phase.is_terminal() {
                return Ok(());
            }
            // A run cancelled while still `Pending` may have been handed over already: the
            // agent that says it runs it is told to stop.
            return Err(Refused::StaleEpoch(format!(
                "run {} ended as {} while the agent ran it",
                reported.metadata.name,
                current.run.status.phase.as_str()
            )));
        }
        if current.run.status.agent_lost_at.is_some() {
            // Waiting to start again elsewhere: no agent runs it now.
            return Err(Refused::StaleEpoch(format!(
                "run {} waits to start again after its agent was lost",
                reported.metadata.name
            )));
        }
        let mut next = current.run.clone();
        next.status = reported.status.clone();
        next.status.agent = Some(agent.to_string());
        next.status.lease_epoch = Some(epoch);
        next.status.agent_lost_at = None;
        let fenced = fence(&current.run.spec.workflow, &current.run.spec.pipeline, epoch);
        if put_if(node, &next, current.revision, vec![fenced]).await?.is_some() {
            for seconds in steps_ended(&current.run, &next) {
                node.metrics.step_seconds.observe(seconds);
            }
            return Ok(());
        }
    }
    Err(Refused::Other(ServerError::unavailable("the run kept changing; retry")))
}

/// How long each step that ended between `before` and `after` ran, in seconds (DESIGN §13).
fn steps_ended(before: &RunObject, after: &RunObject) -> Vec<f64> {
    let mut ended = Vec::new();
    for (name, task) in &after.status.tasks {
        for step in &task.steps {
            let (Some(started), Some(finished)) = (step.started, step.finished) else { continue };
            let known = before.status.tasks.get(name).and_then(|t| t.steps.iter().find(|s| s.name == step.name));
            if known.is_some_and(|s| s.finished == step.finished) {
                continue;
            }
            ended.push((finished - started).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    ended
}

/// Stores a chunk of log lines, fenced by the lease epoch of the run's pipeline
/// (`workflow`, `pipeline`), which the caller knows from the run. Each execution's chunks have
/// keys of their own, so a dead execution's late chunk never replaces a live one's. `json` is
/// the chunk as the agent sent it, stored as it is; `chunk` is it read in place, every line
/// checked to be a [`xene_model::LogLine`] (readers parse the stored bytes as a `LogChunk`).
pub async fn agent_logs(
    node: &ClusterNode,
    agent: &str,
    pipeline: (&str, &str),
    epoch: u64,
    first_seq: u64,
    chunk: &LogChunkView<'_>,
    json: &str,
) -> Result<(), Refused> {
    let name_ok = |name: &str| !name.is_empty() && !name.contains('/');
    if !name_ok(&chunk.task) || !name_ok(&chunk.step) {
        let what =
            format!("log chunk of run {}: task {:?} / step {:?} is not a name", chunk.run, chunk.task, chunk.step);
        return Err(Refused::Other(ServerError::InvalidArgument(what)));
    }
    if !chunk.execution.is_empty() && !LogChunk::valid_execution(&chunk.execution) {
        let what = format!(
            "log chunk of run {}: execution {:?} must be 1 to {} ASCII letters, digits, '-' or '_'",
            chunk.run,
            chunk.execution,
            LogChunk::MAX_EXECUTION_LEN
        );
        return Err(Refused::Other(ServerError::InvalidArgument(what)));
    }
    // Grants of one scheduling pass share an epoch: the lease must be this agent's. The
    // record read at `epoch` is the one the write's compare below finds, or the write fails.
    let lease_key = keys::lease(&format!("{}/{}", pipeline.0, pipeline.1));
    let lease = node.reader.range(lease_key.into_bytes(), false, 0).await.map_err(ServerError::from)?;
    if !holds(lease.kvs.first(), agent, epoch) {
        return Err(Refused::StaleEpoch(format!(
            "agent {agent} does not hold {}/{} at epoch {epoch}",
            pipeline.0, pipeline.1
        )));
    }
    let key = keys::log_chunk(&chunk.run, &chunk.task, &chunk.step, &chunk.execution, first_seq);
    let response = node
        .txn(Txn {
            compare: vec![fence(pipeline.0, pipeline.1, epoch)],
            success: vec![Op::Put { key: key.into_bytes(), value: json.as_bytes().to_vec() }],
            failure: vec![],
        })
        .await?;
    if response.succeeded {
        node.metrics.log_bytes.inc_by(json.len() as u64);
        Ok(())
    } else {
        Err(Refused::StaleEpoch(format!("the lease of run {} is no longer at epoch {epoch}", chunk.run)))
    }
}

/// Stored log chunks of a run read in one page: about 1 MiB of the agent's chunks of 256 KiB
/// (at most about 2.6 MiB of the largest), so that reading a run's logs holds a page at a
/// time, not all of them.
const LOG_PAGE: u64 = 4;

/// One page of a run's stored log chunks, in order (task, step, sequence), starting at the
/// key `from` (the run's first chunk when empty); the key the next page starts at, if there
/// is more; and the revision the page was read at.
pub async fn log_chunk_page(node: &ClusterNode, run: &str, from: Vec<u8>) -> Result<LogPage> {
    let found = node.reader.range_from(keys::logs_of(run).into_bytes(), from, LOG_PAGE).await?;
    let next = match found.kvs.last() {
        Some(last) if found.more => Some([last.key.as_slice(), &[0]].concat()),
        _ => None,
    };
    let chunks = found.kvs.iter().filter_map(|kv| serde_json::from_slice::<LogChunk>(&kv.value).ok()).collect();
    Ok(LogPage { chunks, next, revision: found.revision })
}

/// A page of log chunks ([`log_chunk_page`]).
pub struct LogPage {
    pub chunks: Vec<LogChunk>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<Vec<u8>>,
    pub revision: u64,
}

/// How long a run whose lease moved waits before it starts again elsewhere: its old agent
/// stops a run within the grace between SIGTERM and SIGKILL (5 s) of learning its lease is
/// gone, or of its own TTL without a confirmed leader, which the lease's move already waited
/// out. Until then the run is `Unknown`, so one attempt never runs on two agents at once
/// (DESIGN §7.5).
pub const RESTART_AFTER_AGENT_LOST: std::time::Duration = std::time::Duration::from_secs(10);

/// A run whose agent lost its lease while the run was in flight (DESIGN §7.4): with retries
/// left under the pipeline's policy (`retries.limit`), `Unknown` for
/// [`RESTART_AFTER_AGENT_LOST`] and then `Pending` again from the beginning, for the
/// pipeline's next holder; without, ended `AgentLost` (or `Cancelled`, when someone had asked
/// to cancel it). Returns the run as it now stands while it is not finished (waiting, or
/// `Pending` again), for the pipeline's concurrency policy to count.
pub async fn agent_lost(
    node: &ClusterNode,
    current: &StoredRun,
    retry_limit: u32,
    now: chrono::DateTime<Utc>,
) -> Result<Option<StoredRun>> {
    let mut next = current.run.clone();
    let agent = current.run.status.agent.as_deref().unwrap_or("?");
    let retries = current.run.spec.agent_retries;
    if current.run.spec.cancel_requested || retries >= retry_limit {
        if current.run.spec.cancel_requested {
            let message = format!("cancelled; agent {agent} lost the pipeline's lease before it confirmed");
            next.status.end(RunPhase::Cancelled, ErrorReason::Cancelled, message, now);
        } else {
            let message = format!("agent {agent} lost the pipeline's lease while the run was in flight");
            next.status.end(RunPhase::Error, ErrorReason::AgentLost, message, now);
            tracing::info!(run = %next.metadata.name, agent, "the run's agent was lost: AgentLost");
        }
        leader_put(node, next, current.revision).await?;
        return Ok(None);
    }
    match current.run.status.agent_lost_at {
        None => {
            next.status.phase = RunPhase::Unknown;
            next.status.agent_lost_at = Some(now);
            next.status.message = Some(format!(
                "agent {agent} lost the pipeline's lease while the run was in flight; the run starts again ({} of {retry_limit}) once its steps there have had time to stop",
                retries + 1
            ));
            leader_put(node, next, current.revision).await
        }
        Some(lost_at) if now - lost_at < chrono::TimeDelta::from_std(RESTART_AFTER_AGENT_LOST).unwrap_or_default() => {
            Ok(Some(current.clone()))
        }
        Some(_) => {
            next.spec.agent_retries += 1;
            next.status = RunStatus::pending(Some(format!(
                "started again ({} of {retry_limit}) after agent {agent} lost the pipeline's lease while the run was in flight",
                next.spec.agent_retries
            )));
            tracing::info!(run = %next.metadata.name, agent, retry = next.spec.agent_retries, "the run's agent was lost: starting it again");
            leader_put(node, next, current.revision).await
        }
    }
}

/// Marks a run in flight as `Unknown`: its agent, which still holds the pipeline, has no
/// session with the leader (DESIGN §9.1). The agent's next report of the run, when it is back,
/// says where the run is.
pub async fn agent_unreachable(node: &ClusterNode, current: &StoredRun) -> Result<()> {
    let mut next = current.run.clone();
    next.status.phase = RunPhase::Unknown;
    next.status.message = Some(format!(
        "agent {} is out of touch; the run goes on if it is back within its TTL",
        current.run.status.agent.as_deref().unwrap_or("?")
    ));
    leader_put(node, next, current.revision).await.map(|_| ())
}

/// The scheduler's write of `next` over the run read at `revision`, returned as stored: never
/// forwarded, so a deposed leader's pass stops here; a run changed since is left for the next
/// pass (`None`).
async fn leader_put(node: &ClusterNode, mut next: RunObject, revision: u64) -> Result<Option<StoredRun>> {
    next.metadata.resource_version = None;
    let key = keys::run(&next.metadata.name);
    let value = serde_json::to_vec(&next).map_err(internal)?;
    let response = node
        .leader_txn(Txn {
            compare: vec![Compare::mod_revision(key.clone(), revision)],
            success: vec![Op::Put { key: key.into_bytes(), value }],
            failure: vec![],
        })
        .await?;
    if !response.succeeded {
        return Ok(None);
    }
    next.metadata.resource_version = Some(response.revision);
    Ok(Some(StoredRun { run: next, revision: response.revision }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::LeaseRecord;

    fn lease(agent: &str, epoch: u64) -> KeyValue {
        let record = LeaseRecord { workflow: "w".into(), pipeline: "p".into(), agent: agent.into(), ttl_ms: 10_000 };
        KeyValue {
            key: keys::lease("w/p").into_bytes(),
            value: serde_json::to_vec(&record).expect("json"),
            create_revision: epoch,
            mod_revision: epoch,
            version: 1,
        }
    }

    #[test]
    fn a_lease_is_held_by_its_agent_at_its_epoch_only() {
        let kv = lease("a", 7);
        assert!(holds(Some(&kv), "a", 7));
        assert!(!holds(Some(&kv), "b", 7), "another agent granted in the same pass shares the epoch");
        assert!(!holds(Some(&kv), "a", 6));
        assert!(!holds(None, "a", 7));
        let garbled = KeyValue { value: b"not json".to_vec(), ..kv };
        assert!(!holds(Some(&garbled), "a", 7));
    }
}
