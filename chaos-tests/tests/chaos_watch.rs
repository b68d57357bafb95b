//! Chaos scenario "Watch" (issue 8; DESIGN §4.6, §14 "Watches are ordered and gap-free
//! across leader changes"): writers put and delete keys under one prefix (some transactions
//! write two keys at one revision) while the nemesis kills leaders, mostly, and pauses and
//! partitions servers. Two watchers follow the prefix through the client proxies; after any
//! error, stall or end of stream, and every few seconds anyway, it watches again from its last
//! revision + 1, on another server. Then everything heals and the test checks that each watcher
//! - saw revisions in order, never one twice (no duplicates after a reconnect);
//! - missed nothing: each key's versions follow one another (a put of version `v` comes right
//!   after version `v - 1`, or after a delete when `v` is 1) and every acknowledged write
//!   appears at its revision;
//! - saw nothing nobody wrote;
//! - replays to exactly the state a final linearizable range read returns, at its revision.
//!
//! A `compacted` answer means the server's window no longer holds the watcher's next
//! revision. The window (10,000 events) is larger than everything the short scenario writes,
//! so from a server whose window never reset it is a failure. A restarted server's window
//! starts at what it had applied, so from such a server it is expected: the watcher tries
//! the others, and only when every server answers so does it re-list (DESIGN §4.6); the
//! report counts re-lists, and the checks take the listed state as the new starting point.
//! One watcher keeps up; a second one reads slowly (up to 100 revisions behind), so it
//! resumes from older revisions, on servers that may have restarted since.
//!
//! `XENE_CHAOS_SEED=S` replays the random choices; `XENE_CHAOS_LONG=1` runs the soak.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::watch;
use xene_chaos_tests::client::{authorized, delete_op, put_op, ChaosClient, Deadlines, WriteOutcome};
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_chaos_tests::nemesis::{FaultKind, Nemesis, NemesisProfile};
use xene_chaos_tests::network::Network;
use xene_chaos_tests::report::ScenarioReport;
use xene_chaos_tests::settings::ChaosSettings;
use xene_proto as pb;

const SERVERS: usize = 3;
const WRITERS: u64 = 3;
const KEYS: usize = 8;
const PREFIX: &[u8] = b"watch/";
/// The store's watch window (`StoreConfig::watch_window_events`); the scenario must write
/// fewer events than this for a compacted answer from a server that never restarted to be a
/// failure.
const WINDOW_EVENTS: u64 = 10_000;
/// How many revisions the slow watcher lets itself fall behind the writers.
const SLOW_WATCHER_LAG: u64 = 100;

fn key_name(index: usize) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(format!("{index}").as_bytes());
    key
}

/// One write a writer attempted: what it would change, and how it ended.
#[derive(Clone, Debug)]
struct Attempt {
    /// `(key, Some(value))` for a put, `(key, None)` for a delete.
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The revision it applied at, if acknowledged.
    revision: Option<u64>,
    /// For an acknowledged delete: whether the key existed (unknown when replayed).
    deleted: Option<bool>,
}

#[derive(Default)]
struct WriterLog {
    attempts: Vec<Attempt>,
    kinds: BTreeMap<&'static str, u64>,
    indeterminate: u64,
    failed_attempts: BTreeMap<String, u64>,
}

