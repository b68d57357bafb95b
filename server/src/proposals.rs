//! Group commit of proposals (PERF W1): requests that arrive while earlier ones are still in
//! flight travel together.
//!
//! openraft 0.9.25 appends and replicates every `client_write` as its own entry, one after
//! another inside its core task, so a leader under many concurrent writes spent its time on
//! per-entry work while its disk and CPU were half idle. Here at most [`IN_FLIGHT`]
//! submissions are in flight at a time; whatever queues up meanwhile leaves as one
//! [`Command::Batch`] when one of them is done. On the leader a submission is one Raft entry;
//! on a follower it is one forwarded message to the leader, whose entry then holds the whole
//! batch. A caller whose request leaves alone submits it from its own task, so a single client
//! pays no hand-off between tasks; a batch goes from a task of its own.
//!
//! A batch never holds two writes of one key, nor a prefix delete beside anything else: a
//! key still changes at most once per revision, as watchers and `mod_revision` compares
//! expect (DESIGN §4.3, §4.6). Requests leave in the order they arrived.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{oneshot, Semaphore};
use xene_raft_store::{ClientRequest, ClientResponse, Command, NodeId, NodeInfo, Op, Raft};

use crate::error::{Result, ServerError};

/// Submissions in flight at once. More than one keeps openraft's core busy while an entry
/// waits for the followers; few enough that waiting requests gather into batches.
const IN_FLIGHT: usize = 3;
/// Most requests in one entry.
const MAX_REQUESTS: usize = 512;
/// Most bytes (by [`ClientRequest::approx_len`]) in one entry beyond its first request: well
/// under what one AppendEntries carries, so an entry replicates in one message.
const MAX_BYTES: usize = 64 * 1024;

type Reply = oneshot::Sender<Result<ClientResponse>>;

/// Where a submission goes: `client_write` on the leader, a forwarded message on a follower.
pub type Submit = Arc<dyn Fn(ClientRequest) -> BoxFuture<'static, Result<ClientResponse>> + Send + Sync>;

/// Submits to `raft`, which must lead.
pub fn to_raft(raft: &Raft) -> Submit {
    let raft = raft.clone();
    Arc::new(move |request| {
        let raft = raft.clone();
        Box::pin(
            async move { raft.client_write(request).await.map(|written| written.data).map_err(|e| write_error(&e)) },
        )
    })
}

/// A queued request: its ticket (to find it again), the request and where its answer goes.
type Queued = (u64, ClientRequest, Reply);

/// The queue of one server's proposals and the permits of the submissions in flight.
pub struct Proposals {
    queue: Mutex<VecDeque<Queued>>,
    tickets: AtomicU64,
    permits: Arc<Semaphore>,
    /// Observes the number of requests of each entry written.
    sizes: Histogram,
}

