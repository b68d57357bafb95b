//! The agent's one session with the leader (DESIGN §7.2): hello, heartbeats inside the
//! stream, lease grants and revocations; on any break, reconnect to another server with
//! exponential backoff and jitter, going straight to the leader when a follower names it.
//! Only a leader's acknowledgement of a heartbeat keeps the agent's leases (the `fence`).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use xene_model::address::ServerAddress;
use xene_proto as pb;
use xene_proto::agent_service_client::AgentServiceClient;
use xene_proto::{agent_message, server_message};

use crate::config::AgentConfig;
use crate::connect::channel;
use crate::credential::Credential;
use crate::leases::{Granted, Leases};
use crate::outbox::{OutboxReceiver, Outgoing};
use crate::pace::Pacer;
use crate::runner::Runner;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Why a session ended.
enum End {
    /// The server was stopped or the stream broke: try again.
    Retry(String),
    /// A follower named the leader: go there at once.
    Redirect(ServerAddress),
    /// The cluster refuses this agent (credential revoked, agent removed): give up.
    Fatal(String),
}

/// Keeps a session open until `stop`; returns an error only when the cluster refuses the agent.
/// Beside it, [`fence`] drops the leases once a TTL passes without a confirmed leader's word.
pub async fn run(
    config: AgentConfig,
    credential: Credential,
    leases: Arc<Leases>,
    runner: Arc<Runner>,
    outbox: OutboxReceiver,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (contact, seen) = watch::channel(Contact { last: Instant::now(), ttl: None });
    let fencing = tokio::spawn(fence(seen, leases.clone(), runner.clone()));
    let ended = sessions(config, credential, &leases, &runner, outbox, &stop, &contact).await;
    // Dropping the sender ends the fence.
    drop(contact);
    if let Err(e) = fencing.await {
        tracing::error!(error = %e, "the lease fence panicked");
    }
    ended
}

/// Drops every lease, and stops its runs, once the agent has gone a whole TTL without a
/// confirmed leader's word: by then the leader may have given them to other agents, and a
/// run attempt must not run on two agents at once (DESIGN §7.5). A timer, not a check between
/// reconnection attempts, so backoff and hanging connections cannot delay it. Ends when
/// `contact`'s sender is dropped.
async fn fence(mut contact: watch::Receiver<Contact>, leases: Arc<Leases>, runner: Arc<Runner>) {
    loop {
        let Contact { last, ttl } = *contact.borrow_and_update();
        let wake = match ttl {
            // No leader has spoken yet: nothing was granted, nothing to drop.
            None => None,
            Some(ttl) if last.elapsed() < ttl => Some(last + ttl),
            Some(ttl) => {
                let held = leases.list();
                if !held.is_empty() {
                    tracing::warn!(
                        ttl_ms = ttl.as_millis() as u64,
                        "no word from a confirmed leader for the agent TTL; dropping every pipeline"
                    );
                    for (pipeline, epoch) in held {
                        leases.revoke(&pipeline, epoch);
                        runner.stop_pipeline(&pipeline);
                    }
                }
                // Still out of touch: look again now and then, in case a grant slipped in.
                Some(Instant::now() + ttl / 4)
            }
        };
        tokio::select! {
            changed = contact.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
        }
    }
}

/// The session loop: one session at a time, to the leader, reconnecting on every break.
async fn sessions(
    config: AgentConfig,
    credential: Credential,
    leases: &Arc<Leases>,
    runner: &Arc<Runner>,
    mut outbox: OutboxReceiver,
    stop: &CancellationToken,
    contact: &watch::Sender<Contact>,
) -> anyhow::Result<()> {
    let mut next = 0usize;
    let mut hint: Option<ServerAddress> = None;
    let mut pause = Duration::from_millis(100);
    let mut unacked = Unacked::default();
    // One pacer for the agent's life: what it holds outlives a session, and a reconnect does
    // not grant a fresh burst.
    let mut pacer = Pacer::new(config.log_rate_kib, std::time::Instant::now());
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let server = match hint.take() {
            Some(leader) => leader,
            None => {
                next += 1;
                config.servers[next % config.servers.len()].clone()
            }
        };
        let link = Link { leases, runner, outbox: &mut outbox, unacked: &mut unacked, pacer: &mut pacer };
        let before = contact.borrow().last;
        let end = once(&server, &config, &credential, link, stop, contact).await;
        if contact.borrow().last > before {
            // The session was up: the next break starts the backoff afresh.
            pause = Duration::from_millis(100);
        }
        match end {
            End::Redirect(leader) => {
                tracing::info!(from = %server, leader = %leader, "redirected to the leader");
                hint = Some(leader);
                continue;
            }
            End::Fatal(message) => anyhow::bail!("the cluster refused this agent: {message}"),
            End::Retry(message) => {
                if stop.is_cancelled() {
                    return Ok(());
                }
                tracing::warn!(server = %server, reason = %message, "session ended; reconnecting");
            }
        }
        let jitter = rand::rng().random_range(0..=pause.as_millis() as u64 / 2);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause + Duration::from_millis(jitter)) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The last word from a confirmed leader, and the TTL that leader announced. `last` is when