async fn writer(id: u64, mut kv: ChaosClient, stop: Arc<AtomicBool>, latest: Arc<AtomicU64>) -> WriterLog {
    let mut log = WriterLog::default();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let roll = kv.rng().random_range(0..100);
        let first = kv.rng().random_range(0..KEYS);
        let mut value = || {
            written += 1;
            format!("w{id}-{written}").into_bytes()
        };
        let (kind, changes) = if roll < 60 {
            ("put", vec![(key_name(first), Some(value()))])
        } else if roll < 80 {
            ("delete", vec![(key_name(first), None)])
        } else {
            let second = (first + 1 + kv.rng().random_range(0..KEYS - 1)) % KEYS;
            ("txn-two-puts", vec![(key_name(first), Some(value())), (key_name(second), Some(value()))])
        };
        let success = changes
            .iter()
            .map(|(key, value)| match value {
                Some(value) => put_op(key, value),
                None => delete_op(key),
            })
            .collect();
        let txn = pb::TxnRequest { compare: vec![], success, failure: vec![], id: None };
        let mut attempt = Attempt { changes, revision: None, deleted: None };
        match kv.txn(txn).await {
            WriteOutcome::Answered(reply) => {
                attempt.revision = reply.header.map(|h| h.revision);
                latest.fetch_max(attempt.revision.unwrap_or(0), Ordering::Relaxed);
                if kind == "delete" && !reply.replayed {
                    attempt.deleted = match reply.responses.first().and_then(|r| r.response.as_ref()) {
                        Some(pb::response_op::Response::Delete(delete)) => Some(delete.deleted > 0),
                        _ => None,
                    };
                }
            }
            WriteOutcome::Indeterminate => log.indeterminate += 1,
            WriteOutcome::NotApplied => {}
        }
        log.attempts.push(attempt);
        *log.kinds.entry(kind).or_default() += 1;
    }
    log.failed_attempts = std::mem::take(&mut kv.failed_attempts);
    log
}

/// What a watcher learned, in order.
#[derive(Clone, Debug)]
enum Seen {
    Event(pb::Event),
    /// Every server answered `compacted`, so the watcher listed the prefix at `revision`
    /// and watches on from there (DESIGN §4.6).
    Relist {
        revision: u64,
        kvs: Vec<pb::KeyValue>,
    },
}

/// What the watcher saw and found.
#[derive(Default)]
struct WatchLog {
    /// Every event delivered and every re-list, in order.
    seen: Vec<Seen>,
    /// Every event delivered, in delivery order.
    events: Vec<pb::Event>,
    /// The revisions a re-list skipped: `(after, up_to]`.
    skipped: Vec<(u64, u64)>,
    violations: Vec<String>,
    /// `(server, compact_revision)` of every compacted answer.
    compacted: Vec<(usize, u64)>,
    reconnects: BTreeMap<&'static str, u64>,
}

/// The state a watcher rebuilds from events, with the checks that catch a missed event.
#[derive(Default)]
struct Replay {
    keys: BTreeMap<Vec<u8>, pb::KeyValue>,
}

impl Replay {
    /// Applies one event, and says so if it cannot follow what came before.
    fn apply(&mut self, event: &pb::Event) -> Result<(), String> {
        let kv = event.kv.clone().unwrap_or_default();
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let revision = kv.mod_revision;
        if event.r#type == pb::event::EventType::Delete as i32 {
            return match self.keys.remove(&kv.key) {
                Some(_) => Ok(()),
                None => Err(format!("delete of {key} at revision {revision}, but it was absent: a put was missed")),
            };
        }
        let expected = match self.keys.get(&kv.key) {
            Some(prev) => (prev.version + 1, prev.create_revision),
            None => (1, revision),
        };
        if (kv.version, kv.create_revision) != expected {
            // Take the event's word for the key's state, so one gap is reported once.
            self.keys.insert(kv.key.clone(), kv.clone());
            return Err(format!(
                "put of {key} at revision {revision} has version {} created at {}, expected version {} created at {}: \
                 an event was missed",
                kv.version, kv.create_revision, expected.0, expected.1
            ));
        }
        self.keys.insert(kv.key.clone(), kv);
        Ok(())
    }
}

struct Watcher {
    kv: ChaosClient,
    /// The latest revision a writer had acknowledged, which bounds how far a slow watcher
    /// lets itself fall behind.
    latest: Arc<AtomicU64>,
    /// A slow watcher waits up to this long after each response, so it lags behind and
    /// resumes from older revisions, on servers that may have restarted since.
    slow: Option<Duration>,
    token: String,
    rng: StdRng,
    /// Deliver from this revision on.
    next: u64,
    replay: Replay,
    log: WatchLog,
    /// How long a stream may stay silent before the watcher tries elsewhere.
    idle: Duration,
}

