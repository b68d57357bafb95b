//! `AgentService` (DESIGN §7.1, §7.2): agents exchange a join token for their identity and
//! credential once, then hold one session with the leader; operators list agents.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use xene_proto as pb;
use xene_proto::agent_service_server::AgentService;
use xene_proto::{agent_message, server_message};
use xene_raft_store::{Compare, Op, Rejection, Txn};

use crate::agents::{AgentHub, AgentRecord, AgentState, LeaseRecord};
use crate::auth::{self, Role, TokenCache, TokenRecord};
use crate::error::ServerError;
use crate::keys;
use crate::node::{now_ms, ClusterNode};
use crate::runs::{self, Refused};

/// The `AgentService` implementation.
pub struct AgentApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
    hub: Arc<AgentHub>,
    stop: CancellationToken,
}

impl AgentApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache, hub: Arc<AgentHub>, stop: CancellationToken) -> Self {
        AgentApi { node, tokens, hub, stop }
    }
}

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(e.to_string())
}

/// How long after a join the same join token may repeat it: a join whose answer was lost (a
/// timeout during an election) is retried by the agent, which would otherwise be refused for
/// ever as "already joined", its token spent.
pub const REJOIN_WITHIN: Duration = Duration::from_secs(600);

/// Whether `record`'s join may be repeated with token `token_id` at `now_ms`: the same token,
/// recently, by an agent that has never been up since (its credential never reached it).
fn may_rejoin(record: &AgentRecord, token_id: &str, now_ms: u64) -> bool {
    !record.joined_with.is_empty()
        && record.joined_with == token_id
        && record.state == AgentState::Down
        && now_ms.saturating_sub(record.joined_ms) < REJOIN_WITHIN.as_millis() as u64
}

impl AgentApi {
    /// Repeats `name`'s join (its record read at `revision`): a new credential replaces the old
    /// one, the token's uses are left as they are. `None` when something changed meanwhile.
    async fn rejoin(
        &self,
        name: &str,
        mut record: AgentRecord,
        revision: u64,
        token_id: &str,
    ) -> Result<Option<String>, ServerError> {
        if self.hub.views().iter().any(|s| s.name == name && s.alive) {
            return Err(ServerError::AlreadyExists(format!(
                "an agent named {name:?} is connected; pick another --name for this one"
            )));
        }
        let token_key = keys::token(token_id);
        let stored = self.node.reader.range(token_key.clone().into_bytes(), false, 0).await?;
        let Some(kv) = stored.kvs.into_iter().next() else {
            return Err(ServerError::Unauthenticated("invalid token: check --token".into()));
        };
        let token: TokenRecord = serde_json::from_slice(&kv.value).map_err(internal)?;
        // Used up is expected: this join used it. Revoked or expired is not.
        let unspent = TokenRecord { uses_left: None, ..token };
        if let Some(reason) = unspent.unusable(now_ms()) {
            return Err(ServerError::Unauthenticated(reason));
        }
        let mut credential = auth::mint(Role::Agent, &format!("session credential of agent {name}"), now_ms());
        credential.record.agent = Some(name.to_string());
        let old = std::mem::replace(&mut record.credential, credential.record.id.clone());
        let agent_key = keys::agent(name);
        let response = self
            .node
            .txn(Txn {
                compare: vec![
                    Compare::mod_revision(agent_key.clone(), revision),
                    Compare::mod_revision(token_key, kv.mod_revision),
                ],
                success: vec![
                    Op::Delete { key: keys::token(&old).into_bytes() },
                    Op::Put {
                        key: keys::token(&credential.record.id).into_bytes(),
                        value: serde_json::to_vec(&credential.record).map_err(internal)?,
                    },
                    Op::Put { key: agent_key.into_bytes(), value: serde_json::to_vec(&record).map_err(internal)? },
                ],
                failure: vec![],
            })
            .await?;
        Ok(response.succeeded.then_some(credential.text))
    }
}

