//! Chaos scenario "KV" (issue 8; DESIGN §14): concurrent clients put, get (linearizable),
//! compare-and-set and delete a small set of keys through `KvService`, each through the
//! proxy in front of a server, while the nemesis kills, pauses and partitions servers and
//! cuts, delays and drops links. Then everything heals, every server restarts at once, and
//! the test checks
//! - "Key-value operations are linearizable" (DESIGN §4.5, §14): the recorded history, with
//!   the final reads, passes the per-key register checker (`lincheck`); an undecided check
//!   fails the test;
//! - "No acknowledged write is lost while a majority survives, nor when all servers restart"
//!   (DESIGN §5.5, §14): after the restart no key reads a value older than its last
//!   acknowledged write;
//! - the revisions one client sees never go back.
//!
//! Writes carry request IDs and are retried on another server after an error or a timeout,
//! so a retry applies once (DESIGN §4.4); an operation whose every attempt failed without
//! an answer is indeterminate.
//!
//! `XENE_CHAOS_SEED=S` replays the random choices of seed `S`; `XENE_CHAOS_LONG=1` runs the
//! soak. The report is printed at the end (`cargo nextest run --no-capture` shows it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::Rng;
use xene_chaos_tests::client::{delete_op, put_op, ChaosClient, Deadlines, WriteOutcome};
use xene_chaos_tests::harness::{ClusterOptions, ClusterTls, TestCluster};
use xene_chaos_tests::lincheck::{
    check_kv_history, Budget, ClientId, Completion, Key, KeyedOperation, KvOperation, Operation, RegisterInput,
    RegisterOutput, Time, Value,
};
use xene_chaos_tests::nemesis::{Nemesis, NemesisProfile};
use xene_chaos_tests::network::Network;
use xene_chaos_tests::pki::TestPki;
use xene_chaos_tests::report::ScenarioReport;
use xene_chaos_tests::settings::ChaosSettings;
use xene_proto as pb;
use xene_proto::kv_service_client::KvServiceClient;

const SERVERS: usize = 3;
const CLIENTS: u64 = 5;
const KEYS: usize = 5;
/// The client number of the reads made after the heal.
const FINAL_CLIENT: u64 = 1_000;

/// One clock for every client: nanoseconds since the test started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> Time {
        Time(self.0.elapsed().as_nanos() as u64)
    }
}

/// The kinds of operation, as the report counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Get,
    Put,
    /// Txn comparing the value (or `version == 0` for "absent").
    CasValue,
    /// Txn comparing `mod_revision` with what a get just returned.
    CasRevision,
    Delete,
}

impl Kind {
    const WEIGHTS: [(Kind, u32); 5] =
        [(Kind::Get, 35), (Kind::Put, 25), (Kind::CasValue, 15), (Kind::CasRevision, 10), (Kind::Delete, 15)];

    fn name(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Put => "put",
            Kind::CasValue => "cas-value",
            Kind::CasRevision => "cas-revision",
            Kind::Delete => "delete",
        }
    }
}

/// What one client did.
#[derive(Default)]
struct ClientLog {
    history: Vec<KvOperation>,
    kinds: BTreeMap<Kind, u64>,
    /// Answers with a lower revision than an earlier answer to the same client.
    revision_regressions: Vec<String>,
    failed_attempts: BTreeMap<String, u64>,
    reads_abandoned: u64,
}

/// One client of the workload: random operations on random keys, one at a time.
struct Client {
    id: u64,
    kv: ChaosClient,
    clock: Clock,
    written: u64,
    /// The last value this client saw per key, for value compares.
    seen: BTreeMap<usize, Option<Value>>,
    last_revision: u64,
    log: ClientLog,
}

/// The answer of a read: the value and its mod revision, or absent.
type Read = Option<(Value, u64)>;

fn key_name(index: usize) -> Vec<u8> {
    format!("kv/{index}").into_bytes()
}

impl Client {
    fn fresh_value(&mut self) -> Value {
        self.written += 1;
        Value::from(format!("c{}-{}", self.id, self.written).as_str())
    }

    fn saw_revision(&mut self, revision: u64, what: &str) {
        if revision < self.last_revision {
            let regression = format!("c{}: {what} answered revision {revision} after {}", self.id, self.last_revision);
            self.log.revision_regressions.push(regression);
        }
        self.last_revision = self.last_revision.max(revision);
    }

    fn record(&mut self, key: usize, input: RegisterInput, call: Time, completion: Completion<RegisterOutput>) {
        let operation = Operation { client: ClientId(self.id), input, call, completion };
        self.log.history.push(KeyedOperation { key: Key(key_name(key)), operation });
    }