impl Proposals {
    pub fn new(sizes: Histogram) -> Self {
        Proposals {
            queue: Mutex::default(),
            tickets: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            sizes,
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Submits `request`, alone or with the requests queued beside it, and returns the state
    /// machine's answer to it.
    pub async fn write(&self, submit: &Submit, request: ClientRequest) -> Result<ClientResponse> {
        let (reply, mut answer) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        self.queue().push_back((ticket, request, reply));
        // A caller that gives up (its client went away) takes its request back if it has not
        // left yet, rather than leaving it for whoever writes next.
        let mut unqueue = Unqueue { proposals: self, ticket: Some(ticket) };
        loop {
            tokio::select! {
                biased;
                answered = &mut answer => {
                    // Answered, so it left the queue: nothing to take back.
                    unqueue.ticket = None;
                    return answered.unwrap_or_else(|_| Err(dropped()));
                }
                permit = Arc::clone(&self.permits).acquire_owned() => {
                    let Ok(permit) = permit else { return Err(dropped()) };
                    let batch = take_batch(&mut self.queue());
                    if batch.is_empty() {
                        // Another caller took this request with its batch and will answer.
                        unqueue.ticket = None;
                        drop(permit);
                        return answer.await.unwrap_or_else(|_| Err(dropped()));
                    }
                    self.sizes.observe(batch.len() as f64);
                    if let [(mine, _, _)] = batch.as_slice() {
                        if *mine == ticket {
                            // Its own request alone: submitted here, with no task between it
                            // and its answer. Giving up drops it, and nobody else's.
                            unqueue.ticket = None;
                            send(submit, untick(batch)).await;
                            drop(permit);
                            return answer.await.unwrap_or_else(|_| Err(dropped()));
                        }
                    }
                    let batch = untick(batch);
                    // Its own task, so that a caller giving up does not drop the answers of
                    // the others in its batch. It ends when the submission is answered:
                    // openraft answers every pending write when it shuts down, and a
                    // forward has a deadline.
                    let submit = Arc::clone(submit);
                    tokio::spawn(async move {
                        send(&submit, batch).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Removes a caller's request from the queue when the caller is dropped before it left;
/// `ticket` is cleared once the request is known to have left.
struct Unqueue<'a> {
    proposals: &'a Proposals,
    ticket: Option<u64>,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let Some(mine) = self.ticket else { return };
        let mut queue = self.proposals.queue();
        if let Some(at) = queue.iter().position(|(ticket, _, _)| *ticket == mine) {
            queue.remove(at);
        }
    }
}

fn dropped() -> ServerError {
    ServerError::unavailable("the write was dropped before it was answered (the server is stopping); retry")
}

/// Takes the requests for one entry from the front of `queue`: in order, up to the limits,
/// stopping before a request that touches a key the batch already writes.
fn take_batch(queue: &mut VecDeque<Queued>) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut keys: HashSet<Vec<u8>> = HashSet::new();
    while let Some((_, request, _)) = queue.front() {
        let len = request.approx_len();
        // `None`: a prefix delete (or anything else this cannot reason about), which goes alone.
        let written = written_keys(request);
        if !batch.is_empty() {
            let fits = batch.len() < MAX_REQUESTS && bytes + len <= MAX_BYTES;
            let disjoint = written.as_ref().is_some_and(|w| w.iter().all(|k| !keys.contains(*k)));
            if !fits || !disjoint {
                break;
            }
        }
        let alone = written.is_none();
        keys.extend(written.into_iter().flatten().map(<[u8]>::to_vec));
        bytes += len;
        let Some(queued) = queue.pop_front() else { break };
        batch.push(queued);
        if alone {
            break;
        }
    }
    batch
}

/// A batch without its tickets.
fn untick(batch: Vec<Queued>) -> Vec<(ClientRequest, Reply)> {
    batch.into_iter().map(|(_, request, reply)| (request, reply)).collect()
}

/// The keys a request may write (either branch of a transaction), or `None` when it may
/// write keys it does not name.
fn written_keys(request: &ClientRequest) -> Option<Vec<&[u8]>> {
    let Command::Txn(txn) = &request.command else { return None };
    let mut keys = Vec::new();
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            Op::Put { key, .. } | Op::PutPrev { key, .. } | Op::Delete { key } | Op::DeletePrev { key } => {
                keys.push(key.as_slice())
            }
            Op::Get { .. } => {}
            Op::DeletePrefix { .. } | Op::DeletePrefixPrev { .. } => return None,
        }
    }
    Some(keys)
}

/// Submits one batch and answers every request in it.
async fn send(submit: &Submit, mut batch: Vec<(ClientRequest, Reply)>) {
    if batch.len() == 1 {
        let Some((request, reply)) = batch.pop() else { return };
        // The caller may have given up; nobody is left to tell.
        let _ = reply.send(submit(request).await);
        return;
    }
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let count = requests.len();
    let wrapper = ClientRequest {
        // No identity of its own: each request inside is deduplicated on its own.
        client_id: String::new(),
        request_id: 0,
        timestamp_ms: requests.iter().map(|r| r.timestamp_ms).max().unwrap_or_default(),
        command: Command::Batch(requests),
    };
    match submit(wrapper).await {
        Ok(ClientResponse::Batch(answers)) if answers.len() == count => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(other) => {
            let message = format!("a batch of {count} writes was answered with {other:?}");
            for reply in replies {
                let _ = reply.send(Err(ServerError::Internal(message.clone())));
            }
        }
        Err(e) => {
            // Every caller gets the error; a retryable one is retried by each on its own
            // (deduplication makes that safe).
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// What a failed write tells its caller.
fn write_error(e: &RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ServerError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ServerError::Unavailable {
            message: "this server is no longer the leader; retry".into(),
            leader: f.leader_node.as_ref().map(|n| n.grpc_addr.clone()),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ServerError::FailedPrecondition(e.to_string())
        }
        RaftError::Fatal(e) => ServerError::unavailable(format!("raft stopped: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xene_raft_store::{Txn, TxnResponse};

    fn put(key: &str, value_len: usize) -> ClientRequest {
        ClientRequest {
            client_id: "c".into(),
            request_id: 1,
            timestamp_ms: 0,
            command: Command::Txn(Txn {
                compare: vec![],
                success: vec![Op::Put { key: key.as_bytes().to_vec(), value: vec![0; value_len] }],
                failure: vec![],
            }),
        }
    }

    fn delete_prefix(prefix: &str) -> ClientRequest {
        let mut request = put("x", 0);
        request.command = Command::Txn(Txn {
            compare: vec![],
            success: vec![Op::DeletePrefix { prefix: prefix.as_bytes().to_vec() }],
            failure: vec![],
        });
        request
    }

    /// A task's ID as a number, to pass through a response.
    fn task_number(id: tokio::task::Id) -> u64 {
        id.to_string().parse().expect("a task ID is a number")
    }

    fn queue_of(requests: Vec<ClientRequest>) -> VecDeque<Queued> {
        requests.into_iter().enumerate().map(|(i, r)| (i as u64, r, oneshot::channel().0)).collect()
    }

    fn keys_of(batch: &[Queued]) -> Vec<String> {
        batch
            .iter()
            .map(|(_, r, _)| match &r.command {
                Command::Txn(txn) => match &txn.success[0] {
                    Op::Put { key, .. } => String::from_utf8_lossy(key).into_owned(),
                    Op::DeletePrefix { prefix } => format!("{}*", String::from_utf8_lossy(prefix)),
                    other => format!("{other:?}"),
                },
                Command::Batch(_) => "batch".into(),
            })
            .collect()
    }

    #[test]
    fn a_batch_stops_before_a_second_write_of_a_key_and_keeps_the_order() {
        let mut queue = queue_of(vec![put("a", 1), put("b", 1), put("a", 1), put("c", 1)]);
        assert_eq!(keys_of(&take_batch(&mut queue)), ["a", "b"]);
        assert_eq!(keys_of(&take_batch(&mut queue)), ["a", "c"]);
        assert!(take_batch(&mut queue).is_empty());
    }

    #[test]
    fn a_prefix_delete_goes_alone() {
        let mut queue = queue_of(vec![put("a", 1), delete_prefix("a"), put("b", 1)]);
        assert_eq!(keys_of(&take_batch(&mut queue)), ["a"]);
        assert_eq!(keys_of(&take_batch(&mut queue)), ["a*"]);
        assert_eq!(keys_of(&take_batch(&mut queue)), ["b"]);
    }

    #[test]
    fn a_batch_is_cut_by_size_and_count_but_always_takes_one() {
        let mut queue = queue_of((0..40).map(|i| put(&format!("k{i}"), 4_000)).collect());
        let first = take_batch(&mut queue);
        assert!(first.len() > 1 && first.len() < 40, "cut by bytes, got {}", first.len());
        let mut huge = queue_of(vec![put("h", MAX_BYTES * 2), put("i", 1)]);
        assert_eq!(keys_of(&take_batch(&mut huge)), ["h"], "an oversized request goes alone");
        let mut many = queue_of((0..MAX_REQUESTS + 5).map(|i| put(&format!("k{i}"), 1)).collect());
        assert_eq!(take_batch(&mut many).len(), MAX_REQUESTS);
        assert_eq!(take_batch(&mut many).len(), 5);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_takes_its_request_back() {
        use prometheus_client::metrics::histogram::exponential_buckets;
        let proposals = Arc::new(Proposals::new(Histogram::new(exponential_buckets(1.0, 2.0, 2))));
        let never: Submit = Arc::new(|_| Box::pin(std::future::pending()));
        // Every permit held by a submission that never ends.
        let mut hung = Vec::new();
        for i in 0..IN_FLIGHT {
            let (proposals, never) = (Arc::clone(&proposals), Arc::clone(&never));
            hung.push(tokio::spawn(async move { proposals.write(&never, put(&format!("h{i}"), 1)).await }));
        }
        while proposals.permits.available_permits() > 0 || !proposals.queue().is_empty() {
            tokio::task::yield_now().await;
        }
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(50), proposals.write(&never, put("late", 1))).await;
        assert!(gave_up.is_err(), "no permit was free, so the write waited");
        assert!(proposals.queue().is_empty(), "the abandoned request left the queue with its caller");
        for task in hung {
            task.abort();
        }
    }

    #[tokio::test]
    async fn a_lone_request_is_submitted_by_its_caller_and_giving_up_ends_it() {
        use prometheus_client::metrics::histogram::exponential_buckets;
        let proposals = Arc::new(Proposals::new(Histogram::new(exponential_buckets(1.0, 2.0, 2))));
        // The submission reports the task it runs in; the caller is a task of its own.
        let here: Submit = Arc::new(|_| {
            let submitter = tokio::task::try_id();
            Box::pin(async move {
                Ok(ClientResponse::Txn(TxnResponse {
                    revision: submitter.map_or(0, task_number),
                    ..TxnResponse::default()
                }))
            })
        });
        let writer = Arc::clone(&proposals);
        let (caller, answer) = tokio::spawn(async move { (tokio::task::id(), writer.write(&here, put("a", 1)).await) })
            .await
            .expect("the caller's task");
        match answer {
            Ok(ClientResponse::Txn(t)) => {
                assert_eq!(t.revision, task_number(caller), "submitted from the caller's task")
            }
            other => panic!("{other:?}"),
        }
        // A caller that gives up while its lone request is submitted ends the submission and
        // frees its permit: no task is left waiting on its behalf.
        let never: Submit = Arc::new(|_| Box::pin(std::future::pending()));
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), proposals.write(&never, put("b", 1))).await;
        assert!(gave_up.is_err(), "the submission never ends");
        assert_eq!(proposals.permits.available_permits(), IN_FLIGHT, "the permit went with the caller");
        assert!(proposals.queue().is_empty());
    }
}