/// the agent *sent* what the leader answered (the heartbeat it acknowledged, the session
/// request it welcomed): the leader's confirmation came after it, so the agent's TTL never
/// ends later than the leader's view of it.
#[derive(Clone, Copy)]
struct Contact {
    last: Instant,
    ttl: Option<Duration>,
}

/// Heartbeats sent and not yet acknowledged, by their `sent_ms`, with when they were sent.
/// The leader skips acknowledging when it cannot confirm its leadership, so some never are.
#[derive(Default)]
struct Beats(std::collections::VecDeque<(u64, Instant)>);

impl Beats {
    /// At most this many are remembered; older ones can no longer move the contact forward.
    const KEPT: usize = 32;

    fn sent(&mut self, sent_ms: u64, at: Instant) {
        if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back((sent_ms, at));
    }

    /// When the heartbeat `sent_ms` names was sent, forgetting it and every older one.
    fn acked(&mut self, sent_ms: u64) -> Option<Instant> {
        let position = self.0.iter().position(|(ms, _)| *ms == sent_ms)?;
        let (_, at) = self.0[position];
        self.0.drain(..=position);
        Some(at)
    }
}

/// What a session works with.
struct Link<'a> {
    leases: &'a Leases,
    runner: &'a Arc<Runner>,
    outbox: &'a mut OutboxReceiver,
    unacked: &'a mut Unacked,
    pacer: &'a mut Pacer,
}

/// How long opening a session may take, from the call to the welcome: half the TTL the last
/// leader announced, within [`OPEN_TIMEOUT_MIN`] and [`OPEN_TIMEOUT_MAX`]. A live leader
/// answers within milliseconds; a server that hangs (stopped, or its machine stalled) still
/// accepts the connection, and without a bound held the agent until HTTP/2 keep-alive gave up
/// (10 s and more, longer than a TTL) while another server led.
fn open_timeout(ttl: Option<Duration>) -> Duration {
    ttl.map_or(OPEN_TIMEOUT_MIN, |ttl| (ttl / 2).clamp(OPEN_TIMEOUT_MIN, OPEN_TIMEOUT_MAX))
}

const OPEN_TIMEOUT_MIN: Duration = Duration::from_secs(3);
const OPEN_TIMEOUT_MAX: Duration = Duration::from_secs(10);

/// How many writes may wait for the leader's acknowledgement; the leader's queue per session
/// holds as many, so its reading side never blocks behind writes.
const WINDOW: usize = 1024;

/// How many bytes of log chunks may wait for the leader's acknowledgement (a chunk is up to
/// about 650 KiB: a thousand of them would be far more than a session should hold, here or
/// in the leader's queue).
const WINDOW_BYTES: usize = 32 << 20;

/// The writes sent (run statuses, log chunks, cron fires) that the leader has not yet
/// acknowledged, numbered in sending order. A session that breaks may lose what was in flight,
/// so a new session sends these again first; the leader applies them idempotently (a status is
/// the whole state, a log chunk is keyed by its first line, a cron fire by its time).
#[derive(Default)]
struct Unacked {
    next_seq: u64,
    writes: std::collections::VecDeque<(u64, pb::AgentMessage)>,
    /// Bytes of the log chunks among `writes`.
    chunk_bytes: usize,
    /// Who waits to hear that a write among `writes` was applied, by its number.
    waiting: std::collections::VecDeque<(u64, oneshot::Sender<()>)>,
}

fn chunk_bytes(message: &pb::AgentMessage) -> usize {
    match &message.body {
        Some(agent_message::Body::Logs(batch)) => batch.chunk_json.len(),
        _ => 0,
    }
}