/// Checks the labels an agent brings (to a join or in a session's hello) against the rules
/// of manifest labels: at most [`MAX_LABELS`](xene_model::limits::MAX_LABELS), keys and
/// values as Kubernetes allows them (a name or value of at most 63 characters, a key's DNS
/// prefix of at most 253). They are copied into the agent's record, and a record too large
/// for the store would fail every scheduling pass; a label no `agentSelector` could name
/// would match nothing anyway.
fn check_labels<'a>(
    agent: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ServerError> {
    const FIX: &str = "fix the agent's --labels (XENE_AGENT_LABELS) and start it again";
    // A DNS prefix, "/", and a name; a value is at most a name.
    const MAX_KEY: usize = 253 + 1 + MAX_VALUE;
    const MAX_VALUE: usize = xene_model::limits::MAX_NAME_LEN;
    let max = xene_model::limits::MAX_LABELS;
    if labels.len() > max {
        return Err(ServerError::InvalidArgument(format!(
            "agent {agent:?}: {} labels, at most {max} are allowed; {FIX}",
            labels.len()
        )));
    }
    // In key order, so the same labels always get the same answer.
    let labels: BTreeMap<&String, &String> = labels.collect();
    for (key, value) in labels {
        // Lengths first: the rules' messages quote the label, and a quote must stay short.
        let problem = if key.len() > MAX_KEY {
            let start: String = key.chars().take(MAX_VALUE).collect();
            Some(format!("label key {start:?}... is {} bytes long, at most {MAX_KEY} are allowed", key.len()))
        } else if let Some(problem) = xene_model::names::label_key_problem(key) {
            Some(problem)
        } else if value.len() > MAX_VALUE {
            Some(format!("label {key:?}: the value is {} bytes long, at most {MAX_VALUE} are allowed", value.len()))
        } else {
            xene_model::names::label_value_problem(value).map(|problem| format!("label {key:?}: {problem}"))
        };
        if let Some(problem) = problem {
            return Err(ServerError::InvalidArgument(format!("agent {agent:?}: {problem}; {FIX}")));
        }
    }
    Ok(())
}

/// Tells the agent when one of its writes was fenced off; returns false when the session is gone.
/// Tells the agent about a fenced write (it stops that execution); other refusals are only
/// logged: the write is acknowledged anyway, as sending it again would not help.
async fn answer_refusal(tx: &crate::agents::SessionSender, run: &str, epoch: u64, result: Result<(), Refused>) {
    match result {
        Ok(()) => {}
        Err(Refused::StaleEpoch(reason)) => {
            tracing::warn!(run, epoch, %reason, "fenced off a stale agent write");
            let fenced = pb::Fenced { run: run.into(), epoch, reason };
            let _ = tx.send(Ok(pb::ServerMessage { body: Some(server_message::Body::Fenced(fenced)) })).await;
        }
        Err(Refused::Other(e)) => tracing::warn!(run, error = %e, "an agent write was refused"),
    }
}

/// How many writes an agent may send ahead of their acknowledgements (the agent's window).
const WRITE_WINDOW: usize = 1024;

/// How long a write that fails for a passing reason (a busy or changing leader) is retried.
const WRITE_RETRY: Duration = Duration::from_secs(10);

/// How many queued writes of one agent are applied together at most.
const WRITE_BATCH: usize = 256;

/// Which pipeline each run belongs to, read once per run.
type Pipelines = std::sync::Mutex<std::collections::HashMap<String, (String, String)>>;

/// What a write is about: writes about the same subject are applied in order.
fn write_subject(body: &agent_message::Body) -> String {
    match body {
        agent_message::Body::RunUpdate(update) => update.run.clone(),
        agent_message::Body::Logs(batch) => batch.run.clone(),
        agent_message::Body::CronFire(fire) => format!("cron {} {}", fire.pipeline, fire.trigger),
        _ => String::new(),
    }
}

