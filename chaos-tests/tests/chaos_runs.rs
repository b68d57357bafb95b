//! Chaos scenario "Runs" (issue 8; DESIGN §7.4, §7.5, §8, §9.7, §14 "One trigger fire makes one
//! run; one run attempt runs on at most one agent" and "Every run reaches a terminal phase").
//!
//! Three servers and two agents (process executor). Every server advertises its client proxy's
//! address, so the agents, which follow leader hints, reach the servers only through the
//! proxies: a cut client link cuts agents too. One workflow, three pipelines, one step each:
//! `api` (started through `RunService.Create` on a random server every ~1 s, one attempt
//! per fire, each fire tagged with a `CHAOS_FIRE` parameter), `hook` (a signed generic webhook
//! delivery every ~1.5 s to a random server's REST port, retried on the next server until a
//! 2xx; some acknowledged deliveries are sent once more, as a forge's redelivery) and `cron`
//! (`*/2 * * * * *`). Meanwhile the nemesis kills, pauses and partitions servers and cuts,
//! delays and drops their links, and a second one SIGKILLs agents and restarts them with the
//! same data directory, for less than the agent TTL or for longer (so leases move).
//!
//! Each step appends to a ledger file on the host, without forking (`/proc/uptime`, the boot
//! clock every process shares): `RUN AGENT EPOCH PID start|tick|end TIME`, a `tick` after each
//! of its [`LINES`] output lines `line I of RUN on AGENT at EPOCH`. Then everything heals, the
//! test waits until every run has ended, and checks:
//! 1. one fire, one run: every acknowledged webhook delivery made exactly one run (the one with
//!    `XENE_DELIVERY` = its ID, the one every answer named), an unacknowledged one at most one;
//!    every acknowledged API fire exactly the run it was told, an unacknowledged one at most one
//!    (so acknowledged ≤ API runs ≤ attempted); no cron scheduled time has two runs;
//! 2. no run attempt ran twice at once (see "The ledger rule"), and every `Success` was written
//!    by an agent that ran the step to its end under the epoch the run records;
//! 3. every run reached a terminal phase (except cron runs scheduled in the last few seconds,
//!    which are still legitimately in flight);
//! 4. the logs of every `Success` run (`RunService.Logs`) are exactly lines 1..N in order, all
//!    from the agent and epoch the run records;
//! 5. fencing: no agent write was stored under an epoch already superseded when it was
//!    written. A lease's epoch is the revision that granted it, so a log chunk (or a `Success`
//!    status) carrying epoch `E` and stored at revision `R` is stale if some epoch `E2` of the
//!    same pipeline has `E < E2 <= R`: at revision `R` the lease key had been rewritten since
//!    `E`, and the fence's compare must have failed. Epochs are learnt from the ledger, the
//!    runs and the chunks themselves.
//!
//! **The ledger rule.** An execution (RUN, AGENT, EPOCH, PID) was alive from its first record
//! to its last. Two executions of one run overlapping in those intervals is a violation, whether
//! on two agents or twice on one. An execution without an `end` died early: its agent was
//! SIGKILLed, or it was stopped (cancelled, fenced, its lease dropped: SIGTERM to its process
//! group). The process executor (`agent/src/process.rs`) puts each step in its own process
//! group, so SIGKILL of the agent does not reach it: it lives on until its next write to its
//! stdout, a pipe whose reader died with the agent, kills it (SIGPIPE). The step writes its
//! output line before each `tick`, so such an execution died within one iteration (a 10 ms
//! sleep and a line) after its last record. Its interval is therefore extended by one iteration,
//! taken as 1.5 times the longest gap between two of its own records (at least 30 ms, at most
//! [`SLACK`]): another execution of the run starting within that tail also counts as an
//! overlap ("may have run at once"). The check never extends an unfinished execution to
//! infinity: its own records bound it. The report also gives the closest approach between
//! executions of one run under different agents or epochs.
//!
//! `XENE_CHAOS_SEED=S` replays the random choices of seed `S`; `XENE_CHAOS_LONG=1` runs the
//! soak. The report is printed at the end (`cargo nextest run --no-capture` shows it).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use rand::rngs::StdRng;
use rand::Rng;
use tonic::transport::Channel;
use xene_chaos_tests::agent_proc::AgentProc;
use xene_chaos_tests::client::authorized;
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_chaos_tests::nemesis::{FaultKind, Nemesis, NemesisProfile};
use xene_chaos_tests::network::Network;
use xene_chaos_tests::report::ScenarioReport;
use xene_chaos_tests::rest;
use xene_chaos_tests::settings::ChaosSettings;
use xene_model::status::RunPhase;
use xene_model::{LogChunk, RunObject};
use xene_proto as pb;
use xene_proto::kv_service_client::KvServiceClient;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;