impl Unacked {
    /// Whether another write may be sent before acknowledgements come: fewer than [`WINDOW`]
    /// writes and [`WINDOW_BYTES`] of chunks wait (one chunk may go beyond the bytes).
    fn has_room(&self) -> bool {
        self.writes.len() < WINDOW && self.chunk_bytes < WINDOW_BYTES
    }

    /// Numbers `message` and keeps it (and whoever waits for it) until acknowledged.
    fn add(&mut self, outgoing: Outgoing) -> pb::AgentMessage {
        let Outgoing { mut message, applied } = outgoing;
        self.next_seq += 1;
        let seq = self.next_seq;
        if let Some(applied) = applied {
            self.waiting.push_back((seq, applied));
        }
        match &mut message.body {
            Some(agent_message::Body::RunUpdate(update)) => update.seq = seq,
            Some(agent_message::Body::Logs(batch)) => batch.seq = seq,
            Some(agent_message::Body::CronFire(fire)) => fire.seq = seq,
            _ => {}
        }
        self.chunk_bytes += chunk_bytes(&message);
        self.writes.push_back((seq, message.clone()));
        message
    }

    /// Forgets every write up to `seq`, telling whoever waited for one that it was applied.
    fn acked(&mut self, seq: u64) {
        while self.writes.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, gone)) = self.writes.pop_front() {
                self.chunk_bytes -= chunk_bytes(&gone);
            }
        }
        while self.waiting.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, applied)) = self.waiting.pop_front() {
                // A waiter that gave up (its run stopped) no longer listens.
                let _ = applied.send(());
            }
        }
    }
}

