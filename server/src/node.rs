//! One server's place in the cluster: proposing commands (forwarded to the leader when this
//! server is not it), linearizable read barriers, and membership changes (DESIGN §5).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use xene_proto::{JoinRequest, Member, ReadIndexRequest, TimeoutNowRequest};
use xene_raft_store::{
    ClientRequest, ClientResponse, Command, Compare, KvReader, NodeId, NodeInfo, Op, OpResult, Raft, Txn,
};

use crate::error::{Result, ServerError};
use crate::forwarding::Forwarder;
use crate::keys;
use crate::leadership::Confirmation;
use crate::metrics::Metrics;
use crate::peers::PeerPool;
use crate::proposals::{self, Proposals, Submit};

/// Timing of the cluster, shared by Raft's config and the operations that wait on it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// How long a proposal or read keeps retrying through leader changes.
    pub request_deadline: Duration,
}

impl Timing {
    /// How long a follower that heard from its leader refuses to vote for anyone else: the
    /// shortest election timeout and a heartbeat, at most the longest (the vendored openraft's
    /// rule, `vendor/openraft/XENE.md`).
    pub fn leader_lease(&self) -> Duration {
        (self.election_min + self.heartbeat).min(self.election_max)
    }
}

/// The answer a leader sends back for a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Applied(ClientResponse),
    NotLeader { leader: Option<NodeId> },
    Unavailable(String),
}

/// A node ID's record, kept forever so IDs are never reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub grpc_addr: String,
    pub http_addr: String,
    pub removed: bool,
}

/// This server's handle on the cluster.
pub struct ClusterNode {
    pub id: NodeId,
    pub info: NodeInfo,
    pub raft: Raft,
    pub reader: KvReader,
    pub peers: PeerPool,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    /// The identity this server proposes under, so its own retries are deduplicated.
    client_id: String,
    next_request: AtomicU64,
    /// Set on the leader while it hands leadership over: writes and reads wait.
    transferring: AtomicBool,
    /// Concurrent linearizable reads share one leadership confirmation (leader) or one
    /// read-index request (follower).
    local_reads: ReadIndexRounds,
    remote_reads: ReadIndexRounds,
    /// Writes proposed on this server while it leads, grouped into entries, and where they go.
    proposals: Proposals,
    to_raft: Submit,
    /// Writes this server forwards to the leader, grouped into messages, and the stream they
    /// go on.
    forwards: Proposals,
    forwarder: Arc<Forwarder>,
    /// Until when a quorum's acknowledgement lets this server speak to agents as the leader;
    /// kept current by [`leadership::follow`](crate::leadership::follow).
    pub leadership: Arc<Confirmation>,
}

/// Coalesces read-index requests: one round runs at a time, and a round serves every request
/// that arrived before it started. Serving a request from a round that started after it
/// arrived is what ReadIndex needs (DESIGN §4.5): the leader confirmed its leadership, and
/// took its commit index, after the request existed. Without it every linearizable read made
/// openraft 0.9 send its own heartbeat round to the followers.
#[derive(Default)]
struct ReadIndexRounds {
    /// Requests seen so far; a request's ticket is its number.
    issued: AtomicU64,
    /// The last completed round: the highest ticket it covers and the index it found.
    last: tokio::sync::Mutex<Option<(u64, u64)>>,
}

impl ReadIndexRounds {
    async fn run<F, Fut>(&self, fetch: F) -> Result<u64>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let ticket = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        // The lock queues requests behind the round in flight (tokio's mutex is fair).
        let mut last = self.last.lock().await;
        if let Some((covers, index)) = *last {
            if covers >= ticket {
                return Ok(index);
            }
        }
        // Every ticket issued so far belongs to a request that arrived before this round.
        let covers = self.issued.load(Ordering::Acquire);
        let index = fetch().await?;
        *last = Some((covers, index));
        Ok(index)
    }
}

