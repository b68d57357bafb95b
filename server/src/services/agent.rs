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
use xene_raft_store::{Compare, Op, Txn};

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

/// Tells the agent when one of its writes was fenced off; returns false when the session is gone.
async fn answer_refusal(tx: &crate::agents::SessionSender, run: &str, epoch: u64, result: Result<(), Refused>) -> bool {
    match result {
        Ok(()) => true,
        Err(Refused::StaleEpoch(reason)) => {
            tracing::warn!(run, epoch, %reason, "fenced off a stale agent write");
            let fenced = pb::Fenced { run: run.into(), epoch, reason };
            tx.send(Ok(pb::ServerMessage { body: Some(server_message::Body::Fenced(fenced)) })).await.is_ok()
        }
        Err(Refused::Other(e)) => {
            tracing::warn!(run, error = %e, "an agent write failed");
            true
        }
    }
}

/// Takes a cron fire of the agent's; a refused one needs no answer (a duplicate made its run
/// already; a stale holder is told by the lease's revocation).
async fn cron_fire(node: &crate::node::ClusterNode, agent: &str, fire: pb::CronFire) {
    let Some(scheduled) = chrono::DateTime::from_timestamp_millis(fire.scheduled_ms) else {
        tracing::warn!(agent, pipeline = %fire.pipeline, "cron fire with an impossible time ignored");
        return;
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
        Err(Refused::Other(e)) => {
            tracing::warn!(agent, pipeline = %fire.pipeline, trigger = %fire.trigger, error = %e, "cron fire failed")
        }
    }
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
        let token_key = keys::token(&presented.id);
        let agent_key = keys::agent(&join.name);
        for _ in 0..5 {
            self.node.read_barrier().await?;
            let stored =
                self.node.reader.range(token_key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
            let Some(kv) = stored.kvs.into_iter().next() else {
                return Err(ServerError::Unauthenticated("invalid token: check --token".into()).into());
            };
            let mut record: TokenRecord = serde_json::from_slice(&kv.value).map_err(internal)?;
            if let Some(reason) = record.unusable(now_ms()) {
                return Err(ServerError::Unauthenticated(reason).into());
            }
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
            };
            let response = self
                .node
                .txn(Txn {
                    compare: vec![
                        Compare::mod_revision(token_key.clone(), kv.mod_revision),
                        Compare::absent(agent_key.clone()),
                    ],
                    success: vec![
                        Op::Put {
                            key: token_key.clone().into_bytes(),
                            value: serde_json::to_vec(&record).map_err(internal)?,
                        },
                        Op::Put {
                            key: keys::token(&credential.record.id).into_bytes(),
                            value: serde_json::to_vec(&credential.record).map_err(internal)?,
                        },
                        Op::Put {
                            key: agent_key.clone().into_bytes(),
                            value: serde_json::to_vec(&agent).map_err(internal)?,
                        },
                    ],
                    failure: vec![Op::Get { key: agent_key.clone().into_bytes(), prefix: false, limit: 0 }],
                })
                .await?;
            if response.succeeded {
                tracing::info!(agent = %join.name, "agent joined");
                return Ok(Response::new(pb::JoinAgentResponse { agent: join.name, credential: credential.text }));
            }
            let exists =
                matches!(response.results.first(), Some(xene_raft_store::OpResult::Get { kvs, .. }) if !kvs.is_empty());
            if exists {
                return Err(ServerError::AlreadyExists(format!(
                    "an agent named {:?} already joined; restart it with its --data-dir (which holds its credential), or pick another --name",
                    join.name
                ))
                .into());
            }
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
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?;
        let hello = match first {
            Some(Ok(pb::AgentMessage { body: Some(agent_message::Body::Hello(hello)) })) => hello,
            Some(Err(status)) => return Err(status),
            _ => return Err(ServerError::InvalidArgument("a session starts with a hello".into()).into()),
        };
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
        let serial = self.hub.register(&name, tx.clone(), labels, capacity, now_ms());
        tracing::info!(agent = %name, held = hello.held.len(), "agent session opened");
        let hub = self.hub.clone();
        let stop = self.stop.clone();
        // The agent's writes (run statuses, log chunks) go through Raft one after another in
        // their own task, so heartbeats and their acks never wait behind a backlog of writes.
        let (writes, mut pending) = tokio::sync::mpsc::channel::<agent_message::Body>(1024);
        {
            let node = self.node.clone();
            let tx = tx.clone();
            let name = name.clone();
            tokio::spawn(async move {
                // Which pipeline each run belongs to, read once per run.
                let mut pipelines: std::collections::HashMap<String, (String, String)> = Default::default();
                while let Some(body) = pending.recv().await {
                    let (run, epoch, result) = match body {
                        agent_message::Body::RunUpdate(update) => {
                            let result = match serde_json::from_str::<xene_model::RunObject>(&update.run_json) {
                                Ok(run) => runs::agent_update(&node, &name, update.epoch, run).await,
                                Err(e) => Err(Refused::Other(ServerError::InvalidArgument(format!("run update: {e}")))),
                            };
                            (update.run, update.epoch, result)
                        }
                        agent_message::Body::Logs(batch) => {
                            let pipeline = match pipelines.get(&batch.run) {
                                Some(found) => Ok(found.clone()),
                                None => runs::get(&node, &batch.run).await.map(|stored| {
                                    let found = (stored.run.spec.workflow, stored.run.spec.pipeline);
                                    pipelines.insert(batch.run.clone(), found.clone());
                                    found
                                }),
                            };
                            let result =
                                match (pipeline, serde_json::from_str::<xene_model::LogChunk>(&batch.chunk_json)) {
                                    (Ok((workflow, pipeline)), Ok(chunk)) => {
                                        runs::agent_logs(
                                            &node,
                                            (&workflow, &pipeline),
                                            batch.epoch,
                                            batch.first_seq,
                                            chunk,
                                        )
                                        .await
                                    }
                                    (Err(e), _) => Err(Refused::Other(e)),
                                    (_, Err(e)) => {
                                        Err(Refused::Other(ServerError::InvalidArgument(format!("log batch: {e}"))))
                                    }
                                };
                            (batch.run, batch.epoch, result)
                        }
                        agent_message::Body::CronFire(fire) => {
                            cron_fire(&node, &name, fire).await;
                            continue;
                        }
                        _ => continue,
                    };
                    if !answer_refusal(&tx, &run, epoch, result).await {
                        break;
                    }
                }
            });
        }
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    message = inbound.next() => message,
                };
                match message {
                    Some(Ok(pb::AgentMessage { body: Some(agent_message::Body::Heartbeat(beat)) })) => {
                        hub.heartbeat(&name, serial, now_ms());
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