async fn once(
    server: &ServerAddress,
    config: &AgentConfig,
    credential: &Credential,
    link: Link<'_>,
    stop: &CancellationToken,
    contact: &watch::Sender<Contact>,
) -> End {
    let Link { leases, runner, outbox, unacked, pacer } = link;
    // The configured addresses were checked at start-up, so only a leader hint can be bad
    // here: a server's word, not a refusal of this agent. Try the servers again.
    let channel = match channel(server, &config.tls) {
        Ok(channel) => channel,
        Err(e) => return End::Retry(format!("cannot connect to {server}: {}", crate::connect::describe(&e))),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let hello = pb::Hello {
        labels: config.labels().into_iter().collect(),
        capacity: config.capacity,
        held: leases.list().into_iter().map(|(pipeline, epoch)| pb::HeldLease { pipeline, epoch }).collect(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    if tx.send(pb::AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await.is_err() {
        return End::Retry("could not queue the hello".into());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    match format!("Bearer {}", credential.credential).parse() {
        Ok(value) => {
            request.metadata_mut().insert("authorization", value);
        }
        Err(_) => return End::Fatal("the stored credential is not valid text".into()),
    }
    let asked_at = Instant::now();
    let open_within = open_timeout(contact.borrow().ttl);
    let opened_by = asked_at + open_within;
    let answer = match tokio::time::timeout_at(opened_by, AgentServiceClient::new(channel).session(request)).await {
        Ok(answer) => answer,
        Err(_) => return End::Retry(format!("{server} did not answer within {} ms", open_within.as_millis())),
    };
    let mut inbound = match answer {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let leader =
                status.metadata().get(xene_proto::LEADER_HINT_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
            return match (status.code(), leader.map(|l| l.trim().to_string())) {
                (tonic::Code::Unavailable, Some(leader)) if leader != server.authority() => {
                    // A server names its peers by HOST:PORT; they speak what it speaks.
                    match ServerAddress::parse(&leader).map(|hint| hint.with_tls(server.is_tls())) {
                        Ok(leader) => End::Redirect(leader),
                        Err(e) => End::Retry(format!("{}; the leader hint it gave is unusable: {e}", status.message())),
                    }
                }
                (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied, _) => {
                    End::Fatal(status.message().to_string())
                }
                _ => End::Retry(crate::connect::describe_status(&status)),
            };
        }
    };
    // The welcome says how often to heartbeat and how long silence means a broken link.
    let (heartbeat, ttl) = match tokio::time::timeout_at(opened_by, inbound.next()).await {
        Ok(Some(Ok(pb::ServerMessage { body: Some(server_message::Body::Welcome(welcome)) }))) => {
            tracing::info!(server = %server, agent = %welcome.agent, "session open");
            (Duration::from_millis(welcome.heartbeat_ms.max(50)), Duration::from_millis(welcome.ttl_ms.max(200)))
        }
        Ok(Some(Err(status))) => return End::Retry(status.message().to_string()),
        _ => return End::Retry("no welcome from the server".into()),
    };
    // A server welcomes an agent only while a quorum confirms it leads.
    contact.send_replace(Contact { last: asked_at, ttl: Some(ttl) });
    if !unacked.writes.is_empty() {
        tracing::info!(writes = unacked.writes.len(), "sending the writes the last session did not confirm");
    }
    for (_, message) in unacked.writes.iter() {
        if tx.send(message.clone()).await.is_err() {
            return End::Retry("the session's send side closed".into());
        }
    }
    // While the agent had no session its runs read `Unknown` on the servers: each running
    // run's status goes out again, whether or not it changed meanwhile.
    runner.report_all();
    let mut ticker = tokio::time::interval(heartbeat);
    let mut beats = Beats::default();
    loop {
        // Held writes leave first, as the log pace lets them.
        if unacked.has_room() {
            if let Some(message) = pacer.release(std::time::Instant::now()) {
                if tx.send(unacked.add(message)).await.is_err() {
                    return End::Retry("the session's send side closed".into());
                }
                continue;
            }
        }
        let held = pacer.wait(std::time::Instant::now());
        tokio::select! {
            _ = stop.cancelled() => return End::Retry("stopping".into()),
            _ = tokio::time::sleep(held.unwrap_or_default()), if held.is_some_and(|wait| !wait.is_zero()) => {}
            Some(message) = outbox.recv(), if unacked.has_room() => {
                let Some(message) = pacer.admit(message, std::time::Instant::now()) else { continue };
                let message = unacked.add(message);
                if tx.send(message).await.is_err() {
                    return End::Retry("the session's send side closed".into());
                }
            }
            _ = ticker.tick() => {
                // Half a TTL without an acknowledgement: this server may lead no more (cut off
                // from the others, it cannot confirm it does). Look for the leader elsewhere
                // while the other half runs; the fence drops the leases when it is over.
                let silent = contact.borrow().last.elapsed();
                if silent > ttl / 2 {
                    return End::Retry(format!(
                        "no heartbeat acknowledged for {} ms; looking for the leader elsewhere",
                        silent.as_millis()
                    ));
                }
                let sent_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                beats.sent(sent_ms, Instant::now());
                if tx.send(pb::AgentMessage { body: Some(agent_message::Body::Heartbeat(pb::Heartbeat { sent_ms })) }).await.is_err() {
                    return End::Retry("the session's send side closed".into());
                }
            }
            message = inbound.next() => {
                match message {
                    Some(Ok(pb::ServerMessage { body: Some(body) })) => match body {
                        server_message::Body::Grant(grant) => {
                            let lease = crate::leases::HeldLease {
                                epoch: grant.epoch,
                                workflow_json: grant.workflow_json,
                                workflow_revision: grant.workflow_revision,
                                cron_since_ms: grant.cron_since_ms.into_iter().collect(),
                            };
                            match leases.grant(&grant.pipeline, lease) {
                                Granted::New | Granted::Again => {
                                    tracing::info!(pipeline = %grant.pipeline, epoch = grant.epoch, "holding pipeline")
                                }
                                Granted::WorkflowChanged => tracing::info!(
                                    pipeline = %grant.pipeline,
                                    epoch = grant.epoch,
                                    revision = grant.workflow_revision,
                                    "the workflow was applied again; new runs use it"
                                ),
                                Granted::Stale => {}
                            }
                        }
                        server_message::Body::Revoke(revoke) => {
                            if leases.revoke(&revoke.pipeline, revoke.epoch) {
                                tracing::info!(pipeline = %revoke.pipeline, epoch = revoke.epoch, reason = %revoke.reason, "dropped pipeline");
                                runner.stop_pipeline(&revoke.pipeline);
                            }
                        }
                        server_message::Body::Start(start) => {
                            runner.start(&start.run_json, start.epoch, start.secrets.into_iter().collect(), start.payload)
                        }
                        server_message::Body::Cancel(cancel) => {
                            tracing::info!(run = %cancel.run, "cancel requested");
                            runner.stop(&cancel.run);
                        }
                        server_message::Body::Fenced(fenced) => {
                            tracing::warn!(run = %fenced.run, epoch = fenced.epoch, reason = %fenced.reason, "a write was fenced off; stopping the run");
                            runner.stop_at(&fenced.run, fenced.epoch);
                        }
                        server_message::Body::Written(ack) => unacked.acked(ack.seq),
                        server_message::Body::Ack(ack) => {
                            if let Some(sent) = beats.acked(ack.sent_ms) {
                                contact.send_if_modified(|c| {
                                    let later = sent > c.last;
                                    c.last = c.last.max(sent);
                                    later
                                });
                            }
                        }
                        server_message::Body::Welcome(_) => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(status)) => return End::Retry(status.message().to_string()),
                    None => return End::Retry("the server closed the session".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(bytes: usize) -> pb::AgentMessage {
        let batch = pb::LogBatch { run: "r".into(), epoch: 1, chunk_json: "x".repeat(bytes), first_seq: 0, seq: 0 };
        pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) }
    }

    #[test]
    fn opening_a_session_may_take_half_a_ttl_within_bounds() {
        assert_eq!(open_timeout(None), Duration::from_secs(3), "before any welcome");
        assert_eq!(open_timeout(Some(Duration::from_secs(2))), Duration::from_secs(3));
        assert_eq!(open_timeout(Some(Duration::from_secs(15))), Duration::from_millis(7_500));
        assert_eq!(open_timeout(Some(Duration::from_secs(60))), Duration::from_secs(10));
    }

    #[test]
    fn the_window_holds_a_bounded_number_of_writes_and_bytes_of_chunks() {
        let mut unacked = Unacked::default();
        let big = 600 << 10;
        let mut sent = 0;
        while unacked.has_room() {
            unacked.add(chunk(big).into());
            sent += 1;
        }
        assert_eq!(sent, WINDOW_BYTES.div_ceil(big), "chunks up to the bytes, and the one that crossed them");
        unacked.acked(1);
        assert!(unacked.has_room(), "an acknowledgement makes room");
        unacked.acked(unacked.next_seq);
        assert_eq!((unacked.writes.len(), unacked.chunk_bytes), (0, 0));
        let status = pb::AgentMessage { body: Some(agent_message::Body::RunUpdate(pb::RunUpdate::default())) };
        for _ in 0..WINDOW {
            assert!(unacked.has_room());
            unacked.add(status.clone().into());
        }
        assert!(!unacked.has_room(), "at most {WINDOW} writes of any size");
    }

    #[test]
    fn a_writer_hears_its_write_was_applied_only_from_an_ack_that_covers_it() {
        let mut unacked = Unacked::default();
        let status = || pb::AgentMessage { body: Some(agent_message::Body::RunUpdate(pb::RunUpdate::default())) };
        unacked.add(status().into());
        let (applied, mut heard) = oneshot::channel();
        let sent = unacked.add(Outgoing { message: status(), applied: Some(applied) });
        let Some(agent_message::Body::RunUpdate(update)) = sent.body else { panic!("a status: {sent:?}") };
        assert_eq!(update.seq, 2);
        unacked.add(chunk(10).into());
        unacked.acked(1);
        assert_eq!(heard.try_recv(), Err(oneshot::error::TryRecvError::Empty), "an ack of an earlier write");
        // A new session sends the unacknowledged writes again; the waiter stays.
        assert_eq!(unacked.writes.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [2, 3]);
        unacked.acked(3);
        assert_eq!(heard.try_recv(), Ok(()), "the leader's batch ack covers it");
        assert!(unacked.waiting.is_empty());
    }

    #[test]
    fn an_ack_moves_the_contact_to_when_its_heartbeat_left() {
        let start = Instant::now();
        let mut beats = Beats::default();
        beats.sent(1_000, start);
        beats.sent(1_500, start + Duration::from_millis(500));
        beats.sent(2_000, start + Duration::from_secs(1));
        // An ack for a heartbeat never sent (or long forgotten) tells nothing.
        assert_eq!(beats.acked(999), None);
        assert_eq!(beats.acked(1_500), Some(start + Duration::from_millis(500)));
        // The older heartbeat went with it: its ack, arriving late, cannot move the contact.
        assert_eq!(beats.acked(1_000), None);
        assert_eq!(beats.acked(2_000), Some(start + Duration::from_secs(1)));
        assert_eq!(beats.acked(2_000), None, "an ack counts once");
    }

    #[test]
    fn only_the_latest_heartbeats_are_remembered() {
        let start = Instant::now();
        let mut beats = Beats::default();
        for i in 0..(Beats::KEPT as u64 + 8) {
            beats.sent(i, start + Duration::from_millis(i));
        }
        assert_eq!(beats.acked(7), None, "forgotten");
        assert_eq!(beats.acked(8), Some(start + Duration::from_millis(8)));
    }
}