    async fn run(mut self, stop: Arc<AtomicBool>) -> ClientLog {
        while !stop.load(Ordering::Relaxed) {
            let key = self.kv.rng().random_range(0..KEYS);
            let (kind, _) = *Kind::WEIGHTS.choose_weighted(self.kv.rng(), |(_, w)| *w).expect("invariant: weights > 0");
            match kind {
                Kind::Get => {
                    self.get(key).await;
                }
                Kind::Put => {
                    let value = self.fresh_value();
                    let op = put_op(&key_name(key), &value.0);
                    self.write(key, RegisterInput::Put(value), vec![], op, |_| RegisterOutput::Put).await;
                }
                Kind::CasValue => {
                    let expected = self.seen.get(&key).cloned().flatten();
                    let target = match &expected {
                        Some(value) => pb::compare::Target::Value(value.0.clone()),
                        None => pb::compare::Target::Version(0),
                    };
                    self.cas(key, expected, target).await;
                }
                Kind::CasRevision => {
                    // A compare on the mod revision a read returned is a compare on the value
                    // it read: every written value is unique, so each revision has its own.
                    if let Some(read) = self.get(key).await {
                        let (expected, revision) = match read {
                            Some((value, revision)) => (Some(value), revision),
                            None => (None, 0),
                        };
                        self.cas(key, expected, pb::compare::Target::ModRevision(revision)).await;
                    }
                }
                Kind::Delete => {
                    self.write(key, RegisterInput::Delete, vec![], delete_op(&key_name(key)), |reply| {
                        // A replayed answer does not say what the first application deleted.
                        let existed = match reply.responses.first().and_then(|r| r.response.as_ref()) {
                            Some(pb::response_op::Response::Delete(delete)) if !reply.replayed => {
                                Some(delete.deleted > 0)
                            }
                            _ => None,
                        };
                        RegisterOutput::Delete { existed }
                    })
                    .await;
                }
            }
            *self.log.kinds.entry(kind).or_default() += 1;
        }
        self.log.failed_attempts = std::mem::take(&mut self.kv.failed_attempts);
        self.log
    }

    async fn cas(&mut self, key: usize, expected: Option<Value>, target: pb::compare::Target) {
        let new = self.fresh_value();
        let compare =
            pb::Compare { key: key_name(key), result: pb::compare::Result::Equal as i32, target: Some(target) };
        let input = RegisterInput::CompareAndSet { expected, new: new.clone() };
        let op = put_op(&key_name(key), &new.0);
        let output =
            self.write(key, input, vec![compare], op, |reply| RegisterOutput::CompareAndSet(reply.succeeded)).await;
        if output == Some(RegisterOutput::CompareAndSet(true)) {
            self.seen.insert(key, Some(new));
        }
    }

    /// A linearizable read, retried on other servers. Returns `None` if no server answered
    /// (the read is then left out of the history: it constrains nothing).
    async fn get(&mut self, key: usize) -> Option<Read> {
        let call = self.clock.now();
        let Some(reply) = self.kv.range(&key_name(key), false, false).await else {
            self.log.reads_abandoned += 1;
            return None;
        };
        let returned = self.clock.now();
        self.saw_revision(reply.header.map_or(0, |h| h.revision), "get");
        let read: Read = reply.kvs.first().map(|kv| (Value(kv.value.clone()), kv.mod_revision));
        let value = read.as_ref().map(|(value, _)| value.clone());
        self.seen.insert(key, value.clone());
        let output = RegisterOutput::Get(value);
        self.record(key, RegisterInput::Get, call, Completion::Returned { at: returned, output });
        Some(read)
    }

    /// A write as a transaction of `compare` then `op`, retried with one request ID. Records
    /// it (indeterminate if no attempt got an answer and one may have applied) and returns
    /// its output if there was one.
    async fn write(
        &mut self,
        key: usize,
        input: RegisterInput,
        compare: Vec<pb::Compare>,
        op: pb::RequestOp,
        output: impl Fn(&pb::TxnResponse) -> RegisterOutput,
    ) -> Option<RegisterOutput> {
        let call = self.clock.now();
        let txn = pb::TxnRequest { compare, success: vec![op], failure: vec![], id: None };
        match self.kv.txn(txn).await {
            WriteOutcome::Answered(reply) => {
                let returned = self.clock.now();
                self.saw_revision(reply.header.map_or(0, |h| h.revision), "write");
                let out = output(&reply);
                match &input {
                    RegisterInput::Put(value) => {
                        self.seen.insert(key, Some(value.clone()));
                    }
                    RegisterInput::Delete => {
                        self.seen.insert(key, None);
                    }
                    _ => {}
                }
                self.record(key, input, call, Completion::Returned { at: returned, output: out.clone() });
                Some(out)
            }
            WriteOutcome::Indeterminate => {
                self.record(key, input, call, Completion::Indeterminate);
                None
            }
            WriteOutcome::NotApplied => None,
        }
    }
}

