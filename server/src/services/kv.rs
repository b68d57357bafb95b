//! `KvService`: the raw revisioned store (DESIGN §4.3–§4.6, §11.1), admin tokens only.
//! Writes go through Raft (forwarded to the leader); reads are linearizable unless the
//! request asks for a serializable one. Its calls' spans are at debug level: these calls
//! come by the thousand a second (PERF W1, W2), and an enabled span allocates on each.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::kv_service_server::KvService;
use xene_raft_store::{ClientRequest, ClientResponse, Command, OpResult, StoreError, Txn, WatchKeys};

use crate::auth::{Role, TokenCache};
use crate::convert::{delete_from_pb, event_to_pb, kv_to_pb, put_from_pb, result_to_pb, txn_from_pb};
use crate::error::{Result as ServerResult, ServerError};
use crate::node::{now_ms, ClusterNode};

/// The `KvService` implementation.
pub struct KvApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
    stop: CancellationToken,
}

/// The outcome of a write, whichever way the store answered.
struct Written {
    revision: u64,
    succeeded: bool,
    results: Vec<OpResult>,
    replayed: bool,
}

impl KvApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache, stop: CancellationToken) -> Self {
        KvApi { node, tokens, stop }
    }

    fn header(&self, revision: u64) -> pb::ResponseHeader {
        // Borrowed, not cloned: two numbers are needed, on every request.
        let metrics = self.node.raft.metrics();
        let metrics = metrics.borrow();
        pb::ResponseHeader {
            revision,
            member_id: self.node.id,
            raft_term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
        }
    }

    /// Validates, proposes and unpacks a transaction. A client-supplied request ID makes the
    /// write idempotent across the client's own retries; otherwise the server's is used.
    async fn write(&self, txn: Txn, id: Option<pb::RequestId>) -> ServerResult<Written> {
        txn.check_limits()?;
        let request = match id {
            Some(id) if !id.client_id.is_empty() && id.request_id != 0 => ClientRequest {
                client_id: format!("client/{}", id.client_id),
                request_id: id.request_id,
                timestamp_ms: now_ms(),
                command: Command::Txn(txn),
            },
            _ => self.node.request(Command::Txn(txn)),
        };
        match self.node.propose(request).await? {
            ClientResponse::Txn(t) => {
                Ok(Written { revision: t.revision, succeeded: t.succeeded, results: t.results, replayed: false })
            }
            ClientResponse::Duplicate(d) => {
                Ok(Written { revision: d.revision, succeeded: d.succeeded, results: vec![], replayed: true })
            }
            ClientResponse::Rejected(rejection) => Err(rejection.into()),
            ClientResponse::Empty | ClientResponse::Batch(_) => {
                Err(ServerError::Internal("not a transaction's answer to a transaction".into()))
            }
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KvService for KvApi {
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let mut put = request.into_inner();
        let id = put.id.take();
        let txn = Txn { success: vec![put_from_pb(put)], ..Txn::default() };
        let written = self.write(txn, id).await?;
        let header = self.header(written.revision);
        let mut response = match written.results.into_iter().next().and_then(|r| result_to_pb(r, &header).response) {
            Some(pb::response_op::Response::Put(put)) => put,
            _ => pb::PutResponse { header: Some(header), ..pb::PutResponse::default() },
        };
        response.replayed = written.replayed;
        Ok(Response::new(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let range = request.into_inner();
        if !range.serializable {
            self.node.read_barrier().await?;
        }
        let result = self.node.reader.range(range.key, range.prefix, range.limit).await.map_err(ServerError::from)?;
        Ok(Response::new(pb::RangeResponse {
            header: Some(self.header(result.revision)),
            kvs: result.kvs.into_iter().map(kv_to_pb).collect(),
            more: result.more,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let mut delete = request.into_inner();
        let id = delete.id.take();
        let written = self.write(Txn { success: vec![delete_from_pb(delete)], ..Txn::default() }, id).await?;
        let header = self.header(written.revision);
        let mut response = match written.results.into_iter().next().and_then(|r| result_to_pb(r, &header).response) {
            Some(pb::response_op::Response::Delete(delete)) => delete,
            _ => pb::DeleteResponse { header: Some(header), ..pb::DeleteResponse::default() },
        };
        response.replayed = written.replayed;
        Ok(Response::new(response))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let mut request = request.into_inner();
        let id = request.id.take();
        let txn = txn_from_pb(request)?;
        let written = self.write(txn, id).await?;
        let header = self.header(written.revision);
        Ok(Response::new(pb::TxnResponse {
            header: Some(header),
            succeeded: written.succeeded,
            responses: written.results.into_iter().map(|r| result_to_pb(r, &header)).collect(),
            replayed: written.replayed,
        }))
    }

    type WatchStream = WatchStream;

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node.id))]
    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let watch = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let header = self.header(0);
        // `prefix` unset watches the key itself, as `xenectl kv watch KEY` (without --prefix)
        // promises: not `KEYbar` or `KEY/x`.
        let watcher = if watch.prefix {
            self.node.reader.watch(watch.start_revision, watch.key)
        } else {
            self.node.reader.watch_keys(watch.start_revision, WatchKeys::Exact(watch.key))
        };
        match watcher {
            Err(StoreError::Compacted { compacted, .. }) => {
                let _ = tx.try_send(Ok(pb::WatchResponse {
                    header: Some(header),
                    events: vec![],
                    compact_revision: compacted,
                }));
            }
            Err(e) => return Err(ServerError::from(e).into()),
            Ok(mut watcher) => {
                let stop = self.stop.clone();
                tokio::spawn(async move {
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tx.closed() => break,
                            next = watcher.next() => next,
                        };
                        let message = match next {
                            Ok(events) => {
                                let revision = events.last().map_or(0, |e| e.kv.mod_revision);
                                pb::WatchResponse {
                                    header: Some(pb::ResponseHeader { revision, ..header }),
                                    events: events.into_iter().map(event_to_pb).collect(),
                                    compact_revision: 0,
                                }
                            }
                            Err(StoreError::Compacted { compacted, .. }) => {
                                let _ = tx
                                    .send(Ok(pb::WatchResponse {
                                        header: Some(header),
                                        events: vec![],
                                        compact_revision: compacted,
                                    }))
                                    .await;
                                break;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(ServerError::from(e).into())).await;
                                break;
                            }
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