/// Applies one write, trying again while it fails for a passing reason and this server leads;
/// a fenced write is answered. The error is one that outlived the retries: the session must
/// end, so that the agent sends the write again to the next leader.
/// Drops every status update of a run's writes that a later one in the same batch replaces:
/// a status is the run's whole state, so only the last counts, and a run of 1,000 tasks that
/// reported faster than the leader applied makes one write per batch instead of one per
/// report (PERF W5). Log chunks stay, in order, before the status that followed them.
fn latest_status_only(writes: &mut Vec<agent_message::Body>) {
    let Some(last) = writes.iter().rposition(|w| matches!(w, agent_message::Body::RunUpdate(_))) else { return };
    let mut index = 0;
    writes.retain(|w| {
        let keep = index == last || !matches!(w, agent_message::Body::RunUpdate(_));
        index += 1;
        keep
    });
}

async fn apply_with_retry(
    node: &crate::node::ClusterNode,
    name: &str,
    tx: &crate::agents::SessionSender,
    body: &agent_message::Body,
    pipelines: &Pipelines,
) -> Result<(), ServerError> {
    let deadline = tokio::time::Instant::now() + WRITE_RETRY;
    let mut pause = Duration::from_millis(50);
    loop {
        let (run, epoch, result) = apply_write(node, name, body, pipelines).await;
        match result {
            // A proposal of this server's that waited past the deduplication window may or may
            // not have been applied: every agent write is compared or idempotent, so it is made
            // again (under a new request ID), never acknowledged unapplied.
            Err(Refused::Other(e))
                if e.is_retryable() || matches!(e, ServerError::Rejected(Rejection::RequestTooOld { .. })) =>
            {
                if !node.is_leader() || tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            result => {
                answer_refusal(tx, &run, epoch, result).await;
                return Ok(());
            }
        }
    }
}

/// The sequence number an agent gave a write.
fn write_seq(body: &agent_message::Body) -> u64 {
    match body {
        agent_message::Body::RunUpdate(update) => update.seq,
        agent_message::Body::Logs(batch) => batch.seq,
        agent_message::Body::CronFire(fire) => fire.seq,
        _ => 0,
    }
}

/// Applies one write of agent `name`: the run it is about, the epoch it was sent under, and
/// what happened.
async fn apply_write(
    node: &crate::node::ClusterNode,
    name: &str,
    body: &agent_message::Body,
    pipelines: &Pipelines,
) -> (String, u64, Result<(), Refused>) {
    match body {
        agent_message::Body::RunUpdate(update) => {
            let result = match serde_json::from_str::<xene_model::RunObject>(&update.run_json) {
                Ok(run) => runs::agent_update(node, name, update.epoch, run).await,
                Err(e) => Err(Refused::Other(ServerError::InvalidArgument(format!("run update: {e}")))),
            };
            (update.run.clone(), update.epoch, result)
        }
        agent_message::Body::Logs(batch) => {
            let known = pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&batch.run).cloned();
            let pipeline = match known {
                Some(found) => Ok(found),
                None => runs::get(node, &batch.run).await.map(|stored| {
                    let found = (stored.run.spec.workflow, stored.run.spec.pipeline);
                    pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(batch.run.clone(), found.clone());
                    found
                }),
            };
            let result = match (pipeline, serde_json::from_str::<xene_model::LogChunkView>(&batch.chunk_json)) {
                (Ok(_), Ok(chunk)) if chunk.run != batch.run => Err(Refused::Other(ServerError::InvalidArgument(
                    format!("log batch of run {} holds a chunk of run {}", batch.run, chunk.run),
                ))),
                (Ok((workflow, pipeline)), Ok(chunk)) => {
                    let (epoch, first) = (batch.epoch, batch.first_seq);
                    runs::agent_logs(node, name, (&workflow, &pipeline), epoch, first, &chunk, &batch.chunk_json).await
                }
                (Err(e), _) => Err(Refused::Other(e)),
                (_, Err(e)) => Err(Refused::Other(ServerError::InvalidArgument(format!("log batch: {e}")))),
            };
            (batch.run.clone(), batch.epoch, result)
        }
        agent_message::Body::CronFire(fire) => (String::new(), fire.epoch, cron_fire(node, name, fire).await),
        _ => (String::new(), 0, Ok(())),
    }
}