const SERVERS: usize = 3;
const AGENTS: [&str; 2] = ["chaos-a", "chaos-b"];
const WORKFLOW: &str = "chaos";
const API: &str = "api";
const HOOK: &str = "hook";
const CRON: &str = "cron";
const PIPELINES: [&str; 3] = [API, HOOK, CRON];
const TASK: &str = "work";
const STEP: &str = "lines";
/// Output lines per step (one every 15 ms or so: a step's log takes a few batches, and a run
/// about a dozen agent writes).
const LINES: usize = 40;
/// The servers' agent TTL: silence this long marks an agent down and moves its leases.
const AGENT_TTL: Duration = Duration::from_millis(2000);
const HOOK_SECRET: &str = "chaos-runs-hook-secret";
/// The most an execution without an `end` is taken to have lived after its last ledger record,
/// in seconds (one iteration of the step's loop is normally 15 ms; see "The ledger rule").
const SLACK: f64 = 0.25;
/// One API attempt, and one webhook attempt.
const ATTEMPT: Duration = Duration::from_secs(3);
/// How long a delivery is retried before the sender gives up.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(25);
/// Cron runs scheduled this recently when the scenario ends may still be running.
const CRON_IN_FLIGHT: Duration = Duration::from_secs(8);
/// Answers listing every run and their logs are large.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// The step: a ledger record before, between and after its output lines, without forking for
/// the time (`read` is a shell builtin).
fn step_script(ledger: &Path) -> String {
    format!(
        r#"t() {{ read up rest < /proc/uptime; echo "$XENE_RUN_ID $XENE_AGENT $XENE_LEASE_EPOCH $$ $1 $up" >> '{ledger}'; }}
t start
i=1
while [ "$i" -le {LINES} ]; do
  echo "line $i of $XENE_RUN_ID on $XENE_AGENT at $XENE_LEASE_EPOCH"
  t tick
  sleep 0.01
  i=$((i + 1))
done
t end"#,
        ledger = ledger.display()
    )
}

fn manifest(ledger: &Path) -> String {
    let script: String = step_script(ledger).lines().map(|line| format!("                {line}\n")).collect();
    let pipeline = |name: &str, triggers: &str| {
        format!(
            "    {name}:\n{triggers}      tasks:\n        {TASK}:\n          steps:\n            - name: {STEP}\n              run: |\n{script}"
        )
    };
    format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: {WORKFLOW}}}\nspec:\n  triggers:\n    push: {{type: webhook, webhook: {{provider: generic, secretRef: chaos-hook}}}}\n    tick: {{type: cron, cron: \"*/2 * * * * *\"}}\n  pipelines:\n{}{}{}",
        pipeline(API, ""),
        pipeline(HOOK, "      triggers: [push]\n"),
        pipeline(CRON, "      triggers: [tick]\n"),
    )
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("invariant: any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The boot clock the steps' ledger records use, in seconds.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    text.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Load

/// One API fire: one `RunService.Create` attempt.
struct ApiFire {
    fire: u64,
    /// The run ID it was told, or why not.
    outcome: Result<String, String>,
}

/// Fires API runs of `api` every ~1 s, each on a random server through its client proxy,
/// each its own task so a slow answer does not hold the next fire back.
async fn api_load(channels: Vec<Channel>, token: String, mut rng: StdRng, stop: Arc<AtomicBool>) -> Vec<ApiFire> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut fire = 0u64;
    while !stop.load(Ordering::Relaxed) {
        fire += 1;
        let mut client = RunServiceClient::new(channels[rng.random_range(0..channels.len())].clone());
        let token = token.clone();
        attempts.spawn(async move {
            let request = pb::CreateRunRequest {
                workflow: WORKFLOW.into(),
                pipeline: API.into(),
                parameters: [("CHAOS_FIRE".to_string(), fire.to_string())].into(),
                ..Default::default()
            };
            let call = client.create(authorized(request, &token, ATTEMPT));
            let outcome = match tokio::time::timeout(ATTEMPT + Duration::from_millis(500), call).await {
                Ok(Ok(reply)) => Ok(reply.into_inner().id),
                Ok(Err(status)) => Err(format!("{:?}", status.code())),
                Err(_) => Err("timeout".to_string()),
            };
            ApiFire { fire, outcome }
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..=1200))).await;
    }
    let mut fires = Vec::new();
    while let Some(fire) = attempts.join_next().await {
        fires.push(fire.expect("an API fire panicked"));
    }
    fires.sort_by_key(|f| f.fire);
    fires
}

/// A 2xx answer to a delivery.
#[derive(Debug)]
struct Ack {
    server: usize,
    status: u16,
    runs: Vec<String>,
    duplicate: bool,
    /// Whether it answered a deliberate redelivery of an acknowledged delivery.
    redelivery: bool,
}

/// One webhook delivery ID and what became of it.
#[derive(Debug, Default)]
struct Delivery {
    id: String,
    attempts: u64,
    acks: Vec<Ack>,
    /// Failed attempts by cause.
    failures: BTreeMap<String, u64>,
}

