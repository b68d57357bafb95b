//! openraft's network over tonic: each Raft message is the store's versioned encoding of
//! openraft's own type inside a `RaftPayload`, sent on a reused channel with a per-call
//! deadline; an unreachable peer is retried with exponential backoff. A replication stream's
//! AppendEntries travel on one long-lived gRPC stream per link (`RaftService/AppendStream`),
//! as etcd's peers stream theirs, instead of a call each.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::EntryPayload;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use xene_proto::raft_service_client::RaftServiceClient;
use xene_proto::RaftPayload;
use xene_raft_store::types::Entry;
use xene_raft_store::{codec, NodeId, NodeInfo, TypeConfig};

use crate::peers::{PeerPool, StreamFailure};

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
        PeerNetwork {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
            appends: 0,
            unary_only: false,
            stream: None,
        }
    }
}

/// The link to one peer.
pub struct PeerNetwork {
    target: NodeId,
    node: NodeInfo,
    peers: PeerPool,
    /// AppendEntries sent through this link so far.
    appends: u64,
    /// The peer has no append stream (a build from before it): every AppendEntries is a call.
    unary_only: bool,
    /// The open append stream, if any. Taken out while a message is in flight and put back
    /// once its answer is read, so a call that fails, times out or is dropped half-way leaves
    /// no stream whose next answer would belong to an earlier message.
    stream: Option<AppendStream>,
}

/// The AppendEntries a link sends as unary calls before it opens a stream. openraft 0.9 makes
/// a link for every leadership check of a linearizable read and sends one message through it
/// (`RaftCore::handle_check_is_leader_request`); a stream for one message would cost a round
/// trip more than the call. A replication stream's link sends thousands.
const UNARY_APPENDS: u64 = 1;

/// Most of a stream's requests queued ahead of the HTTP/2 connection: one, since a link sends
/// its next message only after the answer to the last.
const STREAM_QUEUE: usize = 1;

/// An open `AppendStream`: requests go in, their answers come back in order.
struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    replies: Streaming<RaftPayload>,
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
        let reply = reply.map_err(|status| self.status_error(method, &status))?;
        self.decode_reply(&reply.into_inner())
    }

    fn status_error<E: std::error::Error>(&self, method: Method, status: &Status) -> RPCError<NodeId, NodeInfo, E> {
        let error = WireError(format!("{} to node {}: {}", method.name(), self.target, status.message()));
        match status.code() {
            Code::Unavailable | Code::Unknown => RPCError::Unreachable(Unreachable::new(&error)),
            _ => RPCError::Network(NetworkError::new(&error)),
        }
    }

    // The error is the one openraft's `RaftNetwork` methods return; its size is openraft's.
    #[allow(clippy::result_large_err)]
    fn decode_reply<Resp, E>(&self, reply: &RaftPayload) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft reply", &reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    /// Sends `rpc` on this link's append stream, opening one if none is open, and reads its
    /// answer, all within `timeout`.
    async fn append_on_stream(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let deadline = tokio::time::Instant::now() + timeout;
        // A stream kept from an earlier message may have ended while idle (the peer
        // restarted, a connection was cut). An AppendEntries may arrive twice (Raft's followers
        // take a repeated one as they took the first), so a message that found its kept
        // stream closed is sent once more on a new one.
        let mut retry = self.stream.is_some();
        loop {
            let exchanged = tokio::time::timeout_at(deadline, self.exchange(codec::encode(rpc))).await;
            let failure = match exchanged {
                Ok(Ok(reply)) => return self.decode_reply(&reply),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    let error = WireError(format!("append entries to node {}: no answer in {timeout:?}", self.target));
                    return Err(RPCError::Network(NetworkError::new(&error)));
                }
            };
            match failure {
                StreamFailure::Closed(_) if std::mem::take(&mut retry) => continue,
                StreamFailure::Closed(why) => {
                    let error = WireError(format!("append entries to node {}: {why}", self.target));
                    return Err(RPCError::Unreachable(Unreachable::new(&error)));
                }
                StreamFailure::Status(status) if status.code() == Code::Unimplemented => {
                    // A peer built before streams: it keeps getting unary calls.
                    self.unary_only = true;
                    return self
                        .call(Method::Append, rpc, deadline.saturating_duration_since(tokio::time::Instant::now()))
                        .await;
                }
                StreamFailure::Status(status) => return Err(self.status_error(Method::Append, &status)),
            }
        }
    }

    /// One message and its answer on the open stream, or on a new one.
    async fn exchange(&mut self, data: Vec<u8>) -> Result<RaftPayload, StreamFailure> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.open().await?,
        };
        let sent = stream.requests.send(RaftPayload { data }).await;
        sent.map_err(|_| StreamFailure::Closed("the stream was closed".into()))?;
        match stream.replies.message().await {
            Ok(Some(reply)) => {
                self.stream = Some(stream);
                Ok(reply)
            }
            Ok(None) => Err(StreamFailure::Closed("the peer ended the stream".into())),
            Err(status) => Err(StreamFailure::from_status(status)),
        }
    }

    /// Opens an append stream to the peer: the call's headers go out and the peer's come back.
    /// The caller's deadline covers the opening; the stream has none, and lives as long as the
    /// link.
    async fn open(&self) -> Result<AppendStream, StreamFailure> {
        let channel = self
            .peers
            .channel(&self.node.grpc_addr)
            .map_err(|e| StreamFailure::Status(Status::unavailable(e.to_string())))?;
        let mut client = RaftServiceClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        let (requests, queued) = mpsc::channel(STREAM_QUEUE);
        match client.append_stream(self.peers.stream_request(ReceiverStream::new(queued))).await {
            Ok(response) => Ok(AppendStream { requests, replies: response.into_inner() }),
            Err(status) => Err(StreamFailure::Status(status)),
        }
    }
}

