//! Writes a follower forwards to the leader, on one long-lived gRPC stream per leader
//! (`RaftService/ProposeStream`) instead of a unary call each (PERF W1).
//!
//! A unary call costs a new HTTP/2 stream each: request headers (HPACK, the cluster secret),
//! the leader's routing and tower layers, and an answer of headers, message and trailers.
//! Under a few concurrent clients a follower forwards batches of one or two writes, so that
//! cost was paid per write. Here every forwarded batch is one message of a stream, tagged
//! with an ID; the leader works on several at once and answers each as soon as it is applied,
//! with the same ID, in whatever order they finish.
//!
//! A stream that fails, or on which an answer does not come within the deadline, is dropped
//! and every forward waiting on it fails with a retryable error; the next forward opens a new
//! one. Resending is safe because every request carries an ID the state machine deduplicates
//! on. A leader without the stream (a build from before it) answers `Unimplemented`, and is
//! then sent unary calls for a minute before the stream is tried again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use xene_proto::raft_service_client::RaftServiceClient;
use xene_proto::{ProposeFrame, RaftPayload};
use xene_raft_store::{codec, ClientRequest, ClientResponse};

use crate::error::{Result, ServerError};
use crate::metrics::PROPOSE_METHOD;
use crate::node::{ClusterNode, ForwardReply};
use crate::peers::{PeerPool, StreamFailure};

/// Forwarded batches a leader works on at once for one stream; beyond it, it reads no more of
/// that stream until one is answered. A follower keeps at most three in flight
/// (`proposals::IN_FLIGHT`); the margin covers a follower that sends more.
const SERVED_AT_ONCE: usize = 16;

/// Most of a stream's messages queued ahead of the HTTP/2 connection.
const STREAM_QUEUE: usize = 4;

/// Largest answer a leader may send on the stream: the state machine's answer to a batch.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// A follower's forwarding to the leader: one stream to the leader it last forwarded to.
pub struct Forwarder {
    peers: PeerPool,
    /// The stream to the leader at its address. A lock held while a stream opens, so that
    /// concurrent forwards wait for that one instead of opening their own.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// Leaders' addresses that answered `Unimplemented`, and until when they get unary
    /// calls: a leader upgraded in place gets the stream again after [`UNARY_FOR`].
    unary_only: Mutex<HashMap<String, Instant>>,
}

/// How long a leader without the stream gets calls before the stream is tried again.
const UNARY_FOR: Duration = Duration::from_secs(60);

impl Forwarder {
    pub fn new(peers: PeerPool) -> Self {
        Forwarder { peers, link: tokio::sync::Mutex::default(), unary_only: Mutex::default() }
    }