/// Takes a cron fire of the agent's; a refused one needs no answer (a duplicate made its run
/// already; a stale holder is told by the lease's revocation). Errors are the ones worth
/// another try.
async fn cron_fire(node: &crate::node::ClusterNode, agent: &str, fire: &pb::CronFire) -> Result<(), Refused> {
    let Some(scheduled) = chrono::DateTime::from_timestamp_millis(fire.scheduled_ms) else {
        tracing::warn!(agent, pipeline = %fire.pipeline, "cron fire with an impossible time ignored");
        return Ok(());
    };
    match crate::triggers::cron::fire(node, agent, fire.epoch, &fire.pipeline, &fire.trigger, scheduled).await {
        Ok(Some(run)) => {
            tracing::info!(agent, pipeline = %fire.pipeline, trigger = %fire.trigger, %scheduled, %run, "cron fire")
        }
        Ok(None) => {
            tracing::debug!(agent, pipeline = %fire.pipeline, trigger = %fire.trigger, %scheduled, "cron fire already made its run")
        }
        Err(Refused::StaleEpoch(reason)) => {
            tracing::info!(agent, pipeline = %fire.pipeline, %reason, "cron fire of a stale lease refused")
        }
        Err(Refused::Other(e)) => return Err(Refused::Other(e)),
    }
    Ok(())
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    #[tracing::instrument(skip_all, fields(node = self.node.id, agent = %request.get_ref().name))]
    async fn join(&self, request: Request<pb::JoinAgentRequest>) -> Result<Response<pb::JoinAgentResponse>, Status> {
        let join = request.into_inner();
        let presented = self.tokens.record_or_load(&self.node, &join.join_token).await?;
        if presented.role != Role::Join {
            return Err(ServerError::PermissionDenied(format!(
                "token {} is not an agent join token; create one with: xenectl token create --kind agent",
                presented.id
            ))
            .into());
        }
        if let Some(message) = xene_model::names::name_message("agent", &join.name) {
            return Err(ServerError::InvalidArgument(message).into());
        }
        check_labels(&join.name, join.labels.iter())?;
        let token_key = keys::token(&presented.id);
        let agent_key = keys::agent(&join.name);
        for _ in 0..5 {
            self.node.read_barrier().await?;
            let existing =
                self.node.reader.range(agent_key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
            if let Some(kv) = existing.kvs.into_iter().next() {
                let record: AgentRecord = serde_json::from_slice(&kv.value).map_err(internal)?;
                if !may_rejoin(&record, &presented.id, now_ms()) {
                    return Err(ServerError::AlreadyExists(format!(
                        "an agent named {:?} already joined; restart it with its --data-dir (which holds its credential), or pick another --name",
                        join.name
                    ))
                    .into());
                }
                match self.rejoin(&join.name, record, kv.mod_revision, &presented.id).await? {
                    Some(credential) => {
                        tracing::info!(agent = %join.name, "agent joined again with the same token; its old credential is revoked");
                        return Ok(Response::new(pb::JoinAgentResponse { agent: join.name, credential }));
                    }
                    None => continue,
                }
            }
            let stored =
                self.node.reader.range(token_key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
            let Some(kv) = stored.kvs.into_iter().next() else {
                return Err(ServerError::Unauthenticated("invalid token: check --token".into()).into());
            };
            let mut record: TokenRecord = serde_json::from_slice(&kv.value).map_err(internal)?;
            if let Some(reason) = record.unusable(now_ms()) {
                return Err(ServerError::Unauthenticated(reason).into());
            }
            // A token with limited uses is rewritten with one use less; one without a limit is
            // only compared, so agents joining at once with it do not refuse each other.
            let limited = record.uses_left.is_some();
            if let Some(uses) = record.uses_left.as_mut() {
                *uses -= 1;
            }
            let mut credential =
                auth::mint(Role::Agent, &format!("session credential of agent {}", join.name), now_ms());
            credential.record.agent = Some(join.name.clone());
            let agent = AgentRecord {
                name: join.name.clone(),
                labels: join.labels.clone().into_iter().collect(),
                capacity: if join.capacity == 0 { 16 } else { join.capacity },
                state: AgentState::Down,
                joined_ms: now_ms(),
                credential: credential.record.id.clone(),
                joined_with: presented.id.clone(),
            };
            let mut success = Vec::new();
            if limited {
                success.push(Op::Put {
                    key: token_key.clone().into_bytes(),
                    value: serde_json::to_vec(&record).map_err(internal)?,
                });
            }
            success.push(Op::Put {
                key: keys::token(&credential.record.id).into_bytes(),
                value: serde_json::to_vec(&credential.record).map_err(internal)?,
            });
            success.push(Op::Put {
                key: agent_key.clone().into_bytes(),
                value: serde_json::to_vec(&agent).map_err(internal)?,
            });
            let response = self
                .node
                .txn(Txn {
                    compare: vec![
                        Compare::mod_revision(token_key.clone(), kv.mod_revision),
                        Compare::absent(agent_key.clone()),
                    ],
                    success,
                    failure: vec![Op::Get { key: agent_key.clone().into_bytes(), prefix: false, limit: 0 }],
                })
                .await?;
            if response.succeeded {
                tracing::info!(agent = %join.name, "agent joined");
                return Ok(Response::new(pb::JoinAgentResponse { agent: join.name, credential: credential.text }));
            }
            // Another join of this name came first, or the token changed: look again.
        }
        Err(ServerError::unavailable("the join token kept changing; retry").into())
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = self.tokens.authorize(&self.node, request.metadata(), Role::Agent).await?;
        let name = caller.agent.ok_or_else(|| {
            ServerError::PermissionDenied("a session needs an agent credential, not an admin token".into())
        })?;
        if !self.node.is_leader() {
            return Err(ServerError::Unavailable {
                message: "agent sessions are held by the leader; reconnect there".into(),
                leader: self.node.leader().map(|(_, info)| info.grpc_addr),
            }
            .into());
        }
        // The welcome counts as the leader's word for the agent (its TTL restarts from when
        // it asked), so a leader that cannot show a quorum's recent acknowledgement says no.
        if !self.node.leadership_confirmed() {
            return Err(ServerError::unavailable(
                "this server has not heard from a quorum of the cluster lately; try another server",
            )
            .into());
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?;
        let hello = match first {
            Some(Ok(pb::AgentMessage { body: Some(agent_message::Body::Hello(hello)) })) => hello,
            Some(Err(status)) => return Err(status),
            _ => return Err(ServerError::InvalidArgument("a session starts with a hello".into()).into()),
        };
        check_labels(&name, hello.labels.iter())?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let ttl = self.hub.ttl;
        let welcome = pb::Welcome {
            agent: name.clone(),
            ttl_ms: ttl.as_millis() as u64,
            heartbeat_ms: (ttl.as_millis() as u64 / 4).max(50),
        };
        let _ = tx.try_send(Ok(pb::ServerMessage { body: Some(server_message::Body::Welcome(welcome)) }));
        let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
        let capacity = if hello.capacity == 0 { 16 } else { hello.capacity };
        let (serial, session_stop) = self.hub.register(&name, tx.clone(), labels, capacity, now_ms());
        tracing::info!(agent = %name, held = hello.held.len(), "agent session opened");
        let hub = self.hub.clone();
        let stop = self.stop.clone();
        // The agent's writes (run statuses, log chunks, cron fires) go through Raft one after
        // another in their own task, so heartbeats and their acks never wait behind a backlog of
        // writes. The agent sends at most `WRITE_WINDOW` writes ahead of their acks, so this
        // queue never fills and the reading side never blocks.
        let (writes, mut pending) = tokio::sync::mpsc::channel::<agent_message::Body>(WRITE_WINDOW);
        {
            let node = self.node.clone();
            let tx = tx.clone();
            let name = name.clone();
            let session_stop = session_stop.clone();
            tokio::spawn(async move {
                let pipelines = Pipelines::default();
                while let Some(first) = pending.recv().await {
                    // Whatever has queued up goes in one batch: the writes of different runs
                    // are applied concurrently (Raft commits them together), those of one run
                    // in order. The batch is acknowledged once all of it is applied.
                    let mut batch = vec![first];
                    while batch.len() < WRITE_BATCH {
                        match pending.try_recv() {
                            Ok(body) => batch.push(body),
                            Err(_) => break,
                        }
                    }
                    let seq = batch.iter().map(write_seq).max().unwrap_or(0);
                    let mut by_subject: BTreeMap<String, Vec<agent_message::Body>> = BTreeMap::new();
                    for body in batch {
                        by_subject.entry(write_subject(&body)).or_default().push(body);
                    }
                    for writes in by_subject.values_mut() {
                        latest_status_only(writes);
                    }
                    let applied = futures::future::join_all(by_subject.into_values().map(|writes| {
                        let (node, name, tx, pipelines) = (&node, &name, &tx, &pipelines);
                        async move {
                            for body in writes {
                                apply_with_retry(node, name, tx, &body, pipelines).await?;
                            }
                            Ok::<(), ServerError>(())
                        }
                    }))
                    .await;
                    if let Some(Err(e)) = applied.into_iter().find(Result::is_err) {
                        tracing::warn!(agent = %name, error = %e, "an agent write could not be applied; ending the session so the agent sends it again");
                        session_stop.cancel();
                        break;
                    }
                    let ack = pb::ServerMessage { body: Some(server_message::Body::Written(pb::WriteAck { seq })) };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = session_stop.cancelled() => break,
                    _ = tx.closed() => break,
                    message = inbound.next() => message,
                };
                match message {
                    Some(Ok(pb::AgentMessage { body: Some(agent_message::Body::Heartbeat(beat)) })) => {
                        if !node.is_leader() {
                            // Acknowledging would tell the agent it still has a leader.
                            break;
                        }
                        hub.heartbeat(&name, serial, now_ms());
                        if !node.leadership_confirmed() {
                            // Perhaps cut off from the others, who may have elected a new
                            // leader: no acknowledgement, so the agent's TTL runs on and it
                            // looks for the leader elsewhere (see `crate::leadership`).
                            tracing::debug!(agent = %name, "heartbeat not acknowledged: leadership not confirmed lately");
                            continue;
                        }
                        let ack = pb::ServerMessage {
                            body: Some(server_message::Body::Ack(pb::HeartbeatAck { sent_ms: beat.sent_ms })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(pb::AgentMessage {
                        body:
                            Some(
                                body @ (agent_message::Body::RunUpdate(_)
                                | agent_message::Body::Logs(_)
                                | agent_message::Body::CronFire(_)),
                            ),
                    })) => {
                        hub.heartbeat(&name, serial, now_ms());
                        if writes.send(body).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => hub.heartbeat(&name, serial, now_ms()),
                    Some(Err(_)) | None => break,
                }
            }
            tracing::info!(agent = %name, "agent session closed");
            hub.unregister(&name, serial);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list(&self, request: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        self.node.read_barrier().await?;
        let agents =
            self.node.reader.range(keys::AGENTS.as_bytes().to_vec(), true, 0).await.map_err(ServerError::from)?;
        let leases =
            self.node.reader.range(keys::LEASES.as_bytes().to_vec(), true, 0).await.map_err(ServerError::from)?;
        let leases: Vec<LeaseRecord> =
            leases.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        let sessions: BTreeMap<String, crate::agents::SessionView> =
            self.hub.views().into_iter().map(|s| (s.name.clone(), s)).collect();
        let agents = agents
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<AgentRecord>(&kv.value).ok())
            .map(|agent| {
                let session = sessions.get(&agent.name);
                pb::AgentInfo {
                    pipelines: leases
                        .iter()
                        .filter(|l| l.agent == agent.name)
                        .map(|l| format!("{}/{}", l.workflow, l.pipeline))
                        .collect(),
                    last_heartbeat_ms: session.map_or(0, |s| s.last_heartbeat_ms),
                    connected: session.is_some_and(|s| s.alive),
                    state: agent.state.as_str().into(),
                    capacity: agent.capacity,
                    labels: agent.labels.into_iter().collect(),
                    name: agent.name,
                }
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64) -> agent_message::Body {
        agent_message::Body::RunUpdate(pb::RunUpdate { run: "r".into(), epoch: 1, run_json: seq.to_string(), seq })
    }

    fn logs(seq: u64) -> agent_message::Body {
        agent_message::Body::Logs(pb::LogBatch {
            run: "r".into(),
            epoch: 1,
            chunk_json: String::new(),
            first_seq: 0,
            seq,
        })
    }

    fn labels_message(labels: &[(&str, &str)]) -> Option<String> {
        let labels: std::collections::HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        check_labels("a1", labels.iter()).err().map(|e| e.to_string())
    }

    #[test]
    fn agent_labels_are_checked_like_manifest_labels() {
        assert_eq!(labels_message(&[]), None);
        assert_eq!(labels_message(&[("os", "linux"), ("example.com/gpu", "true"), ("empty", "")]), None);
        // A DNS prefix of 253 bytes (labels of at most 63), "/", and a name of 63.
        let prefix = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert_eq!(prefix.len(), 253);
        let longest_key = format!("{prefix}/{}", "e".repeat(63));
        assert_eq!(labels_message(&[(&longest_key, &"v".repeat(63))]), None);

        let many: Vec<(String, String)> = (0..65).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let refused = labels_message(&many).expect("65 labels are refused");
        assert!(refused.contains("65 labels, at most 64"), "{refused}");
        assert!(labels_message(&many[..64]).is_none(), "64 labels are allowed");

        let huge_key = "k".repeat(100_000);
        let refused = labels_message(&[(&huge_key, "v")]).expect("a huge key is refused");
        assert!(refused.contains("100000 bytes long, at most 317"), "{refused}");
        assert!(refused.len() < 400, "the message quotes only the key's start: {refused}");

        let refused = labels_message(&[("os", &"x".repeat(64))]).expect("a long value is refused");
        assert!(refused.contains(r#"label "os": the value is 64 bytes long, at most 63"#), "{refused}");
        assert!(refused.contains("--labels"), "says what to do: {refused}");

        let refused = labels_message(&[("b", "ok"), ("a b", "ok"), ("c", "-bad")]).expect("refused");
        assert!(refused.contains(r#"invalid label key "a b""#), "the first bad label by key: {refused}");
        let refused = labels_message(&[("c", "-bad")]).expect("refused");
        assert!(refused.contains(r#"label "c": invalid label value "-bad""#), "{refused}");
    }

    #[test]
    fn only_the_last_status_of_a_batch_is_applied_and_logs_keep_their_order() {
        let mut writes = vec![update(1), logs(2), update(3), logs(4), update(5), logs(6)];
        latest_status_only(&mut writes);
        assert_eq!(writes.iter().map(write_seq).collect::<Vec<_>>(), vec![2, 4, 5, 6]);

        let mut only_logs = vec![logs(1), logs(2)];
        latest_status_only(&mut only_logs);
        assert_eq!(only_logs.len(), 2);
    }
}