/// Largest answer a peer may send: a snapshot chunk's answer or a Raft error is small; the
/// limit is the same as unary calls'.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

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
        self.appends += 1;
        let reply = if self.unary_only || self.appends <= UNARY_APPENDS {
            self.call(Method::Append, &rpc, option.hard_ttl()).await?
        } else {
            self.append_on_stream(&rpc, option.hard_ttl()).await?
        };
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

    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use openraft::Vote;

    use crate::fake_peer::{serve, FakePeer};

    /// Four heartbeats through one link to `peer`, each acknowledged.
    async fn four_heartbeats(peer: &Arc<FakePeer>) {
        let addr = serve(peer.clone()).await;
        let node = NodeInfo { grpc_addr: addr, http_addr: String::new() };
        let mut link = NetworkFactory::new(PeerPool::new("secret", None).expect("pool")).new_client(2, &node).await;
        for i in 0..4 {
            let heartbeat = AppendEntriesRequest {
                vote: Vote::new_committed(1, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            };
            let reply = link.append_entries(heartbeat, RPCOption::new(Duration::from_secs(5))).await;
            assert!(matches!(reply, Ok(AppendEntriesResponse::Success)), "heartbeat {i}: {reply:?}");
        }
    }

    #[tokio::test]
    async fn a_link_streams_its_appends_after_the_first_and_sends_again_on_a_new_stream_when_one_closed() {
        let peer = Arc::new(FakePeer { append_streams: true, ..FakePeer::default() });
        four_heartbeats(&peer).await;
        assert_eq!(peer.append_calls.load(Ordering::SeqCst), 1, "the first goes as a call");
        assert_eq!(peer.append_messages.load(Ordering::SeqCst), 3, "the other three as stream messages");
        // The peer ends each stream after one answer: the third and fourth found the stream
        // they were given closed and went again on a new one.
        assert_eq!(peer.append_opened.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_link_to_a_peer_without_streams_keeps_making_calls() {
        let peer = Arc::new(FakePeer::default());
        four_heartbeats(&peer).await;
        assert_eq!(peer.append_calls.load(Ordering::SeqCst), 4, "every heartbeat answered by a call");
        assert_eq!(peer.append_opened.load(Ordering::SeqCst), 1, "a stream asked for once, not again");
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