    fn unary_only(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.unary_only.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `request` (one client's or a batch) to the leader at `address` and returns the
    /// state machine's answer; gives up after `deadline`.
    pub async fn forward(&self, address: &str, request: &ClientRequest, deadline: Duration) -> Result<ClientResponse> {
        if self.unary_only().get(address).is_some_and(|until| Instant::now() < *until) {
            return forward_call(&self.peers, address, deadline, request).await;
        }
        let started = tokio::time::Instant::now();
        let exchanged = tokio::time::timeout_at(started + deadline, self.exchange(address, request)).await;
        let failure = match exchanged {
            Ok(Ok(reply)) => return decode_reply(&reply),
            Ok(Err(failure)) => failure,
            Err(_) => {
                // The stream is not to be trusted: an answer may be lost in it. The next
                // forward opens a new one.
                self.discard(address).await;
                return Err(ServerError::unavailable(format!(
                    "forwarding to the leader at {address}: no answer in {deadline:?}; retry"
                )));
            }
        };
        match failure {
            StreamFailure::Status(status) if status.code() == Code::Unimplemented => {
                tracing::info!(leader = address, "the leader has no forwarding stream; forwarding by calls");
                self.unary_only().insert(address.to_string(), Instant::now() + UNARY_FOR);
                let left = (started + deadline).saturating_duration_since(tokio::time::Instant::now());
                forward_call(&self.peers, address, left, request).await
            }
            StreamFailure::Status(status) => {
                Err(ServerError::unavailable(format!("forwarding to the leader at {address}: {}", status.message())))
            }
            StreamFailure::Closed(why) => {
                Err(ServerError::unavailable(format!("forwarding to the leader at {address}: {why}; retry")))
            }
        }
    }

    /// One message and its answer, on the open stream to `address`. A stream kept from
    /// earlier forwards may have ended while idle (the leader restarted); a message that found
    /// it closed is sent once more on a new one.
    async fn exchange(&self, address: &str, request: &ClientRequest) -> std::result::Result<Vec<u8>, StreamFailure> {
        let mut retry = true;
        loop {
            let (link, fresh) = self.link(address).await?;
            match link.exchange(codec::encode(request)).await {
                Ok(reply) => return Ok(reply),
                Err(failure) => {
                    self.discard_link(&link).await;
                    match failure {
                        StreamFailure::Closed(_) if !fresh && std::mem::take(&mut retry) => continue,
                        failure => return Err(failure),
                    }
                }
            }
        }
    }

    /// The open stream to `address`, or a new one (`true` when new). A stream to another
    /// address (an earlier leader) is closed.
    async fn link(&self, address: &str) -> std::result::Result<(Arc<Link>, bool), StreamFailure> {
        let mut slot = self.link.lock().await;
        if let Some(link) = slot.as_ref() {
            if link.address == address && !link.ended() {
                return Ok((Arc::clone(link), false));
            }
        }
        *slot = None;
        let link = Arc::new(Link::open(&self.peers, address).await?);
        *slot = Some(Arc::clone(&link));
        Ok((link, true))
    }

    /// Drops the stream to `address`, if it is the open one.
    async fn discard(&self, address: &str) {
        let mut slot = self.link.lock().await;
        if slot.as_ref().is_some_and(|link| link.address == address) {
            *slot = None;
        }
    }

    /// Drops `link` if it is still the open one (another forward may have replaced it).
    async fn discard_link(&self, link: &Arc<Link>) {
        let mut slot = self.link.lock().await;
        if slot.as_ref().is_some_and(|open| Arc::ptr_eq(open, link)) {
            *slot = None;
        }
    }
}

/// One open `ProposeStream`: messages go out through `requests`; a reader task hands each
/// answer to the forward waiting for its ID. Dropping the link ends the stream and the task.
struct Link {
    address: String,
    requests: mpsc::Sender<ProposeFrame>,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

/// The forwards waiting for their answers, and why the stream ended once it has.
#[derive(Default)]
struct Waiting {
    state: Mutex<WaitingState>,
}

#[derive(Default)]
struct WaitingState {
    answers: HashMap<u64, oneshot::Sender<std::result::Result<Vec<u8>, StreamFailure>>>,
    ended: Option<StreamFailure>,
}

impl Waiting {
    fn state(&self) -> MutexGuard<'_, WaitingState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the stream ended and fails every forward still waiting on it.
    fn end(&self, failure: StreamFailure) {
        let answers = {
            let mut state = self.state();
            state.ended = Some(failure.clone());
            std::mem::take(&mut state.answers)
        };
        for (_, answer) in answers {
            let _ = answer.send(Err(failure.clone()));
        }
    }
}

impl Link {
    /// Opens a stream to the leader at `address`: the call's headers go out and the leader's
    /// come back (the caller's deadline covers this). The stream itself has no deadline.
    async fn open(peers: &PeerPool, address: &str) -> std::result::Result<Link, StreamFailure> {
        let channel = peers.channel(address).map_err(|e| StreamFailure::Status(Status::unavailable(e.to_string())))?;
        let mut client = RaftServiceClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        let (requests, queued) = mpsc::channel(STREAM_QUEUE);
        let replies = match client.propose_stream(peers.stream_request(ReceiverStream::new(queued))).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(StreamFailure::from_status(status)),
        };
        let waiting = Arc::new(Waiting::default());
        let reader = tokio::spawn(read_answers(replies, Arc::clone(&waiting)));
        Ok(Link { address: address.to_string(), requests, waiting, next_id: AtomicU64::new(0), reader })
    }

    fn ended(&self) -> bool {
        self.waiting.state().ended.is_some()
    }

    /// Sends one message and waits for its answer.
    async fn exchange(&self, data: Vec<u8>) -> std::result::Result<Vec<u8>, StreamFailure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.waiting.state();
            if let Some(failure) = &state.ended {
                return Err(failure.clone());
            }
            state.answers.insert(id, answer);
        }
        // A forward that gives up (its caller went away, its deadline passed) leaves no
        // entry behind; a late answer to it is dropped by the reader.
        let _forget = Forget { waiting: &self.waiting, id };
        if self.requests.send(ProposeFrame { id, data }).await.is_err() {
            return Err(StreamFailure::Closed("the stream was closed".into()));
        }
        answered.await.unwrap_or_else(|_| Err(StreamFailure::Closed("the stream was closed".into())))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The request stream ends with `requests`; the reader would end when the leader then
        // ends its answers, or when the connection's keepalive gives up on a silent leader.
        // Nothing waits on it any more, so it ends now.
        self.reader.abort();
    }
}

