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
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use tonic::Code;
use xene_proto::RaftPayload;
use xene_raft_store::types::Entry;
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

/// Most bytes of entries (by [`ClientRequest::approx_len`]) one AppendEntries carries, beyond
/// its first entry: small enough to send and sync within a heartbeat interval on a busy
/// machine, large enough that small writes still travel 32 to a message.
///
/// [`ClientRequest::approx_len`]: xene_raft_store::ClientRequest::approx_len
const MAX_APPEND_BYTES: usize = 128 * 1024;

/// How many of `entries` to send: at least one, then as many as fit in `limit` bytes.
fn fitting_prefix(entries: &[Entry], limit: usize) -> usize {
    let mut total = 0;
    for (i, entry) in entries.iter().enumerate() {
        total += match &entry.payload {
            EntryPayload::Normal(request) => request.approx_len(),
            EntryPayload::Membership(_) => 256,
            EntryPayload::Blank => 16,
        };
        if i > 0 && total > limit {
            return i;
        }
    }
    entries.len()
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
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // openraft 0.9 gives an AppendEntries one heartbeat interval and retries the same range
        // after a timeout, so a range of large entries (log chunks) that cannot be sent, synced
        // and answered in time would be retried forever. Send a prefix that fits and report
        // how far it reached; openraft sends the rest next.
        let sent = fitting_prefix(&rpc.entries, MAX_APPEND_BYTES);
        let truncated = sent < rpc.entries.len();
        rpc.entries.truncate(sent);
        let last = rpc.entries.last().map(|entry| entry.log_id);
        let reply = self.call(Method::Append, &rpc, option.hard_ttl()).await?;
        Ok(match reply {
            AppendEntriesResponse::Success if truncated => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId};
    use xene_raft_store::{ClientRequest, Command, Op, Txn};

    fn entry(index: u64, value_len: usize) -> Entry {
        let request = ClientRequest {
            client_id: "c".into(),
            request_id: index,
            timestamp_ms: 0,
            command: Command::Txn(Txn {
                compare: vec![],
                success: vec![Op::Put { key: b"k".to_vec(), value: vec![0; value_len] }],
                failure: vec![],
            }),
        };
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(request) }
    }

    #[test]
    fn append_batches_are_cut_by_size_but_always_carry_one_entry() {
        let small: Vec<Entry> = (1..=32).map(|i| entry(i, 256)).collect();
        assert_eq!(fitting_prefix(&small, MAX_APPEND_BYTES), 32, "32 small writes travel together");
        let chunks: Vec<Entry> = (1..=32).map(|i| entry(i, 30_000)).collect();
        assert_eq!(fitting_prefix(&chunks, MAX_APPEND_BYTES), 4, "log chunks of 30 kB: 4 to a message");
        let huge = vec![entry(1, 1_000_000), entry(2, 10)];
        assert_eq!(fitting_prefix(&huge, MAX_APPEND_BYTES), 1, "an entry over the limit goes alone");
        assert_eq!(fitting_prefix(&[], MAX_APPEND_BYTES), 0);
    }
}
