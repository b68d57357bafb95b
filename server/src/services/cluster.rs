//! `ClusterService`: status and membership (DESIGN §5.2). Reads need a viewer token,
//! changes an admin token; a change sent to a follower is forwarded to the leader with the
//! caller's token.

use std::sync::Arc;

use openraft::ServerState;
use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::cluster_service_client::ClusterServiceClient;
use xene_proto::cluster_service_server::ClusterService;
use xene_raft_store::NodeInfo;

use crate::auth::{Role, TokenCache};
use crate::error::ServerError;
use crate::node::ClusterNode;

/// A client for the leader and the request to send it.
type Forward<T> = (ClusterServiceClient<tonic::transport::Channel>, Request<T>);

/// The `ClusterService` implementation.
pub struct ClusterApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
}

impl ClusterApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache) -> Self {
        ClusterApi { node, tokens }
    }

    /// A client for the leader's `ClusterService` and the request carrying the caller's token,
    /// or `None` when this server is the leader.
    fn leader_client<T>(&self, request: &Request<T>, message: T) -> Result<Option<Forward<T>>, Status> {
        if self.node.is_leader() {
            return Ok(None);
        }
        let (_, leader) = self
            .node
            .leader()
            .ok_or_else(|| Status::from(ServerError::unavailable("no leader is known yet; retry in a moment")))?;
        let channel = self.node.peers.channel(&leader.grpc_addr)?;
        let mut forwarded = Request::new(message);
        if let Some(auth) = request.metadata().get("authorization") {
            forwarded.metadata_mut().insert("authorization", auth.clone());
        }
        Ok(Some((ClusterServiceClient::new(channel), forwarded)))
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let metrics = self.node.raft.metrics().borrow().clone();
        let leader = self.node.leader();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.id,
            state: state_name(metrics.state).into(),
            leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
            leader_grpc_addr: leader.map(|(_, info)| info.grpc_addr).unwrap_or_default(),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            members: self.node.members(),
        }))
    }

    async fn members(&self, request: Request<pb::MembersRequest>) -> Result<Response<pb::MembersResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let leader_id = self.node.leader().map_or(0, |(id, _)| id);
        Ok(Response::new(pb::MembersResponse { members: self.node.members(), leader_id }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let add = request.get_ref().clone();
        if add.grpc_addr.is_empty() || add.http_addr.is_empty() {
            return Err(ServerError::InvalidArgument(
                "add member: both the gRPC and the HTTP address are needed (HOST:PORT each)".into(),
            )
            .into());
        }
        let info = NodeInfo { grpc_addr: add.grpc_addr, http_addr: add.http_addr };
        let members = self.node.add_member(add.node_id, info).await?;
        Ok(Response::new(pb::AddMemberResponse { members }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let message = *request.get_ref();
        // Removing the leader hands leadership over first; the removal then goes to the new
        // leader, so try a few times.
        for _ in 0..3 {
            if let Some((mut client, forwarded)) = self.leader_client(&request, message)? {
                return client.remove_member(forwarded).await;
            }
            match self.node.remove_member(message.node_id).await {
                Ok(members) => return Ok(Response::new(pb::RemoveMemberResponse { members })),
                Err(e) if e.is_retryable() && !self.node.is_leader() => {
                    tokio::time::sleep(self.node.timing.election_max).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServerError::unavailable("the leader kept changing during the removal; retry").into())
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let message = *request.get_ref();
        if let Some((mut client, forwarded)) = self.leader_client(&request, message)? {
            return client.transfer_leader(forwarded).await;
        }
        let leader_id = self.node.transfer_leader(message.node_id).await?;
        Ok(Response::new(pb::TransferLeaderResponse { leader_id }))
    }

    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        // What the snapshot must cover, read before it is asked for: entries applied after the
        // trigger need not be in it.
        let wanted = self.node.raft.metrics().borrow().last_applied.map_or(0, |id| id.index);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| ServerError::unavailable(format!("raft stopped: {e}")))?;
        // Wait (briefly) for the snapshot to be built so the answer names it.
        let mut metrics = self.node.raft.metrics();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let snapshot_index = metrics.borrow().snapshot.map_or(0, |id| id.index);
            if snapshot_index >= wanted {
                return Ok(Response::new(pb::SnapshotResponse { node_id: self.node.id, snapshot_index }));
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ServerError::unavailable("raft stopped while the snapshot was built").into()),
                Err(_) => {
                    return Err(ServerError::unavailable("the snapshot is still being built; check again later").into())
                }
            }
        }
    }
}