/// Removes a forward's entry from the waiting list when the forward is dropped or done.
struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting.state().answers.remove(&self.id);
    }
}

/// The reader task of a link: hands each answer to the forward waiting for its ID, until the
/// stream ends; then fails whatever still waits.
async fn read_answers(mut replies: Streaming<ProposeFrame>, waiting: Arc<Waiting>) {
    let failure = loop {
        match replies.message().await {
            Ok(Some(frame)) => {
                let answer = waiting.state().answers.remove(&frame.id);
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(frame.data));
                }
            }
            Ok(None) => break StreamFailure::Closed("the leader ended the stream".into()),
            Err(status) => break StreamFailure::from_status(status),
        }
    };
    waiting.end(failure);
}

fn decode_reply(data: &[u8]) -> Result<ClientResponse> {
    let reply: ForwardReply =
        codec::decode("forwarded reply", data).map_err(|e| ServerError::Internal(e.to_string()))?;
    match reply {
        ForwardReply::Applied(response) => Ok(response),
        ForwardReply::NotLeader { .. } => Err(ServerError::unavailable("the leader changed; retry")),
        ForwardReply::Unavailable(message) => Err(ServerError::unavailable(message)),
    }
}

/// One forwarding call, for a leader without the stream.
async fn forward_call(
    peers: &PeerPool,
    address: &str,
    deadline: Duration,
    request: &ClientRequest,
) -> Result<ClientResponse> {
    let mut client = peers.client(address)?;
    let payload = RaftPayload { data: codec::encode(request) };
    let reply = client
        .propose(peers.request(payload, deadline))
        .await
        .map_err(|s| ServerError::unavailable(format!("forwarding to the leader: {}", s.message())))?;
    decode_reply(&reply.into_inner().data)
}

/// On the leader: the answer to one forwarded proposal, `data` being a store
/// `ClientRequest`. An error only for a message that is no proposal.
pub async fn answer(node: &ClusterNode, data: &[u8]) -> std::result::Result<Vec<u8>, Status> {
    let proposal: ClientRequest =
        codec::decode("forwarded proposal", data).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let answer = if !node.is_leader() {
        ForwardReply::NotLeader { leader: node.leader().map(|(id, _)| id) }
    } else {
        match node.propose_local(proposal).await {
            Ok(response) => ForwardReply::Applied(response),
            Err(e) => ForwardReply::Unavailable(e.to_string()),
        }
    };
    Ok(codec::encode(&answer))
}

/// The answers of one forwarding stream.
pub type Answers = Pin<Box<dyn Stream<Item = std::result::Result<ProposeFrame, Status>> + Send>>;

/// On the leader: answers the messages of one forwarding stream, up to [`SERVED_AT_ONCE`]
/// at a time, each as soon as it is done. The stream ends when the follower ends its side and
/// every message is answered, or with the first message that is no proposal.
pub fn serve(requests: Streaming<ProposeFrame>, node: Arc<ClusterNode>) -> Answers {
    let state = Serving { requests, node, working: FuturesUnordered::new(), reading: true };
    Box::pin(futures::stream::unfold(Some(state), |state| async move { state?.next_answer().await }))
}

type Working = FuturesUnordered<BoxFuture<'static, std::result::Result<ProposeFrame, Status>>>;

struct Serving {
    requests: Streaming<ProposeFrame>,
    node: Arc<ClusterNode>,
    working: Working,
    /// The follower has not ended its side yet.
    reading: bool,
}