/// Sends a delivery to `first`, then the next servers in turn, until one answers 2xx or
/// `deadline` passes; with `redeliver_to`, sends it once more (same ID) there once acknowledged.
async fn deliver(id: String, https: Arc<Vec<String>>, first: usize, redeliver_to: Option<usize>) -> Delivery {
    let body = format!(r#"{{"delivery":"{id}","event":"push"}}"#).into_bytes();
    let headers = vec![
        ("X-Xene-Signature-256", format!("sha256={}", hmac_hex(HOOK_SECRET, &body))),
        ("X-Xene-Event", "push".to_string()),
        ("X-Xene-Delivery", id.clone()),
        ("Content-Type", "application/json".to_string()),
    ];
    let path = format!("/api/v1/webhooks/{WORKFLOW}/push");
    let mut delivery = Delivery { id, ..Delivery::default() };
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    for (start, redelivery) in std::iter::once((first, false)).chain(redeliver_to.map(|s| (s, true))) {
        let mut server = start;
        loop {
            delivery.attempts += 1;
            let sent = tokio::time::timeout(ATTEMPT, rest::try_post(&https[server], &path, &headers, &body)).await;
            let cause = match sent {
                Ok(Ok((status, answer))) if (200..300).contains(&status) => {
                    let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                    let runs = value["runs"]
                        .as_array()
                        .map(|runs| runs.iter().filter_map(|r| r.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    let duplicate = value["duplicate"].as_bool().unwrap_or(false);
                    delivery.acks.push(Ack { server, status, runs, duplicate, redelivery });
                    break;
                }
                Ok(Ok((status, _))) => format!("HTTP {status}"),
                Ok(Err(e)) => format!("{:?}", e.kind()),
                Err(_) => "timeout".to_string(),
            };
            *delivery.failures.entry(cause).or_default() += 1;
            if Instant::now() >= deadline {
                return delivery;
            }
            server = (server + 1) % https.len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    delivery
}

/// Sends a new delivery every ~1.5 s; about one acknowledged delivery in five is redelivered
/// to another server.
async fn webhook_load(https: Vec<String>, mut rng: StdRng, stop: Arc<AtomicBool>) -> Vec<Delivery> {
    let https = Arc::new(https);
    let mut sends = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let first = rng.random_range(0..https.len());
        let redeliver_to = rng.random_bool(0.2).then(|| (first + rng.random_range(1..https.len())) % https.len());
        sends.spawn(deliver(format!("d-{n}"), Arc::clone(&https), first, redeliver_to));
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..=1800))).await;
    }
    let mut deliveries = Vec::new();
    while let Some(delivery) = sends.join_next().await {
        deliveries.push(delivery.expect("a delivery task panicked"));
    }
    deliveries.sort_by_key(|d| d.id[2..].parse::<u64>().unwrap_or(0));
    deliveries
}

// ---------------------------------------------------------------------------------------------
// Agent faults

/// Kills agents (SIGKILL) and restarts them with the same data directory, one fault at a time:
/// down for less than the TTL (the agent comes back to its leases) or for longer (they move).
struct AgentNemesis {
    rng: StdRng,
    agents: Vec<AgentProc>,
    counts: BTreeMap<String, u64>,
    /// Agents that exited without being killed.
    crashed: Vec<String>,
    started: Instant,
}

impl AgentNemesis {
    async fn run(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        loop {
            let quiet = Duration::from_millis(self.rng.random_range(1500..=4500));
            if Instant::now() + quiet >= end {
                break;
            }
            tokio::time::sleep(quiet).await;
            self.notice_crashes();
            let victims: Vec<usize> = if self.rng.random_bool(0.2) {
                (0..self.agents.len()).collect()
            } else {
                vec![self.rng.random_range(0..self.agents.len())]
            };
            let beyond_ttl = self.rng.random_bool(0.5);
            let hold = if beyond_ttl {
                AGENT_TTL + Duration::from_millis(self.rng.random_range(500..=4000))
            } else {
                Duration::from_millis(self.rng.random_range(300..=1300))
            };
            let names: Vec<&str> = victims.iter().map(|v| self.agents[*v].name.as_str()).collect();
            println!(
                "agents t={:.1}s (ledger clock {:.2}) kill {names:?} for {} ms",
                self.started.elapsed().as_secs_f64(),
                uptime(),
                hold.as_millis()
            );
            let kind = format!(
                "agent-kill/{}-{}",
                if victims.len() > 1 { "both" } else { "one" },
                if beyond_ttl { "beyond-ttl" } else { "within-ttl" }
            );
            *self.counts.entry(kind).or_default() += 1;
            for victim in &victims {
                self.agents[*victim].kill();
            }
            tokio::time::sleep(hold.min(end.saturating_duration_since(Instant::now()))).await;
            for victim in &victims {
                self.agents[*victim].restart();
            }
        }
        self.notice_crashes();
    }

    /// Restarts (and notes) agents that exited by themselves.
    fn notice_crashes(&mut self) {
        for agent in &mut self.agents {
            if let Some(status) = agent.exited() {
                self.crashed.push(format!("{} exited by itself ({status}):\n{}", agent.name, agent.log_tail(15)));
                agent.restart();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the outcome

/// Calls `call` on each server in turn (direct, not through the proxies) until one answers,
/// for up to 60 s.
async fn any_server<T, Fut>(
    channels: &[Channel],
    what: &str,
    cluster: &TestCluster,
    mut call: impl FnMut(Channel) -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut server = 0;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(15), call(channels[server].clone())).await {
            Ok(Ok(value)) => return value,
            Ok(Err(status)) => status.to_string(),
            Err(_) => "timeout".to_string(),
        };
        assert!(Instant::now() < deadline, "{what}: no server answered within 60 s: {last}\n{}", cluster.logs());
        server = (server + 1) % channels.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A run as stored, with the revision of its last write.
struct Stored {
    run: RunObject,
    revision: u64,
}

impl Stored {
    fn id(&self) -> &str {
        &self.run.metadata.name
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.run.spec.parameters.get(name).map(String::as_str)
    }

    fn pipeline(&self) -> &str {
        &self.run.spec.pipeline
    }
}

async fn list_runs(cluster: &TestCluster, channels: &[Channel], pipeline: &str) -> Vec<Stored> {
    let token = cluster.token.clone();
    let reply = any_server(channels, "list runs", cluster, |channel| {
        let request =
            pb::ListRunsRequest { workflow: WORKFLOW.into(), pipeline: pipeline.into(), phase: String::new() };
        let request = authorized(request, &token, Duration::from_secs(15));
        async move {
            let mut client = RunServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
            client.list(request).await.map(|r| r.into_inner())
        }
    })
    .await;
    reply
        .runs
        .into_iter()
        .map(|r| Stored {
            run: serde_json::from_str(&r.json).expect("a run's JSON is a RunObject"),
            revision: r.resource_version,
        })
        .collect()
}

async fn all_runs(cluster: &TestCluster, channels: &[Channel]) -> Vec<Stored> {
    let mut runs = Vec::new();
    for pipeline in PIPELINES {
        runs.extend(list_runs(cluster, channels, pipeline).await);
    }
    runs
}

/// The scheduled time of a cron run.
fn scheduled(run: &Stored) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = run.param("XENE_SCHEDULED_TIME")?;
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// Whether a run may still be running when the scenario ends: a cron run scheduled just now.
fn in_flight_cron(run: &Stored, now: chrono::DateTime<chrono::Utc>) -> bool {
    run.pipeline() == CRON
        && scheduled(run).is_some_and(|at| now - at < chrono::Duration::from_std(CRON_IN_FLIGHT).unwrap_or_default())
}

/// Waits (up to `timeout`) until every run has ended, but cron runs still in flight; returns
/// the last listing either way, and whether it settled.
async fn wait_settled(cluster: &TestCluster, channels: &[Channel], timeout: Duration) -> (Vec<Stored>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let runs = all_runs(cluster, channels).await;
        let now = chrono::Utc::now();
        let open = runs.iter().filter(|r| !r.run.status.phase.is_terminal() && !in_flight_cron(r, now)).count();
        if open == 0 || Instant::now() >= deadline {
            return (runs, open == 0);
        }
        println!("heal: {open} of {} runs not ended yet", runs.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn step_logs(cluster: &TestCluster, channels: &[Channel], run: &str) -> Vec<pb::LogEntry> {
    let token = cluster.token.clone();
    any_server(channels, "read a run's logs", cluster, |channel| {
        let request =
            pb::LogsRequest { run: run.into(), task: TASK.into(), step: STEP.into(), follow: false, resume: vec![] };
        let request = authorized(request, &token, Duration::from_secs(15));
        async move {
            let mut stream =
                RunServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).logs(request).await?.into_inner();
            let mut lines = Vec::new();
            while let Some(batch) = stream.message().await? {
                lines.extend(batch.lines);
            }
            Ok::<_, tonic::Status>(lines)
        }
    })
    .await
}

/// A run's stored log chunks, raw: (chunk, revision it was written at).
async fn raw_chunks(cluster: &TestCluster, channels: &[Channel], run: &str) -> Vec<(LogChunk, u64)> {
    let token = cluster.token.clone();
    let reply = any_server(channels, "read a run's log chunks", cluster, |channel| {
        let request = pb::RangeRequest {
            key: format!("/xene/logs/{run}/").into_bytes(),
            prefix: true,
            limit: 0,
            serializable: false,
        };
        let request = authorized(request, &token, Duration::from_secs(15));
        async move {
            let mut client = KvServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
            client.range(request).await.map(|r| r.into_inner())
        }
    })
    .await;
    reply
        .kvs
        .into_iter()
        .map(|kv| (serde_json::from_slice(&kv.value).expect("a log chunk is JSON"), kv.mod_revision))
        .collect()
}

/// `line I of RUN on AGENT at EPOCH`, parsed.
fn parse_line(text: &str) -> Option<(usize, &str, &str, u64)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["line", i, "of", run, "on", agent, "at", epoch] => Some((i.parse().ok()?, run, agent, epoch.parse().ok()?)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// What the ledger says about one execution of a run's step.
#[derive(Debug, Clone)]
struct Execution {
    agent: String,
    epoch: u64,
    pid: u64,
    first: f64,
    last: f64,
    /// The longest time between two of its records: how long one iteration can take.
    max_gap: f64,
    started: bool,
    ended: bool,
    ticks: u64,
}

impl Execution {
    fn describe(&self) -> String {
        let end = if self.ended { "end" } else { "no end" };
        format!(
            "{} at epoch {} (pid {}) from {:.2} to {:.2} s, {} ticks, {end}",
            self.agent, self.epoch, self.pid, self.first, self.last, self.ticks
        )
    }
}

/// The ledger's executions by run, and the number of lines it could not read.
fn read_ledger(path: &Path) -> (BTreeMap<String, Vec<Execution>>, u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_key: BTreeMap<(String, String, u64, u64), Execution> = BTreeMap::new();
    let mut times: BTreeMap<(String, String, u64, u64), Vec<f64>> = BTreeMap::new();
    let (mut lines, mut unreadable) = (0, 0);
    for line in text.lines() {
        lines += 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        let parsed = match words.as_slice() {
            [run, agent, epoch, pid, kind, at] => match (epoch.parse::<u64>(), pid.parse::<u64>(), at.parse::<f64>()) {
                (Ok(epoch), Ok(pid), Ok(at)) => Some((*run, *agent, epoch, pid, *kind, at)),
                _ => None,
            },
            _ => None,
        };
        let Some((run, agent, epoch, pid, kind, at)) = parsed else {
            unreadable += 1;
            continue;
        };
        let execution = by_key.entry((run.to_string(), agent.to_string(), epoch, pid)).or_insert(Execution {
            agent: agent.to_string(),
            epoch,
            pid,
            first: at,
            last: at,
            max_gap: 0.0,
            started: false,
            ended: false,
            ticks: 0,
        });
        times.entry((run.to_string(), agent.to_string(), epoch, pid)).or_default().push(at);
        execution.first = execution.first.min(at);
        execution.last = execution.last.max(at);
        match kind {
            "start" => execution.started = true,
            "end" => execution.ended = true,
            "tick" => execution.ticks += 1,
            _ => unreadable += 1,
        }
    }
    for (key, times) in &mut times {
        times.sort_by(f64::total_cmp);
        if let Some(execution) = by_key.get_mut(key) {
            execution.max_gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        }
    }
    let mut runs: BTreeMap<String, Vec<Execution>> = BTreeMap::new();
    for ((run, ..), execution) in by_key {
        runs.entry(run).or_default().push(execution);
    }
    for executions in runs.values_mut() {
        executions.sort_by(|a, b| a.first.total_cmp(&b.first));
    }
    (runs, lines, unreadable)
}

/// Check 2: executions of one run never overlap (an unfinished one extended by one iteration).
fn overlaps(run: &str, executions: &[Execution]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, a) in executions.iter().enumerate() {
        for b in &executions[i + 1..] {
            // Sorted by start: `a` started first.
            let tail = if a.ended { 0.0 } else { (1.5 * a.max_gap).clamp(0.03, SLACK) };
            let how = if a.agent == b.agent && a.epoch == b.epoch { "twice on one agent" } else { "on two agents" };
            if b.first < a.last {
                problems.push(format!("run {run} ran {how} at once: {} and {}", a.describe(), b.describe()));
            } else if b.first < a.last + tail {
                problems.push(format!(
                    "run {run} may have run {how} at once: {} died within {tail:.3} s of its last record, and {} started {:.3} s after it",
                    a.describe(),
                    b.describe(),
                    b.first - a.last
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The scenario

async fn wait_placed(cluster: &TestCluster, agents: &[AgentProc]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines"]).stdout).into_owned();
        let placed = table.lines().skip(1).filter(|l| l.contains("Scheduled") && !l.contains("NotScheduled")).count();
        if placed == PIPELINES.len() {
            return;
        }
        let agent_logs: Vec<String> =
            agents.iter().map(|a| format!("--- {} ---\n{}", a.name, a.log_tail(15))).collect();
        assert!(
            Instant::now() < deadline,
            "pipelines not placed: {table}\n{}\n{}",
            cluster.logs(),
            agent_logs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fire_makes_one_run_and_no_run_runs_twice_at_once_under_faults() {
    let settings = ChaosSettings::from_env("chaos_runs");
    let started = Instant::now();
    let mut report = ScenarioReport::new("runs", &settings);

    // Servers behind proxies, advertising their client proxies; agents behind them too.
    let (network, mut plans) = Network::plan_advertising_client_proxies(SERVERS).await.expect("start the proxies");
    for plan in &mut plans {
        plan.env.push(("XENE_AGENT_TTL_MS".into(), AGENT_TTL.as_millis().to_string()));
        // Keep every run: the checks need them all.
        plan.env.push(("XENE_RUN_HISTORY".into(), "1000000".into()));
    }
    // Raft timing as in production (100 ms heartbeats): under this load on two cores, 50 ms is
    // too short for an AppendEntries of 32 entries, and replication stalls on timeouts.
    let options =
        ClusterOptions { servers: SERVERS, heartbeat_ms: 100, election_timeout_ms: 500, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start_planned(options, plans).await;
    let ledger = cluster.dir.join("ledger");
    let set = cluster.xenectl(&["secret", "set", "chaos-hook", "--from-literal", &format!("secret={HOOK_SECRET}")]);
    assert!(set.status.success(), "secret set: {}", String::from_utf8_lossy(&set.stderr));
    let created = cluster.xenectl(&["token", "create", "--kind", "agent"]);
    assert!(created.status.success(), "token create: {}", String::from_utf8_lossy(&created.stderr));
    let join_token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let proxies: Vec<String> = (0..SERVERS).map(|i| network.client_addr(i).to_string()).collect();
    let agents: Vec<AgentProc> =
        AGENTS.iter().map(|name| cluster.start_agent_via(name, "os=linux", &join_token, "process", &proxies)).collect();
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: manifest(&ledger) }))
        .await
        .expect("apply the workflow");
    wait_placed(&cluster, &agents).await;
    println!("setup done in {:.1} s", started.elapsed().as_secs_f64());

    // Load and faults.
    let stop = Arc::new(AtomicBool::new(false));
    let api_channels: Vec<Channel> = (0..SERVERS).map(|i| network.client_channel(i)).collect();
    let api = tokio::spawn(api_load(api_channels, cluster.token.clone(), settings.rng(2), Arc::clone(&stop)));
    let https: Vec<String> = cluster.servers.iter().map(|s| s.http.clone()).collect();
    let hooks = tokio::spawn(webhook_load(https, settings.rng(3), Arc::clone(&stop)));
    let profile = NemesisProfile {
        weights: vec![
            (FaultKind::Kill, 4),
            (FaultKind::Pause, 2),
            (FaultKind::Partition, 4),
            (FaultKind::CutPair, 1),
            (FaultKind::OneWay, 1),
            (FaultKind::CutInbound, 1),
            (FaultKind::AnswersBlocked, 1),
            (FaultKind::Delay, 1),
            (FaultKind::DropConnections, 1),
            (FaultKind::ClientCut, 2),
        ],
        leader_bias: 0.6,
        hold: Duration::from_millis(300)..Duration::from_millis(4000),
        quiet: Duration::from_millis(500)..Duration::from_millis(2000),
        max_active: 2,
    };
    let mut nemesis = Nemesis::new(settings.rng(0), profile, SERVERS);
    let mut agent_nemesis = AgentNemesis {
        rng: settings.rng(1),
        agents,
        counts: BTreeMap::new(),
        crashed: Vec::new(),
        started: Instant::now(),
    };
    let duration = settings.duration(Duration::from_secs(80), Duration::from_secs(15 * 60));
    tokio::join!(nemesis.run(&mut cluster, &network, duration), agent_nemesis.run(duration));
    stop.store(true, Ordering::Relaxed);
    let fires = api.await.expect("the API load panicked");
    let deliveries = hooks.await.expect("the webhook load panicked");
    let healed_at = Instant::now();

    // Everything healed (the nemeses end by healing): wait for every run to end.
    cluster.wait_leader(Duration::from_secs(60)).await;
    let channels: Vec<Channel> = (0..SERVERS).map(|i| cluster.channel(i)).collect();
    let (runs, settled) = wait_settled(&cluster, &channels, Duration::from_secs(60)).await;
    let waited = healed_at.elapsed().as_secs_f64();
    let waited = if settled { format!("{waited:.1} s") } else { format!("gave up after {waited:.1} s") };
    report.note("from the heal until every run ended", waited);
    let now = chrono::Utc::now();
    let by_id: BTreeMap<&str, &Stored> = runs.iter().map(|r| (r.id(), r)).collect();
    let (executions, ledger_lines, unreadable) = read_ledger(&ledger);

    let mut by_check: Vec<(&str, usize)> = Vec::new();
    let mut counted = 0;
    // 1a. Webhooks: one acknowledged delivery, one run; an unacknowledged one, at most one.
    let mut by_delivery: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.pipeline() == HOOK) {
        match run.param("XENE_DELIVERY") {
            Some(id) => by_delivery.entry(id).or_default().push(run),
            None => report.violation(format!("webhook run {} has no XENE_DELIVERY", run.id())),
        }
    }
    let sent: BTreeSet<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    for (id, made) in &by_delivery {
        if !sent.contains(id) {
            report.violation(format!("runs {:?} for delivery {id}, which was never sent", ids(made)));
        }
    }
    let mut hook_failures: BTreeMap<String, u64> = BTreeMap::new();
    for delivery in &deliveries {
        for (cause, n) in &delivery.failures {
            *hook_failures.entry(cause.clone()).or_default() += n;
        }
        let made = by_delivery.get(delivery.id.as_str()).cloned().unwrap_or_default();
        if delivery.acks.is_empty() {
            if made.len() > 1 {
                report.violation(format!(
                    "unacknowledged delivery {} made {} runs: {:?}",
                    delivery.id,
                    made.len(),
                    ids(&made)
                ));
            }
            continue;
        }
        if made.len() != 1 {
            report.violation(format!(
                "acknowledged delivery {} made {} runs: {:?} (answers {:?})",
                delivery.id,
                made.len(),
                ids(&made),
                delivery.acks
            ));
            continue;
        }
        for ack in &delivery.acks {
            if ack.runs != [made[0].id()] {
                report.violation(format!(
                    "delivery {}: server {} answered {} naming runs {:?}, but the delivery's run is {}",
                    delivery.id,
                    ack.server,
                    ack.status,
                    ack.runs,
                    made[0].id()
                ));
            }
            if ack.redelivery && !ack.duplicate {
                report.violation(format!(
                    "delivery {}: a redelivery to server {} was not answered as a duplicate: {ack:?}",
                    delivery.id, ack.server
                ));
            }
        }
    }
    let acknowledged = deliveries.iter().filter(|d| !d.acks.is_empty()).count();
    let redelivered = deliveries.iter().filter(|d| d.acks.iter().any(|a| a.redelivery)).count() as u64;
    let hook_runs = runs.iter().filter(|r| r.pipeline() == HOOK).count();
    report.note(
        "webhooks",
        format!(
            "{} deliveries, {acknowledged} acknowledged, {hook_runs} runs; failed attempts (retried) {hook_failures:?}",
            deliveries.len()
        ),
    );

    by_check.push(("webhooks", report.violations.len() - counted));
    counted = report.violations.len();
    // 1b. API: an acknowledged fire made the run it was told; an unacknowledged one at most one.
    let mut by_fire: BTreeMap<u64, Vec<&Stored>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.pipeline() == API) {
        match run.param("CHAOS_FIRE").and_then(|f| f.parse().ok()) {
            Some(fire) => by_fire.entry(fire).or_default().push(run),
            None => report.violation(format!("API run {} has no CHAOS_FIRE", run.id())),
        }
    }
    let attempted: BTreeSet<u64> = fires.iter().map(|f| f.fire).collect();
    for (fire, made) in &by_fire {
        if !attempted.contains(fire) {
            report.violation(format!("runs {:?} for API fire {fire}, which was never attempted", ids(made)));
        }
    }
    let mut api_failures: BTreeMap<String, u64> = BTreeMap::new();
    for fire in &fires {
        let made = by_fire.get(&fire.fire).cloned().unwrap_or_default();
        match &fire.outcome {
            Ok(id) if made.len() != 1 || made[0].id() != id.as_str() => report.violation(format!(
                "API fire {} was acknowledged with run {id}, but made {:?}",
                fire.fire,
                ids(&made)
            )),
            Ok(_) => {}
            Err(cause) => {
                *api_failures.entry(cause.clone()).or_default() += 1;
                if made.len() > 1 {
                    report.violation(format!(
                        "API fire {} ({cause}) made {} runs: {:?}",
                        fire.fire,
                        made.len(),
                        ids(&made)
                    ));
                }
            }
        }
    }
    let api_acked = fires.iter().filter(|f| f.outcome.is_ok()).count();
    let api_runs = runs.iter().filter(|r| r.pipeline() == API).count();
    report.note(
        "API runs",
        format!(
            "acknowledged {api_acked} <= runs {api_runs} <= attempted {}; failed attempts {api_failures:?}",
            fires.len()
        ),
    );

    by_check.push(("api", report.violations.len() - counted));
    counted = report.violations.len();
    // 1c. Cron: no scheduled time made two runs.
    let mut by_time: BTreeMap<chrono::DateTime<chrono::Utc>, Vec<&Stored>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.pipeline() == CRON) {
        match scheduled(run) {
            Some(at) => by_time.entry(at).or_default().push(run),
            None => report.violation(format!("cron run {} has no XENE_SCHEDULED_TIME", run.id())),
        }
    }
    for (at, made) in &by_time {
        if made.len() > 1 {
            report.violation(format!("cron time {at} made {} runs: {:?}", made.len(), ids(made)));
        }
    }
    let times: Vec<&chrono::DateTime<chrono::Utc>> = by_time.keys().collect();
    let widest = times.windows(2).map(|w| (*w[1] - *w[0]).num_seconds()).max().unwrap_or(0);
    report.note("cron", format!("{} scheduled times made runs; widest gap between them {widest} s", times.len()));

    by_check.push(("cron", report.violations.len() - counted));
    counted = report.violations.len();
    // 2. No run attempt ran twice at once; every Success came from a finished execution.
    let mut twice = 0;
    let mut moved = 0;
    let mut unfinished = 0;
    // The closest approach between executions of one run under different agents or epochs.
    let mut closest: Option<(f64, &str)> = None;
    for (run, list) in &executions {
        for (i, a) in list.iter().enumerate() {
            for b in list[i + 1..].iter().filter(|b| (b.agent.as_str(), b.epoch) != (a.agent.as_str(), a.epoch)) {
                let gap = b.first - a.last;
                if closest.is_none_or(|(best, _)| gap < best) {
                    closest = Some((gap, run.as_str()));
                }
            }
        }
        if !by_id.contains_key(run.as_str()) {
            report.violation(format!("the ledger has executions of run {run}, which is not stored"));
        }
        unfinished += list.iter().filter(|e| !e.ended).count();
        if list.len() > 1 {
            twice += 1;
            let pairs: BTreeSet<(&str, u64)> = list.iter().map(|e| (e.agent.as_str(), e.epoch)).collect();
            moved += usize::from(pairs.len() > 1);
        }
        for problem in overlaps(run, list) {
            report.violation(problem);
        }
    }
    for run in runs.iter().filter(|r| r.run.status.phase == RunPhase::Success) {
        let (agent, epoch) = (run.run.status.agent.as_deref().unwrap_or(""), run.run.status.lease_epoch.unwrap_or(0));
        let finished = executions
            .get(run.id())
            .is_some_and(|list| list.iter().any(|e| e.agent == agent && e.epoch == epoch && e.started && e.ended));
        if !finished {
            report.violation(format!(
                "run {} is Success on {agent} at epoch {epoch}, but no execution there reached its end: {:?}",
                run.id(),
                executions.get(run.id()).map(|l| l.iter().map(Execution::describe).collect::<Vec<_>>())
            ));
        }
    }
    let execution_count: usize = executions.values().map(Vec::len).sum();
    report.note(
        "ledger",
        format!(
            "{ledger_lines} lines ({unreadable} unreadable), {execution_count} executions of {} runs, \
             {unfinished} without an end; {twice} runs executed more than once, {moved} of them under \
             another agent or epoch; closest approach of two of those executions {}",
            executions.len(),
            closest.map_or("-".to_string(), |(gap, run)| format!("{gap:.3} s (run {run})"))
        ),
    );

    by_check.push(("two at once", report.violations.len() - counted));
    counted = report.violations.len();
    // 3. Every run ended.
    let mut still_in_flight = 0;
    for run in &runs {
        if run.run.status.phase.is_terminal() {
            continue;
        }
        if in_flight_cron(run, now) {
            still_in_flight += 1;
            continue;
        }
        report.violation(format!(
            "run {} never ended: {} on {:?} at epoch {:?}",
            run.id(),
            run.run.status.phase.as_str(),
            run.run.status.agent,
            run.run.status.lease_epoch
        ));
    }
    let mut phases: BTreeMap<String, u64> = BTreeMap::new();
    for run in &runs {
        let status = &run.run.status;
        let phase = match status.reason {
            Some(reason) if status.phase == RunPhase::Error => format!("Error/{reason}"),
            _ => status.phase.as_str().to_string(),
        };
        *phases.entry(phase).or_default() += 1;
    }
    report.note("runs by phase", format!("{phases:?}; cron runs still in flight at the end {still_in_flight}"));

    by_check.push(("terminal", report.violations.len() - counted));
    counted = report.violations.len();
    // 4. The logs of every Success run: lines 1..N in order, from the agent and epoch it records.
    let mut checked_lines = 0;
    for run in runs.iter().filter(|r| r.run.status.phase == RunPhase::Success) {
        let lines = step_logs(&cluster, &channels, run.id()).await;
        checked_lines += lines.len();
        let (agent, epoch) = (run.run.status.agent.as_deref().unwrap_or(""), run.run.status.lease_epoch.unwrap_or(0));
        let expected: Vec<String> =
            (1..=LINES).map(|i| format!("line {i} of {} on {agent} at {epoch}", run.id())).collect();
        let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        let in_order = lines.iter().enumerate().all(|(i, l)| l.seq == i as u64 && l.stream == "stdout");
        if got != expected || !in_order {
            let first_bad = (0..expected.len().max(got.len()))
                .find(|i| got.get(*i).copied() != expected.get(*i).map(String::as_str))
                .map(|i| format!("line {}: {:?} instead of {:?}", i + 1, got.get(i), expected.get(i)));
            report.violation(format!(
                "the logs of Success run {} are not lines 1..{LINES} from {agent} at epoch {epoch}: {} lines, first difference {:?}",
                run.id(),
                got.len(),
                first_bad
            ));
        }
    }

    by_check.push(("logs", report.violations.len() - counted));
    counted = report.violations.len();
    // 5. Fencing: no agent write stored under an epoch already superseded.
    let mut epochs: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for run in &runs {
        if let Some(epoch) = run.run.status.lease_epoch {
            epochs.entry(run.pipeline().to_string()).or_default().insert(epoch);
        }
    }
    for (run, list) in &executions {
        if let Some(stored) = by_id.get(run.as_str()) {
            let known = epochs.entry(stored.pipeline().to_string()).or_default();
            known.extend(list.iter().map(|e| e.epoch));
        }
    }
    let mut chunks = Vec::new();
    for run in &runs {
        for (chunk, revision) in raw_chunks(&cluster, &channels, run.id()).await {
            let epoch = chunk.lines.first().and_then(|l| parse_line(&l.text)).map(|(_, _, _, epoch)| epoch);
            if let Some(epoch) = epoch {
                epochs.entry(run.pipeline().to_string()).or_default().insert(epoch);
            }
            chunks.push((run, chunk, revision, epoch));
        }
    }
    // An epoch of the pipeline granted after `epoch` and at or before `revision`.
    let superseded = |pipeline: &str, epoch: u64, revision: u64| {
        let known = epochs.get(pipeline)?;
        (epoch < revision).then(|| known.range(epoch + 1..=revision).next().copied()).flatten()
    };
    for (run, chunk, revision, epoch) in &chunks {
        let Some(epoch) = epoch else {
            let first = chunk.lines.first().map(|l| l.text.as_str());
            report.violation(format!("run {}: a log chunk starts with an unexpected line {first:?}", run.id()));
            continue;
        };
        if let Some(newer) = superseded(run.pipeline(), *epoch, *revision) {
            let first = chunk.lines.first().map_or(0, |l| l.seq);
            report.violation(format!(
                "run {}: a log chunk (from seq {first}) of epoch {epoch} was stored at revision {revision}, after epoch {newer} of its pipeline was granted",
                run.id()
            ));
        }
    }
    for run in runs.iter().filter(|r| r.run.status.phase == RunPhase::Success) {
        let epoch = run.run.status.lease_epoch.unwrap_or(0);
        if let Some(newer) = superseded(run.pipeline(), epoch, run.revision) {
            report.violation(format!(
                "run {}: its Success at epoch {epoch} was stored at revision {}, after epoch {newer} of its pipeline was granted",
                run.id(),
                run.revision
            ));
        }
    }
    let epoch_count: usize = epochs.values().map(BTreeSet::len).sum();
    report.note(
        "logs",
        format!("{checked_lines} lines of Success runs checked; {} stored chunks audited against {epoch_count} lease epochs", chunks.len()),
    );
    by_check.push(("fencing", report.violations.len() - counted));
    counted = report.violations.len();
    for crash in &agent_nemesis.crashed {
        report.violation(format!("agent {crash}"));
    }

    by_check.push(("agents", report.violations.len() - counted));
    report.note("violations by check", format!("{by_check:?}"));

    // The report.
    report.operations.insert("api-create".into(), fires.len() as u64);
    report.operations.insert("webhook-delivery".into(), deliveries.len() as u64);
    report.operations.insert("webhook-attempt".into(), deliveries.iter().map(|d| d.attempts).sum());
    report.operations.insert("webhook-redelivery".into(), redelivered);
    report.operations.insert("cron-run".into(), by_time.values().map(|v| v.len() as u64).sum());
    report.indeterminate = (fires.len() - api_acked + deliveries.len() - acknowledged) as u64;
    report.faults.extend(nemesis.counts().iter().map(|(kind, n)| (kind.clone(), *n)));
    report.faults.extend(agent_nemesis.counts.iter().map(|(kind, n)| (kind.clone(), *n)));
    report.wall = started.elapsed();
    println!("{report}");
    if !report.violations.is_empty() {
        let dir = cluster.keep().display().to_string();
        let _ = std::fs::write(format!("{dir}/violations.txt"), report.violations.join("\n"));
        panic!(
            "chaos_runs found {} violation(s) with seed {}; servers' and agents' logs, the ledger and violations.txt kept in {dir}",
            report.violations.len(),
            settings.seed
        );
    }
}

fn ids<'a>(runs: &[&'a Stored]) -> Vec<&'a str> {
    runs.iter().map(|r| (*r).id()).collect()
}