/// Milliseconds since the Unix epoch by this server's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl ClusterNode {
    pub fn new(
        id: NodeId,
        info: NodeInfo,
        raft: Raft,
        reader: KvReader,
        peers: PeerPool,
        metrics: Arc<Metrics>,
        timing: Timing,
    ) -> Self {
        let mut nonce = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let proposals = Proposals::new(metrics.proposal_batch_requests.clone());
        let forwards = Proposals::new(metrics.forward_batch_requests.clone());
        let to_raft = proposals::to_raft(&raft);
        let forwarder = Arc::new(Forwarder::new(peers.clone()));
        ClusterNode {
            id,
            info,
            raft,
            reader,
            peers,
            metrics,
            timing,
            client_id: format!("server-{id}-{}", hex::encode(nonce)),
            next_request: AtomicU64::new(1),
            transferring: AtomicBool::new(false),
            local_reads: ReadIndexRounds::default(),
            remote_reads: ReadIndexRounds::default(),
            proposals,
            to_raft,
            forwards,
            forwarder,
            leadership: Arc::default(),
        }
    }

    /// The URL of `path` on this server's REST listener as others reach it: `https://` when
    /// the server serves TLS.
    pub fn rest_url(&self, path: &str) -> String {
        let scheme = if self.peers.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.info.http_addr)
    }

    /// The leader as this server knows it, with its address.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        // Borrowed, not cloned: this runs on every proposal and read, and the metrics hold the
        // whole membership and replication state.
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let info = metrics.membership_config.nodes().find(|(id, _)| **id == leader).map(|(_, n)| n.clone())?;
        Some((leader, info))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Whether this server leads and a quorum said so lately enough that agents may take its
    /// word (heartbeat acknowledgements, session openings): see [`crate::leadership`]. A
    /// leader cut off from the others stops being confirmed within an election timeout.
    pub fn leadership_confirmed(&self) -> bool {
        self.leadership.holds()
    }

    fn no_leader(&self) -> ServerError {
        ServerError::Unavailable {
            message: "no leader is known yet (election in progress or no quorum); retry".into(),
            leader: None,
        }
    }

    /// Wraps a command with this server's client identity and a fresh request ID.
    pub fn request(&self, command: Command) -> ClientRequest {
        ClientRequest {
            client_id: self.client_id.clone(),
            request_id: self.next_request.fetch_add(1, Ordering::Relaxed),
            timestamp_ms: now_ms(),
            command,
        }
    }

    /// Proposes a request and returns the state machine's answer, forwarding to the leader
    /// and retrying through leader changes until the deadline. Retrying is safe because every
    /// request carries an ID the state machine deduplicates on.
    pub async fn propose(&self, request: ClientRequest) -> Result<ClientResponse> {
        let started = Instant::now();
        let deadline = started + self.timing.request_deadline;
        let mut pause = Duration::from_millis(10);
        loop {
            let leader = self.leader();
            let attempt = match &leader {
                Some((leader, _)) if *leader == self.id => self.propose_local(request.clone()).await,
                Some((_, info)) => self.forward(info, request.clone()).await,
                None => Err(self.no_leader()),
            };
            match attempt {
                Ok(response) => {
                    self.metrics.proposal_seconds.observe(started.elapsed().as_secs_f64());
                    return Ok(response);
                }
                Err(e) if e.is_retryable() && Instant::now() + pause < deadline => {
                    self.await_new_leader(leader.map(|(id, _)| id), pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits before retrying an attempt made with `tried` as the leader: until this server
    /// learns of another leader (an election ended), or `pause` passes. A failover thus costs
    /// the election, not the election plus a backoff step.
    async fn await_new_leader(&self, tried: Option<NodeId>, pause: Duration) {
        let mut metrics = self.raft.metrics();
        let elected = metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != tried);
        // Either outcome means "retry now"; a closed channel (Raft stopped) fails the retry.
        let _ = tokio::time::timeout(pause, elected).await;
    }

    /// Proposes on this server, which must be the leader.
    pub async fn propose_local(&self, request: ClientRequest) -> Result<ClientResponse> {
        if self.transferring.load(Ordering::Acquire) {
            return Err(ServerError::unavailable("leadership is being transferred; retry"));
        }
        self.proposals.write(&self.to_raft, request).await
    }

    /// Forwards `request` to `leader`, in one message with the other requests this server is
    /// forwarding at the moment (`proposals.rs`), on the stream to the leader (`forwarding.rs`).
    async fn forward(&self, leader: &NodeInfo, request: ClientRequest) -> Result<ClientResponse> {
        let forwarder = Arc::clone(&self.forwarder);
        let address: Arc<str> = leader.grpc_addr.as_str().into();
        let deadline = self.timing.request_deadline;
        let submit: Submit = Arc::new(move |request| {
            let (forwarder, address) = (Arc::clone(&forwarder), Arc::clone(&address));
            Box::pin(async move { forwarder.forward(&address, &request, deadline).await })
        });
        self.forwards.write(&submit, request).await
    }

    /// Runs a transaction built by the server itself.
    pub async fn txn(&self, txn: Txn) -> Result<xene_raft_store::TxnResponse> {
        txn_response(self.propose(self.request(Command::Txn(txn))).await?)
    }

    /// Runs a transaction only while this server leads, never forwarding it: the leader-only
    /// controllers write with it, so a deposed leader's pass stops at its first write instead
    /// of racing the new leader's through forwarding.
    pub async fn leader_txn(&self, txn: Txn) -> Result<xene_raft_store::TxnResponse> {
        txn_response(self.propose_local(self.request(Command::Txn(txn))).await?)
    }

    /// Writes `value` at `key` only if the key does not exist; `what` names it in the error
    /// (random IDs should never collide, so a collision is an internal error to retry).
    pub async fn create(&self, key: String, value: Vec<u8>, what: &str) -> Result<u64> {
        let response = self
            .txn(Txn {
                compare: vec![Compare::absent(key.clone())],
                success: vec![Op::Put { key: key.into_bytes(), value }],
                failure: vec![],
            })
            .await?;
        if response.succeeded {
            Ok(response.revision)
        } else {
            Err(ServerError::Internal(format!("{what} ID collision; retry")))
        }
    }

    /// Returns once a read on this server sees every write acknowledged before the call
    /// (ReadIndex, DESIGN §4.5): the leader confirms its leadership with a quorum, and this
    /// server waits until it has applied up to the leader's read index.
    pub async fn read_barrier(&self) -> Result<()> {
        let deadline = Instant::now() + self.timing.request_deadline;
        let mut pause = Duration::from_millis(10);
        loop {
            let leader = self.leader();
            let attempt = match &leader {
                Some((leader, _)) if *leader == self.id => self.read_index_local().await.map(|_| ()),
                Some((_, info)) => match self.remote_read_index(info).await {
                    Ok(index) => self.wait_applied(index, deadline).await,
                    Err(e) => Err(e),
                },
                None => Err(self.no_leader()),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && Instant::now() + pause < deadline => {
                    self.await_new_leader(leader.map(|(id, _)| id), pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// On the leader: confirms leadership and returns the index a read must see. Concurrent
    /// callers share one confirmation round.
    pub async fn read_index_local(&self) -> Result<u64> {
        if self.transferring.load(Ordering::Acquire) {
            return Err(ServerError::unavailable("leadership is being transferred; retry"));
        }
        self.local_reads
            .run(|| async {
                match self.raft.ensure_linearizable().await {
                    Ok(read_log_id) => Ok(read_log_id.map_or(0, |id| id.index)),
                    Err(e) => Err(ServerError::unavailable(format!("confirming leadership: {e}"))),
                }
            })
            .await
    }

    /// On a follower: the leader's read index, one request for every concurrent caller.
    async fn remote_read_index(&self, leader: &NodeInfo) -> Result<u64> {
        self.remote_reads.run(|| self.ask_read_index(leader)).await
    }

    async fn ask_read_index(&self, leader: &NodeInfo) -> Result<u64> {
        let mut client = self.peers.client(&leader.grpc_addr)?;
        let reply = client
            .read_index(self.peers.request(ReadIndexRequest {}, self.timing.request_deadline))
            .await
            .map_err(|s| ServerError::unavailable(format!("asking the leader for a read index: {}", s.message())))?;
        Ok(reply.into_inner().read_index)
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.reader.wait_applied(index)).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(ServerError::unavailable(format!("this server has not applied index {index} yet; retry"))),
        }
    }

    /// Whether this server can serve: a leader is known and this server has applied
    /// everything the leader had committed when asked.
    pub async fn readiness(&self) -> std::result::Result<String, String> {
        let (leader, info) = self.leader().ok_or("no leader is known")?;
        let index = if leader == self.id {
            self.read_index_local().await.map_err(|e| e.to_string())?
        } else {
            self.remote_read_index(&info).await.map_err(|e| e.to_string())?
        };
        let applied = self.reader.applied_revision();
        if applied >= index {
            Ok(format!("ready: leader {leader}, applied {applied}\n"))
        } else {
            Err(format!("applied {applied} of {index} committed"))
        }
    }

    /// The members as this server knows them.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, info)| Member {
                node_id: *id,
                grpc_addr: info.grpc_addr.clone(),
                http_addr: info.http_addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.into(),
            })
            .collect()
    }

    /// Adds a server: records its ID (refusing an ID used before by another server), adds it
    /// as a learner, waits until it has caught up, then makes it a voter. Idempotent, so a
    /// server that restarts half-way through joining can simply ask again.
    pub async fn add_member(&self, id: NodeId, info: NodeInfo) -> Result<Vec<Member>> {
        if !self.is_leader() {
            let (_, leader) = self.leader().ok_or_else(|| self.no_leader())?;
            let mut client = self.peers.client(&leader.grpc_addr)?;
            let request = JoinRequest { node_id: id, grpc_addr: info.grpc_addr, http_addr: info.http_addr };
            let reply =
                client.join(self.peers.request(request, Duration::from_secs(60))).await.map_err(status_to_error)?;
            return Ok(reply.into_inner().members);
        }
        if id == 0 {
            return Err(ServerError::InvalidArgument("node ID 0 is reserved; use 1 or more".into()));
        }
        if let Some(other) = self.members().into_iter().find(|m| m.node_id != id && m.grpc_addr == info.grpc_addr) {
            return Err(ServerError::AlreadyExists(format!(
                "{} is the address of member {} already; check the address, or remove that member first",
                info.grpc_addr, other.node_id
            )));
        }
        let record =
            NodeRecord { grpc_addr: info.grpc_addr.clone(), http_addr: info.http_addr.clone(), removed: false };
        let key = keys::node(id);
        let encoded = serde_json::to_vec(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
        let response = self
            .txn(Txn {
                compare: vec![Compare::absent(key.clone())],
                success: vec![Op::Put { key: key.clone().into(), value: encoded.clone() }],
                failure: vec![Op::Get { key: key.clone().into(), prefix: false, limit: 0 }],
            })
            .await?;
        if !response.succeeded {
            let existing = match response.results.first() {
                Some(OpResult::Get { kvs, .. }) => {
                    kvs.first().and_then(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
                }
                _ => None,
            };
            if let Some(existing) = existing {
                if existing.removed {
                    return Err(ServerError::FailedPrecondition(format!(
                        "node ID {id} belonged to a server that was removed, and node IDs are never reused; start the new server with another --node-id"
                    )));
                }
                let is_member = self.members().iter().any(|m| m.node_id == id);
                if is_member && existing.grpc_addr != record.grpc_addr {
                    return Err(ServerError::AlreadyExists(format!(
                        "node ID {id} is already a member at {}; pick another --node-id",
                        existing.grpc_addr
                    )));
                }
                if existing != record {
                    self.txn(Txn { success: vec![Op::Put { key: key.into(), value: encoded }], ..Txn::default() })
                        .await?;
                }
            }
        }
        let already_voter = self.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
        if !already_voter {
            tracing::info!(node = id, addr = %info.grpc_addr, "adding a learner and waiting for it to catch up");
            self.raft.add_learner(id, info, true).await.map_err(change_error)?;
            let mut voters: BTreeSet<NodeId> = self.raft.metrics().borrow().membership_config.voter_ids().collect();
            voters.insert(id);
            tracing::info!(node = id, "promoting the learner to voter");
            self.raft.change_membership(voters, false).await.map_err(change_error)?;
        }
        Ok(self.members())
    }

    /// Removes a server from the cluster and marks its ID as used for good. Removing the
    /// leader first hands leadership to another voter.
    pub async fn remove_member(&self, id: NodeId) -> Result<Vec<Member>> {
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == id) else {
            let known: Vec<String> = members.iter().map(|m| m.node_id.to_string()).collect();
            return Err(ServerError::NotFound(format!(
                "node {id} is not a member; the members are {}",
                known.join(", ")
            )));
        };
        let voters: BTreeSet<NodeId> = self.raft.metrics().borrow().membership_config.voter_ids().collect();
        if member.role == "voter" && voters.len() == 1 {
            return Err(ServerError::FailedPrecondition(format!(
                "node {id} is the only voter; add another server before removing it"
            )));
        }
        if self.is_leader() && id == self.id {
            let Some(successor) = voters.iter().copied().find(|v| *v != id) else {
                return Err(ServerError::FailedPrecondition("no other voter to hand leadership to".into()));
            };
            self.transfer_leader(successor).await?;
        }
        if !self.is_leader() {
            return Err(ServerError::Unavailable {
                message: "membership changes are made on the leader; retry there".into(),
                leader: self.leader().map(|(_, info)| info.grpc_addr),
            });
        }
        let change = if member.role == "voter" {
            let mut remaining = voters.clone();
            remaining.remove(&id);
            ChangeMembers::ReplaceAllVoters(remaining)
        } else {
            ChangeMembers::RemoveNodes([id].into_iter().collect())
        };
        self.raft.change_membership(change, false).await.map_err(change_error)?;
        let record =
            NodeRecord { grpc_addr: member.grpc_addr.clone(), http_addr: member.http_addr.clone(), removed: true };
        let encoded = serde_json::to_vec(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
        self.txn(Txn { success: vec![Op::Put { key: keys::node(id).into(), value: encoded }], ..Txn::default() })
            .await?;
        Ok(self.members())
    }

    /// Hands leadership to `to`. openraft 0.9 has no transfer call, so the leader pauses
    /// heartbeats and writes, waits until `to` has every entry, and asks it to start an
    /// election as soon as the followers' leader leases run out (ARCHITECTURE.md).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<NodeId> {
        if to == self.id && self.is_leader() {
            return Ok(to);
        }
        if !self.is_leader() {
            return Err(ServerError::Unavailable {
                message: "leadership is transferred by the leader; retry there".into(),
                leader: self.leader().map(|(_, info)| info.grpc_addr),
            });
        }
        let target = self
            .members()
            .into_iter()
            .find(|m| m.node_id == to && m.role == "voter")
            .ok_or_else(|| ServerError::NotFound(format!("node {to} is not a voter of this cluster")))?;
        // Wait until the target has every entry, so it can win the election.
        let caught_up = Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            let last = metrics.last_log_index.unwrap_or(0);
            let matched =
                metrics.replication.as_ref().and_then(|r| r.get(&to).cloned().flatten()).map_or(0, |id| id.index);
            if matched >= last {
                break;
            }
            if Instant::now() > caught_up {
                return Err(ServerError::unavailable(format!(
                    "node {to} is not caught up ({matched} of {last}); retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Writes and heartbeats resume when `pause` drops: when the call below returns, and
        // also when this future is dropped mid-way (the client went away, its grpc-timeout
        // passed), which would otherwise leave this server refusing writes and silent.
        let Some(pause) = TransferPause::begin(&self.transferring, |on| self.raft.runtime_config().heartbeat(on))
        else {
            return Err(ServerError::unavailable(
                "another leadership transfer is in progress on this server; retry once it ends",
            ));
        };
        let deadline = self.timing.election_max * 4;
        let result = async {
            let mut client = self.peers.client(&target.grpc_addr)?;
            let request = TimeoutNowRequest { deadline_ms: deadline.as_millis() as u64 };
            client
                .timeout_now(self.peers.request(request, deadline + Duration::from_secs(1)))
                .await
                .map_err(|s| ServerError::unavailable(format!("asking node {to} to take over: {}", s.message())))
        }
        .await;
        drop(pause);
        let reply = result?.into_inner();
        if !reply.became_leader {
            return Err(ServerError::unavailable(format!("node {to} did not win the election in time; retry")));
        }
        Ok(to)
    }

    /// On the transfer target: waits for the leader lease to run out, then starts elections
    /// until this server leads or the deadline passes.
    pub async fn timeout_now(&self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        tokio::time::sleep(self.timing.leader_lease()).await;
        while Instant::now() < until {
            if self.is_leader() {
                return true;
            }
            if self.raft.trigger().elect().await.is_err() {
                return false;
            }
            tokio::time::sleep(self.timing.heartbeat * 2).await;
        }
        self.is_leader()
    }

    /// Level-triggered leader duty: a membership left joint by a crashed leader is finished,
    /// so the cluster never stays in a joint configuration (DESIGN §5.2).
    pub async fn finish_joint_membership(&self) {
        if !self.is_leader() {
            return;
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let configs = membership.membership().get_joint_config();
        if configs.len() > 1 {
            if let Some(last) = configs.last().cloned() {
                tracing::info!(?last, "finishing a joint membership left by an earlier leader");
                if let Err(e) = self.raft.change_membership(last, false).await {
                    tracing::warn!(error = %e, "finishing the joint membership failed; will retry");
                }
            }
        }
    }
}

/// Writes and heartbeats paused for a leadership transfer, resumed when this is dropped.
///
/// A guard rather than code after the transfer's `.await`, because the transfer runs in an
/// RPC handler's future, and tonic drops that future when the client disconnects or its
/// deadline passes; nothing after the `.await` would run then.
struct TransferPause<'a, F: Fn(bool)> {
    transferring: &'a AtomicBool,
    /// Turns the leader's heartbeats on (`true`) or off (`false`).
    heartbeat: F,
}

impl<'a, F: Fn(bool)> TransferPause<'a, F> {
    /// Marks a transfer as running and turns heartbeats off; `None` when a transfer is
    /// already running, which this one must not end early by resuming on its own drop.
    fn begin(transferring: &'a AtomicBool, heartbeat: F) -> Option<Self> {
        transferring.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok()?;
        heartbeat(false);
        Some(TransferPause { transferring, heartbeat })
    }
}

impl<F: Fn(bool)> Drop for TransferPause<'_, F> {
    fn drop(&mut self) {
        (self.heartbeat)(true);
        self.transferring.store(false, Ordering::Release);
    }
}

fn txn_response(response: ClientResponse) -> Result<xene_raft_store::TxnResponse> {
    match response {
        ClientResponse::Txn(response) => Ok(response),
        ClientResponse::Rejected(rejection) => Err(rejection.into()),
        ClientResponse::Duplicate(d) => {
            Ok(xene_raft_store::TxnResponse { revision: d.revision, succeeded: d.succeeded, results: vec![] })
        }
        ClientResponse::Empty | ClientResponse::Batch(_) => {
            Err(ServerError::Internal("not a transaction's answer to a transaction".into()))
        }
    }
}

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ServerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ServerError::Unavailable {
            message: "the leader changed during the membership change; retry".into(),
            leader: f.leader_node.map(|n| n.grpc_addr),
        },
        // Another change (a server joining at the same moment) is still being committed: it
        // ends by itself, so the caller retries.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e @ ChangeMembershipError::InProgress(_))) => {
            ServerError::unavailable(format!("{e}; retrying once it is committed"))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ServerError::FailedPrecondition(e.to_string())
        }
        RaftError::Fatal(e) => ServerError::unavailable(format!("raft stopped: {e}")),
    }
}

/// Turns a peer's gRPC answer back into an error of the same kind.
pub fn status_to_error(status: tonic::Status) -> ServerError {
    let message = status.message().to_string();
    match status.code() {
        tonic::Code::InvalidArgument => ServerError::InvalidArgument(message),
        tonic::Code::NotFound => ServerError::NotFound(message),
        tonic::Code::AlreadyExists => ServerError::AlreadyExists(message),
        tonic::Code::FailedPrecondition => ServerError::FailedPrecondition(message),
        tonic::Code::Unauthenticated => ServerError::Unauthenticated(message),
        tonic::Code::PermissionDenied => ServerError::PermissionDenied(message),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ServerError::unavailable(message),
        _ => ServerError::Internal(message),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn a_transfer_pause_resumes_writes_and_heartbeats_when_dropped() {
        let transferring = AtomicBool::new(false);
        let heartbeats = RefCell::new(Vec::new());
        let pause = TransferPause::begin(&transferring, |on| heartbeats.borrow_mut().push(on)).expect("first pause");
        assert!(transferring.load(Ordering::Acquire), "writes wait while the transfer runs");
        assert_eq!(*heartbeats.borrow(), vec![false]);

        // A second transfer is refused and does not resume anything when it gives up.
        assert!(TransferPause::begin(&transferring, |on| heartbeats.borrow_mut().push(on)).is_none());
        assert!(transferring.load(Ordering::Acquire));
        assert_eq!(*heartbeats.borrow(), vec![false]);

        drop(pause);
        assert!(!transferring.load(Ordering::Acquire), "writes resume");
        assert_eq!(*heartbeats.borrow(), vec![false, true], "heartbeats resume");
    }

    #[tokio::test]
    async fn a_transfer_dropped_mid_await_resumes_writes_and_heartbeats() {
        // What tonic does to a handler whose client went away: the future is dropped while it
        // waits, so only a guard's drop runs.
        let transferring = AtomicBool::new(false);
        let heartbeat_on = AtomicBool::new(true);
        let transfer = async {
            let _pause = TransferPause::begin(&transferring, |on| heartbeat_on.store(on, Ordering::Release));
            std::future::pending::<()>().await;
        };
        let timed_out = tokio::time::timeout(Duration::from_millis(10), transfer).await;
        assert!(timed_out.is_err(), "the transfer never finishes by itself");
        assert!(!transferring.load(Ordering::Acquire), "writes resume after the drop");
        assert!(heartbeat_on.load(Ordering::Acquire), "heartbeats resume after the drop");
    }
}