impl Serving {
    /// The next answer, with the state for the one after (`None` after an error).
    async fn next_answer(mut self) -> Option<(std::result::Result<ProposeFrame, Status>, Option<Serving>)> {
        loop {
            let room = self.reading && self.working.len() < SERVED_AT_ONCE;
            tokio::select! {
                // Reading a message is cancel-safe: a message half read stays in `requests`.
                message = self.requests.message(), if room => match message {
                    Ok(Some(frame)) => {
                        let node = Arc::clone(&self.node);
                        self.working.push(Box::pin(async move {
                            let started = Instant::now();
                            let data = answer(&node, &frame.data).await?;
                            // Counted as the unary call it replaces, so the API metrics read
                            // the same either way.
                            node.metrics.observe_call(PROPOSE_METHOD, "0", started.elapsed());
                            Ok(ProposeFrame { id: frame.id, data })
                        }));
                    }
                    Ok(None) => self.reading = false,
                    Err(status) => return Some((Err(status), None)),
                },
                Some(done) = self.working.next(), if !self.working.is_empty() => {
                    let keep = done.is_ok();
                    return Some((done, keep.then_some(self)));
                }
                else => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use xene_raft_store::{Command, Txn};

    use super::*;
    use crate::fake_peer::{serve, FakePeer};

    fn request(id: u64) -> ClientRequest {
        let command = Command::Txn(Txn { compare: vec![], success: vec![], failure: vec![] });
        ClientRequest { client_id: "follower".into(), request_id: id, timestamp_ms: 0, command }
    }

    /// Forwards request `id` to the fake leader at `addr`; returns the revision it was
    /// answered with, which the fake sets to the request's ID.
    async fn forward(forwarder: &Forwarder, addr: &str, id: u64) -> u64 {
        match forwarder.forward(addr, &request(id), Duration::from_secs(5)).await {
            Ok(ClientResponse::Txn(answer)) => answer.revision,
            other => panic!("forward {id}: {other:?}"),
        }
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(PeerPool::new("secret", None).expect("pool"))
    }

    #[tokio::test]
    async fn forwards_in_flight_together_share_one_stream_and_each_gets_its_own_answer() {
        // The fake leader answers three messages at a time, last first.
        let peer = Arc::new(FakePeer { propose_streams: true, gather: 3, ..FakePeer::default() });
        let addr = serve(peer.clone()).await;
        let forwarder = forwarder();
        for round in 0..2 {
            let ids = [1, 2, 3].map(|i| round * 10 + i);
            let (a, b, c) = tokio::join!(
                forward(&forwarder, &addr, ids[0]),
                forward(&forwarder, &addr, ids[1]),
                forward(&forwarder, &addr, ids[2]),
            );
            assert_eq!([a, b, c], ids, "round {round}: each forward got the answer to its own message");
        }
        assert_eq!(peer.propose_opened.load(SeqCst), 1, "one stream for both rounds");
        assert_eq!(peer.propose_messages.load(SeqCst), 6);
        assert_eq!(peer.propose_calls.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn a_forward_whose_stream_ends_before_its_answer_goes_again_on_a_new_stream() {
        // Each stream answers its first message and ends at its second, unanswered.
        let peer = Arc::new(FakePeer { propose_streams: true, end_at_message: Some(2), ..FakePeer::default() });
        let addr = serve(peer.clone()).await;
        let forwarder = forwarder();
        for id in 1..=4 {
            assert_eq!(forward(&forwarder, &addr, id).await, id);
        }
        // Forwards 2 to 4 each lost a stream and went again on a new one.
        assert_eq!(peer.propose_opened.load(SeqCst), 4);
        assert_eq!(peer.propose_messages.load(SeqCst), 7);
    }

    #[tokio::test]
    async fn a_leader_without_the_stream_gets_calls_for_a_while() {
        let peer = Arc::new(FakePeer::default());
        let addr = serve(peer.clone()).await;
        let forwarder = forwarder();
        for id in 1..=4 {
            assert_eq!(forward(&forwarder, &addr, id).await, id);
        }
        assert_eq!(peer.propose_calls.load(SeqCst), 4, "every forward answered by a call");
        assert_eq!(peer.propose_opened.load(SeqCst), 1, "a stream asked for once, not again");
        // Once the leader's time on calls is over (as if upgraded), the stream is asked again.
        forwarder.unary_only().insert(addr.clone(), Instant::now());
        assert_eq!(forward(&forwarder, &addr, 5).await, 5);
        assert_eq!(peer.propose_opened.load(SeqCst), 2, "the stream asked for again");
        assert_eq!(peer.propose_calls.load(SeqCst), 5);
    }

    #[tokio::test]
    async fn a_forward_without_an_answer_in_time_fails_retryably_and_drops_its_stream() {
        // The fake leader waits for a second message that never comes.
        let peer = Arc::new(FakePeer { propose_streams: true, gather: 2, ..FakePeer::default() });
        let addr = serve(peer.clone()).await;
        let forwarder = forwarder();
        let error = forwarder.forward(&addr, &request(1), Duration::from_millis(300)).await.expect_err("no answer");
        assert!(error.is_retryable(), "{error}");
        assert!(error.to_string().contains("no answer in 300ms"), "{error}");
        assert!(forwarder.link.lock().await.is_none(), "the stream is not kept");
    }
}