/// Every acknowledged write is present: the value a key reads after the heal must come from
/// a write that no acknowledged write to the key strictly follows (in real time), else an
/// acknowledged write was lost. Returns one message per key that breaks it.
fn lost_writes(history: &[KvOperation], finals: &BTreeMap<Key, Option<Value>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in finals {
        let writes: Vec<&Operation<RegisterInput, RegisterOutput>> = history
            .iter()
            .filter(|op| &op.key == key && op.operation.client.0 != FINAL_CLIENT)
            .map(|op| &op.operation)
            .filter(|op| match (&op.input, op.output()) {
                (RegisterInput::Put(_) | RegisterInput::Delete, _) => true,
                (RegisterInput::CompareAndSet { .. }, Some(RegisterOutput::CompareAndSet(ok))) => *ok,
                (RegisterInput::CompareAndSet { .. }, None) => true,
                _ => false,
            })
            .collect();
        // The writes that could have produced what was read.
        let sources: Vec<&&Operation<RegisterInput, RegisterOutput>> = writes
            .iter()
            .filter(|op| match (&op.input, value) {
                (RegisterInput::Put(v) | RegisterInput::CompareAndSet { new: v, .. }, Some(read)) => v == read,
                (RegisterInput::Delete, None) => true,
                _ => false,
            })
            .collect();
        if value.is_some() && sources.is_empty() {
            problems.push(format!("key {key:?} reads {value:?}, which no client wrote"));
            continue;
        }
        // The latest any source may have taken effect (indeterminate: any time).
        let latest_source_return = sources.iter().map(|op| op.return_time().unwrap_or(Time(u64::MAX))).max();
        let newer_acknowledged =
            writes.iter().filter(|op| op.output().is_some()).find(|op| match latest_source_return {
                // Acknowledged and called after every possible source had returned.
                Some(returned) => op.call > returned,
                // Absent and never deleted: any acknowledged write is newer than the initial state.
                None => true,
            });
        if let Some(newer) = newer_acknowledged {
            problems.push(format!(
                "key {key:?} reads {value:?} after all servers restarted, but {newer} was acknowledged later"
            ));
        }
    }
    problems
}

