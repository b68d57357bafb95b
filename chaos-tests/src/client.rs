//! A `KvService` client for chaos scenarios: it reaches every server through its client
//! proxy, retries an operation on the next server after an error or a timeout until the
//! operation's deadline, and says when the outcome of a write stays unknown.
//!
//! Writes are transactions carrying one request ID for all their attempts, so a retry of a
//! write that did apply is answered `replayed` instead of applying twice (DESIGN §4.4).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Status};
use xene_proto as pb;
use xene_proto::kv_service_client::KvServiceClient;

use crate::network::Network;

/// How long one attempt, and one operation with all its attempts, may take.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub attempt: Duration,
    pub operation: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { attempt: Duration::from_millis(1500), operation: Duration::from_secs(5) }
    }
}

/// How a write ended.
#[derive(Debug)]
pub enum WriteOutcome {
    /// A server answered.
    Answered(pb::TxnResponse),
    /// No attempt got an answer and at least one may have applied.
    Indeterminate,
    /// Every attempt was refused before anything could apply.
    NotApplied,
}

/// Whether a failed attempt may have applied the write anyway. Refusals before proposing
/// (authentication, validation) did not; anything else (a timeout, `Unavailable`, a broken
/// connection) may have.
pub fn may_have_applied(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition
    )
}

/// A retrying client of every server of one cluster.
pub struct ChaosClient {
    name: String,
    servers: Vec<KvServiceClient<Channel>>,
    token: String,
    deadlines: Deadlines,
    rng: StdRng,
    next_request: u64,
    /// Failed attempts by operation and cause, for the report.
    pub failed_attempts: BTreeMap<String, u64>,
}

impl ChaosClient {
    /// A client named `name` (its request IDs' client ID) with its own connections to every
    /// server through the network's client proxies.
    pub fn new(name: &str, network: &Network, token: &str, deadlines: Deadlines, rng: StdRng) -> ChaosClient {
        ChaosClient {
            name: name.to_string(),
            servers: (0..network.servers()).map(|i| KvServiceClient::new(network.client_channel(i))).collect(),
            token: token.to_string(),
            deadlines,
            rng,
            next_request: 0,
            failed_attempts: BTreeMap::new(),
        }
    }

    /// The client's own random stream, for choosing what to do next.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        authorized(message, &self.token, self.deadlines.attempt)
    }

    fn failed(&mut self, what: &str, status: Option<&Status>) {
        let cause = status.map_or_else(|| "timeout".to_string(), |s| format!("{:?}", s.code()));
        *self.failed_attempts.entry(format!("{what} {cause}")).or_default() += 1;
    }

    fn first_server(&mut self) -> usize {
        self.rng.random_range(0..self.servers.len())
    }

    /// Runs `txn` with a fresh request ID, retrying on the next server until an answer or the
    /// operation's deadline.
    pub async fn txn(&mut self, mut txn: pb::TxnRequest) -> WriteOutcome {
        self.next_request += 1;
        txn.id = Some(pb::RequestId { client_id: self.name.clone(), request_id: self.next_request });
        let deadline = Instant::now() + self.deadlines.operation;
        let mut server = self.first_server();
        let mut ambiguous = false;
        loop {
            let request = self.request(txn.clone());
            match tokio::time::timeout(self.deadlines.attempt, self.servers[server].txn(request)).await {
                Ok(Ok(reply)) => return WriteOutcome::Answered(reply.into_inner()),
                Ok(Err(status)) => {
                    ambiguous |= may_have_applied(&status);
                    self.failed("write", Some(&status));
                }
                Err(_) => {
                    ambiguous = true;
                    self.failed("write", None);
                }
            }
            if Instant::now() >= deadline {
                return if ambiguous { WriteOutcome::Indeterminate } else { WriteOutcome::NotApplied };
            }
            server = (server + 1) % self.servers.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A range read (linearizable unless `serializable`), retried on the next server until an
    /// answer or the operation's deadline; `None` if no server answered.
    pub async fn range(&mut self, key: &[u8], prefix: bool, serializable: bool) -> Option<pb::RangeResponse> {
        let deadline = Instant::now() + self.deadlines.operation;
        let mut server = self.first_server();
        loop {
            let request = self.request(pb::RangeRequest { key: key.to_vec(), prefix, limit: 0, serializable });
            match tokio::time::timeout(self.deadlines.attempt, self.servers[server].range(request)).await {
                Ok(Ok(reply)) => return Some(reply.into_inner()),
                Ok(Err(status)) => self.failed("read", Some(&status)),
                Err(_) => self.failed("read", None),
            }
            if Instant::now() >= deadline {
                return None;
            }
            server = (server + 1) % self.servers.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The connection to server `index`, for calls this client does not wrap (watches).
    pub fn server(&self, index: usize) -> KvServiceClient<Channel> {
        self.servers[index].clone()
    }

    pub fn servers(&self) -> usize {
        self.servers.len()
    }
}

/// A request carrying `token` and a deadline.
pub fn authorized<T>(message: T, token: &str, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("invariant: tokens are printable ASCII");
    request.metadata_mut().insert("authorization", value);
    request.set_timeout(timeout);
    request
}

/// A transaction op putting `value` at `key`.
pub fn put_op(key: &[u8], value: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::Put(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            id: None,
            prev_kv: false,
        })),
    }
}

/// A transaction op deleting `key`.
pub fn delete_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::Delete(pb::DeleteRequest {
            key: key.to_vec(),
            prefix: false,
            id: None,
            prev_kv: false,
        })),
    }
}