impl Watcher {
    /// Follows the prefix until it has delivered revision `until` (once that is known).
    async fn run(mut self, mut until: watch::Receiver<Option<u64>>) -> WatchLog {
        let mut server = self.rng.random_range(0..self.kv.servers());
        let mut unable_since: Option<Instant> = None;
        // The servers that answered `compacted` since the watcher last resumed.
        let mut compacted_by: BTreeSet<usize> = BTreeSet::new();
        loop {
            if until.borrow().is_some_and(|until| self.next > until) {
                return self.log;
            }
            if unable_since.is_some_and(|since| since.elapsed() > Duration::from_secs(60)) {
                self.log
                    .violations
                    .push(format!("no server let the watcher resume from revision {} for 60 s", self.next));
                return self.log;
            }
            if compacted_by.len() == self.kv.servers() {
                if self.relist().await {
                    compacted_by.clear();
                    unable_since = None;
                }
                continue;
            }
            let reason = self.follow(server, &mut until).await;
            match reason {
                Ended::Resumed => {
                    unable_since = None;
                    compacted_by.clear();
                }
                Ended::Compacted => {
                    unable_since.get_or_insert_with(Instant::now);
                    compacted_by.insert(server);
                }
                Ended::Refused => {
                    unable_since.get_or_insert_with(Instant::now);
                }
                Ended::Done => return self.log,
            }
            // Another server next time (the one that failed may be down or partitioned).
            server = (server + 1 + self.rng.random_range(0..self.kv.servers() - 1)) % self.kv.servers();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One watch stream on `server`, until it fails or the watcher is done.
    async fn follow(&mut self, server: usize, until: &mut watch::Receiver<Option<u64>>) -> Ended {
        let request = pb::WatchRequest { key: PREFIX.to_vec(), prefix: true, start_revision: self.next };
        // The deadline covers opening the stream only; the stream itself lives on.
        let mut request = authorized(request, &self.token, Duration::from_secs(3600));
        request.set_timeout(Duration::from_secs(3600));
        let mut client = self.kv.server(server);
        let opened = tokio::time::timeout(Duration::from_secs(2), client.watch(request)).await;
        let mut stream = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(_)) => return self.reconnect("open-failed", Ended::Refused),
            Err(_) => return self.reconnect("open-timeout", Ended::Refused),
        };
        // Move to another server now and then even when nothing failed: every move is a
        // resume from the last revision on a server that may lag or have restarted.
        let switch = tokio::time::sleep(self.rng.random_range(Duration::from_millis(500)..Duration::from_secs(5)));
        tokio::pin!(switch);
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout(self.idle, stream.message()) => message,
                _ = &mut switch => return self.reconnect("switch", Ended::Resumed),
                // Done once the final revision is known and delivered.
                changed = until.changed() => {
                    if changed.is_err() || until.borrow().is_some_and(|until| self.next > until) {
                        return Ended::Done;
                    }
                    continue;
                }
            };
            let ended = match message {
                Ok(Ok(Some(response))) if response.compact_revision > 0 => {
                    self.log.compacted.push((server, response.compact_revision));
                    return self.reconnect("compacted", Ended::Compacted);
                }
                Ok(Ok(Some(response))) => {
                    self.deliver(server, response);
                    let behind = self.latest.load(Ordering::Relaxed).saturating_sub(self.next);
                    match self.slow {
                        Some(most) if behind < SLOW_WATCHER_LAG => {
                            tokio::time::sleep(self.rng.random_range(Duration::ZERO..most)).await;
                        }
                        _ => {}
                    }
                    if until.borrow().is_some_and(|until| self.next > until) {
                        return Ended::Done;
                    }
                    continue;
                }
                Ok(Ok(None)) => "stream-ended",
                Ok(Err(_)) => "stream-error",
                Err(_) => "idle",
            };
            // The server accepted the watch from where the watcher was: it resumed.
            return self.reconnect(ended, Ended::Resumed);
        }
    }

    /// Lists the prefix and watches on from the list's revision, as a client must when no
    /// server's window holds its next revision. Returns whether the list succeeded.
    async fn relist(&mut self) -> bool {
        let Some(list) = self.kv.range(PREFIX, true, false).await else { return false };
        let revision = list.header.map_or(0, |h| h.revision);
        *self.log.reconnects.entry("relist").or_default() += 1;
        self.log.skipped.push((self.next.saturating_sub(1), revision));
        self.replay.keys = list.kvs.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
        self.log.seen.push(Seen::Relist { revision, kvs: list.kvs });
        self.next = self.next.max(revision + 1);
        true
    }

    fn reconnect(&mut self, why: &'static str, ended: Ended) -> Ended {
        *self.log.reconnects.entry(why).or_default() += 1;
        ended
    }

    /// Checks and applies one response's events.
    fn deliver(&mut self, server: usize, response: pb::WatchResponse) {
        let mut keys_at_revision: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut last = self.next.saturating_sub(1);
        for event in response.events {
            let kv = event.kv.clone().unwrap_or_default();
            let revision = kv.mod_revision;
            if revision < self.next {
                self.log.violations.push(format!(
                    "server {server} delivered revision {revision} of {} again (the watcher asked from {})",
                    String::from_utf8_lossy(&kv.key),
                    self.next
                ));
                continue;
            }
            if revision < last {
                self.log.violations.push(format!("server {server} delivered revision {revision} after {last}"));
            }
            if revision != last {
                keys_at_revision.clear();
            }
            if !keys_at_revision.insert(kv.key.clone()) {
                self.log.violations.push(format!(
                    "server {server} delivered {} twice at revision {revision}",
                    String::from_utf8_lossy(&kv.key)
                ));
            }
            if let Err(gap) = self.replay.apply(&event) {
                self.log.violations.push(format!("server {server}: {gap}"));
            }
            last = last.max(revision);
            self.log.seen.push(Seen::Event(event.clone()));
            self.log.events.push(event);
        }
        self.next = self.next.max(last + 1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The server accepted the watch; the stream ended later (error, end, or silence).
    Resumed,
    /// The watch could not be opened.
    Refused,
    /// The server's window no longer holds the next revision.
    Compacted,
    /// The final revision was delivered.
    Done,
}

/// Every acknowledged write appears at its revision; every event comes from an attempted
/// write (at the acknowledged revision, if it was acknowledged).
fn check_against_writes(events: &[pb::Event], attempts: &[Attempt]) -> Vec<String> {
    let mut problems = Vec::new();
    // (revision, key) -> the event seen there.
    let seen: BTreeMap<(u64, Vec<u8>), &pb::Event> = events
        .iter()
        .map(|event| {
            let kv = event.kv.clone().unwrap_or_default();
            ((kv.mod_revision, kv.key), event)
        })
        .collect();
    let mut puts: BTreeMap<&[u8], (&[u8], Option<u64>)> = BTreeMap::new();
    let mut deleted_keys: BTreeSet<&[u8]> = BTreeSet::new();
    for attempt in attempts {
        for (key, value) in &attempt.changes {
            match value {
                Some(value) => {
                    puts.insert(value, (key, attempt.revision));
                }
                None => {
                    deleted_keys.insert(key);
                }
            }
        }
        let Some(revision) = attempt.revision else { continue };
        for (key, value) in &attempt.changes {
            let name = String::from_utf8_lossy(key);
            let event = seen.get(&(revision, key.clone()));
            match (value, event) {
                (Some(value), Some(event)) => {
                    let got = event.kv.as_ref().map(|kv| kv.value.as_slice()).unwrap_or_default();
                    if event.r#type != pb::event::EventType::Put as i32 || got != value.as_slice() {
                        problems
                            .push(format!("the event of {name} at revision {revision} is not the acknowledged put"));
                    }
                }
                (Some(_), None) => {
                    problems.push(format!("acknowledged put of {name} at revision {revision} never seen"))
                }
                (None, Some(event))
                    if event.r#type != pb::event::EventType::Delete as i32 || attempt.deleted == Some(false) =>
                {
                    problems.push(format!("the event of {name} at revision {revision} is not the acknowledged delete"))
                }
                (None, None) if attempt.deleted == Some(true) => {
                    problems.push(format!("acknowledged delete of {name} at revision {revision} never seen"))
                }
                (None, _) => {}
            }
        }
    }
    for event in events {
        let kv = event.kv.clone().unwrap_or_default();
        let name = String::from_utf8_lossy(&kv.key);
        if event.r#type == pb::event::EventType::Delete as i32 {
            if !deleted_keys.contains(kv.key.as_slice()) {
                problems.push(format!("a delete of {name} at revision {} that nobody asked for", kv.mod_revision));
            }
            continue;
        }
        match puts.get(kv.value.as_slice()) {
            None => problems.push(format!("a put of {name} at revision {} that nobody wrote", kv.mod_revision)),
            Some((key, _)) if *key != kv.key.as_slice() => problems
                .push(format!("the value put at {name} (revision {}) was written to another key", kv.mod_revision)),
            Some((_, Some(revision))) if *revision != kv.mod_revision => problems.push(format!(
                "the put of {name} acknowledged at revision {revision} was seen at revision {}",
                kv.mod_revision
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The end of the scenario: the state a final linearizable read saw at `revision`, and the
/// revision of the marker written after it.
struct Final<'a> {
    revision: u64,
    state: &'a BTreeMap<Vec<u8>, pb::KeyValue>,
    marker: u64,
}

/// Everything one watcher got wrong.
fn check_watcher(log: &WatchLog, end: &Final<'_>, attempts: &[Attempt], nemesis: &Nemesis) -> Vec<String> {
    let mut problems = log.violations.clone();
    // Rebuild the state at the final read's revision (the events were checked while watching).
    let mut replay = Replay::default();
    for seen in &log.seen {
        match seen {
            Seen::Event(event) if event.kv.as_ref().is_some_and(|kv| kv.mod_revision <= end.revision) => {
                let _ = replay.apply(event);
            }
            Seen::Relist { revision, kvs } if *revision <= end.revision => {
                replay.keys = kvs.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
            }
            _ => {}
        }
    }
    if &replay.keys != end.state {
        let differing: Vec<String> = end
            .state
            .keys()
            .chain(replay.keys.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|key| end.state.get(*key) != replay.keys.get(*key))
            .map(|key| {
                format!(
                    "{}: read {:?}, watched {:?}",
                    String::from_utf8_lossy(key),
                    end.state.get(key).map(|kv| (String::from_utf8_lossy(&kv.value), kv.mod_revision)),
                    replay.keys.get(key).map(|kv| (String::from_utf8_lossy(&kv.value), kv.mod_revision))
                )
            })
            .collect();
        problems.push(format!(
            "the watched state differs from the final read at revision {}: {}",
            end.revision,
            differing.join("; ")
        ));
    }
    let writes_only: Vec<pb::Event> =
        log.events.iter().filter(|e| e.kv.as_ref().is_some_and(|kv| kv.key != b"watch/~end")).cloned().collect();
    // Acknowledged writes a re-list skipped over are in the listed state, not in events.
    let skipped = |revision: u64| log.skipped.iter().any(|(after, up_to)| revision > *after && revision <= *up_to);
    let expected: Vec<Attempt> = attempts.iter().filter(|a| !a.revision.is_some_and(skipped)).cloned().collect();
    problems.extend(check_against_writes(&writes_only, &expected));
    // Every revision holds at most two events here, so this bounds the events in the window.
    let events_bound = end.marker * 2;
    for (server, compacted) in &log.compacted {
        if nemesis.restarts(*server) == 0 && events_bound < WINDOW_EVENTS {
            problems.push(format!(
                "server {server}, never restarted, answered compacted at revision {compacted} with at most \
                 {events_bound} events written"
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_revision_once_in_order_across_leader_kills() {
    let settings = ChaosSettings::from_env("chaos_watch");
    let started = Instant::now();
    let mut report = ScenarioReport::new("watch", &settings);
    let (network, plans) = Network::plan(SERVERS).await.expect("start the proxies");
    let options = ClusterOptions { servers: SERVERS, ..ClusterOptions::default() };
    let mut cluster = TestCluster::start_planned(options, plans).await;
    let deadlines = Deadlines::default();

    // Start watching from the revision an initial read of the (empty) prefix saw.
    let mut setup = ChaosClient::new("chaos-watch-setup", &network, &cluster.token, deadlines, settings.rng(100));
    let initial = setup.range(PREFIX, true, false).await.expect("an initial read of the prefix");
    assert!(initial.kvs.is_empty(), "the prefix starts empty");
    let start = initial.header.map_or(0, |h| h.revision) + 1;
    let (until_tx, until_rx) = watch::channel(None);
    let latest = Arc::new(AtomicU64::new(start));
    // A watcher that keeps up, and one that lags.
    let mut watchers = Vec::new();
    for (stream, name, slow) in [(200, "fast", None), (300, "slow", Some(Duration::from_millis(1500)))] {
        let watcher = Watcher {
            kv: ChaosClient::new(
                &format!("chaos-watcher-{name}"),
                &network,
                &cluster.token,
                deadlines,
                settings.rng(stream),
            ),
            latest: Arc::clone(&latest),
            slow,
            token: cluster.token.clone(),
            rng: settings.rng(stream + 1),
            next: start,
            replay: Replay::default(),
            log: WatchLog::default(),
            idle: Duration::from_secs(3),
        };
        watchers.push((name, tokio::spawn(watcher.run(until_rx.clone()))));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for id in 1..=WRITERS {
        let kv = ChaosClient::new(&format!("chaos-watch-{id}"), &network, &cluster.token, deadlines, settings.rng(id));
        writers.spawn(writer(id, kv, Arc::clone(&stop), Arc::clone(&latest)));
    }

    // Leader kills, mostly; some pauses, partitions and cut connections.
    let profile = NemesisProfile {
        weights: vec![
            (FaultKind::Kill, 6),
            (FaultKind::Pause, 2),
            (FaultKind::Partition, 2),
            (FaultKind::DropConnections, 1),
            (FaultKind::ClientCut, 1),
        ],
        leader_bias: 0.8,
        hold: Duration::from_millis(300)..Duration::from_millis(2500),
        quiet: Duration::from_millis(300)..Duration::from_millis(1500),
        max_active: 2,
    };
    let mut nemesis = Nemesis::new(settings.rng(0), profile, SERVERS);
    let duration = settings.duration(Duration::from_secs(60), Duration::from_secs(12 * 60));
    nemesis.run(&mut cluster, &network, duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = Vec::new();
    let mut failed_attempts: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(log) = writers.join_next().await {
        let log = log.expect("a writer panicked");
        attempts.extend(log.attempts);
        report.indeterminate += log.indeterminate;
        for (kind, n) in log.kinds {
            *report.operations.entry(kind.to_string()).or_default() += n;
        }
        for (what, n) in log.failed_attempts {
            *failed_attempts.entry(what).or_default() += n;
        }
    }

    // The final state at revision R, then a put at S > R that tells the watcher where to stop.
    cluster.wait_leader(Duration::from_secs(30)).await;
    let final_read = setup.range(PREFIX, true, false).await.expect("a final read of the prefix");
    let final_revision = final_read.header.map_or(0, |h| h.revision);
    let marker_deadline = Instant::now() + Duration::from_secs(60);
    let marker = loop {
        assert!(Instant::now() < marker_deadline, "no server took the end marker within 60 s\n{}", cluster.logs());
        let txn =
            pb::TxnRequest { compare: vec![], success: vec![put_op(b"watch/~end", b"end")], failure: vec![], id: None };
        if let WriteOutcome::Answered(reply) = setup.txn(txn).await {
            break reply.header.map_or(0, |h| h.revision);
        }
    };
    until_tx.send_replace(Some(marker));
    let expected: BTreeMap<Vec<u8>, pb::KeyValue> = final_read.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for (name, watcher) in watchers {
        let log = match tokio::time::timeout(Duration::from_secs(90), watcher).await {
            Ok(done) => done.expect("the watcher panicked"),
            Err(_) => panic!("the {name} watcher did not reach revision {marker} within 90 s\n{}", cluster.logs()),
        };
        let end = Final { revision: final_revision, state: &expected, marker };
        for problem in check_watcher(&log, &end, &attempts, &nemesis) {
            report.violation(format!("{name} watcher: {problem}"));
        }
        report.note(
            &format!("{name} watcher"),
            format!(
                "{} events up to revision {marker}; reconnects {:?}; compacted answers {}",
                log.events.len(),
                log.reconnects,
                log.compacted.len()
            ),
        );
    }

    report.faults.extend(nemesis.counts().iter().map(|(kind, n)| (kind.clone(), *n)));
    report.note("failed write attempts (retried)", format!("{failed_attempts:?}"));
    report.wall = started.elapsed();
    println!("{report}");
    if !report.violations.is_empty() {
        let dir = cluster.keep().display().to_string();
        panic!(
            "chaos_watch found {} violation(s) with seed {}; servers' logs kept in {dir}",
            report.violations.len(),
            settings.seed
        );
    }
}