/// Reads every key linearizably after the heal, retrying until some server answers.
async fn final_reads(
    cluster: &TestCluster,
    network: &Network,
    clock: Clock,
) -> (Vec<KvOperation>, BTreeMap<Key, Option<Value>>) {
    let mut history = Vec::new();
    let mut finals = BTreeMap::new();
    for key in 0..KEYS {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut server = 0;
        loop {
            let call = clock.now();
            let request =
                cluster.request(pb::RangeRequest { key: key_name(key), prefix: false, limit: 0, serializable: false });
            let mut kv = KvServiceClient::new(network.client_channel(server));
            match kv.range(request).await {
                Ok(reply) => {
                    let returned = clock.now();
                    let value = reply.into_inner().kvs.first().map(|kv| Value(kv.value.clone()));
                    finals.insert(Key(key_name(key)), value.clone());
                    history.push(KeyedOperation {
                        key: Key(key_name(key)),
                        operation: Operation::returned(
                            ClientId(FINAL_CLIENT),
                            RegisterInput::Get,
                            call,
                            returned,
                            RegisterOutput::Get(value),
                        ),
                    });
                    break;
                }
                Err(status) => {
                    assert!(
                        Instant::now() < deadline,
                        "no server answered a read of kv/{key} after the heal: {status}\n{}",
                        cluster.logs()
                    );
                    server = (server + 1) % SERVERS;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    (history, finals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_history_is_linearizable_and_keeps_acknowledged_writes_under_faults() {
    scenario("chaos_kv", None, Duration::from_secs(75)).await;
}

/// The same with mutual TLS on every link (DESIGN §11.2): servers to each other and clients to
/// servers, through the same proxies, which carry the TLS bytes unchanged; shorter in CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_over_mutual_tls_is_linearizable_and_keeps_acknowledged_writes_under_faults() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let tls = ClusterTls { pki: TestPki::generate(pki_dir.path()), client_certificates: true };
    scenario("chaos_kv_tls", Some(tls), Duration::from_secs(25)).await;
}

/// One run of the scenario: `short` is the fault phase of the CI variant.
async fn scenario(name: &str, tls: Option<ClusterTls>, short: Duration) {
    let settings = ChaosSettings::from_env(name);
    let started = Instant::now();
    let mut report = ScenarioReport::new(if tls.is_some() { "kv over TLS" } else { "kv" }, &settings);
    let (mut network, plans) = Network::plan(SERVERS).await.expect("start the proxies");
    if let Some(tls) = &tls {
        network.use_client_tls(tls.client_config());
    }
    let options = ClusterOptions { servers: SERVERS, tls, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start_planned(options, plans).await;
    let clock = Clock(Instant::now());

    // The clients, each with its own random stream and connections.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for id in 1..=CLIENTS {
        let kv = ChaosClient::new(
            &format!("chaos-kv-{id}"),
            &network,
            &cluster.token,
            Deadlines::default(),
            settings.rng(id),
        );
        let client =
            Client { id, kv, clock, written: 0, seen: BTreeMap::new(), last_revision: 0, log: ClientLog::default() };
        clients.spawn(client.run(Arc::clone(&stop)));
    }

    // Faults while the clients run, then everything heals.
    let mut nemesis = Nemesis::new(settings.rng(0), NemesisProfile::everything(), SERVERS);
    let duration = settings.duration(short, Duration::from_secs(15 * 60));
    nemesis.run(&mut cluster, &network, duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    while let Some(log) = clients.join_next().await {
        logs.push(log.expect("a client task panicked"));
    }

    // Restart every server at once (SIGKILL), then read every key.
    cluster.wait_leader(Duration::from_secs(30)).await;
    for server in &mut cluster.servers {
        server.kill();
    }
    for server in &mut cluster.servers {
        server.restart();
    }
    *report.faults.entry("kill-all-then-restart".into()).or_default() += 1;
    cluster.wait_leader(Duration::from_secs(30)).await;
    let (final_history, finals) = final_reads(&cluster, &network, clock).await;

    // Assemble the history and the counts.
    let mut history = Vec::new();
    let mut failed_attempts: BTreeMap<String, u64> = BTreeMap::new();
    let mut regressions = Vec::new();
    let mut reads_abandoned = 0;
    for log in logs {
        history.extend(log.history);
        for (kind, n) in log.kinds {
            *report.operations.entry(kind.name().to_string()).or_default() += n;
        }
        regressions.extend(log.revision_regressions);
        for (what, n) in log.failed_attempts {
            *failed_attempts.entry(what).or_default() += n;
        }
        reads_abandoned += log.reads_abandoned;
    }
    report.indeterminate = history.iter().filter(|op| op.operation.is_indeterminate()).count() as u64;
    history.extend(final_history);
    *report.operations.entry("final-get".into()).or_default() += KEYS as u64;
    report.faults.extend(nemesis.counts().iter().map(|(kind, n)| (kind.clone(), *n)));
    report.note("failed attempts (retried)", format!("{failed_attempts:?}"));
    report.note("reads abandoned (no server answered in time; not recorded)", reads_abandoned);

    // The checks: linearizability first, then acknowledged writes, then revisions.
    let checked_at = Instant::now();
    let budget = Budget { max_steps: 50_000_000, max_duration: Some(Duration::from_secs(90)) };
    let checked = {
        let history = history.clone();
        tokio::task::spawn_blocking(move || check_kv_history(&history, &budget)).await.expect("the checker panicked")
    };
    match checked {
        Ok(checked) => {
            let steps: u64 = checked.keys.iter().map(|k| k.stats.steps).sum();
            let took = checked_at.elapsed().as_secs_f64();
            let verdict = format!("{:?}, {} keys, {steps} steps, {took:.1} s", checked.verdict(), checked.keys.len());
            report.note("linearizability check", verdict);
            let lookup = |index: usize| history.get(index).map(|keyed| &keyed.operation);
            for (key, explanation) in checked.violations() {
                report.violation(format!("key {key:?} is not linearizable:\n{}", explanation.render(lookup)));
            }
            for key in checked.unknown() {
                report.violation(format!("key {key:?}: the checker ran out of budget (counts as a failure)"));
            }
        }
        Err(e) => report.violation(format!("the history is malformed: {e}")),
    }
    for problem in lost_writes(&history, &finals) {
        report.violation(format!("lost acknowledged write: {problem}"));
    }
    if !regressions.is_empty() {
        let examples = regressions.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
        report.violation(format!("{} answers went back in revision, e.g. {examples}", regressions.len()));
    }

    report.wall = started.elapsed();
    println!("{report}");
    if !report.violations.is_empty() {
        let dir = cluster.keep().display().to_string();
        panic!(
            "{name} found {} violation(s) with seed {}; servers' logs kept in {dir}",
            report.violations.len(),
            settings.seed
        );
    }
}
