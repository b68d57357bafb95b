//! openraft's network over tonic: each Raft message is the store's versioned encoding of
//! openraft's own type inside a `RaftPayload`, sent on a reused channel with a per-call
//! deadline; an unreachable peer is retried with exponential backoff.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use tonic::Code;
use xene_proto::RaftPayload;
use xene_raft_store::{codec, NodeId, NodeInfo, TypeConfig};

use crate::peers::PeerPool;

/// Builds one [`PeerNetwork`] per replication target.
pub struct NetworkFactory {
    peers: PeerPool,
}

impl NetworkFactory {
    pub fn new(peers: PeerPool) -> Self {
        NetworkFactory { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork { target, node: node.clone(), peers: self.peers.clone() }
    }
}

/// The link to one peer.
pub struct PeerNetwork {
    target: NodeId,
    node: NodeInfo,
    peers: PeerPool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct WireError(String);

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerNetwork {
    async fn call<Req, Resp, E>(&self, method: Method, request: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .client(&self.node.grpc_addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&WireError(e.to_string()))))?;
        let payload = self.peers.request(RaftPayload { data: codec::encode(request) }, timeout);
        let reply = match method {
            Method::Append => client.append_entries(payload).await,
            Method::Vote => client.vote(payload).await,
            Method::Snapshot => client.install_snapshot(payload).await,
        };
        let reply = reply.map_err(|status| {
            let error = WireError(format!("{} to node {}: {}", method.name(), self.target, status.message()));
            match status.code() {
                Code::Unavailable | Code::Unknown => RPCError::Unreachable(Unreachable::new(&error)),
                _ => RPCError::Network(NetworkError::new(&error)),
            }
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> = codec::decode("raft reply", &reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Append => "append entries",
            Method::Vote => "vote",
            Method::Snapshot => "install snapshot",
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Method::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Method::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        // 50 ms doubling to 1 s, then 1 s for as long as the peer stays unreachable.
        let steps = (0..5).map(|i| Duration::from_millis(50 << i)).chain(std::iter::repeat(Duration::from_secs(1)));
        Backoff::new(steps)
    }
}
