//! A stand-in for another server in unit tests of the links to peers (`network`,
//! `forwarding`): a `RaftService` on a loopback port that answers AppendEntries with success
//! and forwarded proposals with a transaction at the request's own ID, counting how each came
//! (a call, a stream opened, a message of a stream).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use openraft::error::RaftError;
use openraft::raft::AppendEntriesResponse;
use tonic::{Request, Response, Status, Streaming};
use xene_proto::raft_service_server::{RaftService, RaftServiceServer};
use xene_proto::{
    JoinRequest, JoinResponse, ProposeFrame, RaftPayload, ReadIndexRequest, ReadIndexResponse, TimeoutNowRequest,
    TimeoutNowResponse,
};
use xene_raft_store::{codec, ClientRequest, ClientResponse, NodeId, TxnResponse};

use crate::node::ForwardReply;

/// What the fake peer does, and what it saw.
#[derive(Default)]
pub struct FakePeer {
    /// Whether it serves `AppendStream`; with it, it ends each append stream after one
    /// answer, as a peer that restarts between messages would. Without, it answers
    /// `Unimplemented`, as a build from before streams.
    pub append_streams: bool,
    /// Whether it serves `ProposeStream` (else `Unimplemented`).
    pub propose_streams: bool,
    /// Forwarded proposals it gathers before answering them, last first (1: each at once).
    pub gather: usize,
    /// Ends a propose stream, unanswered, at that stream's message with this number (from 1),
    /// as a leader that restarts while a forward is in flight.
    pub end_at_message: Option<u64>,
    pub append_calls: AtomicU64,
    pub append_opened: AtomicU64,
    pub append_messages: AtomicU64,
    pub propose_calls: AtomicU64,
    pub propose_opened: AtomicU64,
    pub propose_messages: AtomicU64,
}

/// The server side of a [`FakePeer`].
struct Fake(Arc<FakePeer>);

fn append_success() -> RaftPayload {
    let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = Ok(AppendEntriesResponse::Success);
    RaftPayload { data: codec::encode(&reply) }
}

/// The fake leader's answer to a forwarded proposal: a transaction at the request's ID.
fn applied(data: &[u8]) -> Result<Vec<u8>, Status> {
    let request: ClientRequest =
        codec::decode("forwarded proposal", data).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let response = ClientResponse::Txn(TxnResponse { revision: request.request_id, succeeded: true, results: vec![] });
    Ok(codec::encode(&ForwardReply::Applied(response)))
}

#[tonic::async_trait]
impl RaftService for Fake {
    type AppendStreamStream = BoxStream<'static, Result<RaftPayload, Status>>;
    type ProposeStreamStream = BoxStream<'static, Result<ProposeFrame, Status>>;

    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.0.append_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(append_success()))
    }

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        self.0.append_opened.fetch_add(1, Ordering::SeqCst);
        if !self.0.append_streams {
            return Err(Status::unimplemented("no AppendStream here"));
        }
        let (peer, mut requests) = (self.0.clone(), request.into_inner());
        let answer = async move {
            requests.message().await?.ok_or_else(|| Status::cancelled("no message"))?;
            peer.append_messages.fetch_add(1, Ordering::SeqCst);
            Ok(append_success())
        };
        Ok(Response::new(Box::pin(futures::stream::once(answer))))
    }

    async fn propose(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.0.propose_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(RaftPayload { data: applied(&request.get_ref().data)? }))
    }

    async fn propose_stream(
        &self,
        request: Request<Streaming<ProposeFrame>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        self.0.propose_opened.fetch_add(1, Ordering::SeqCst);
        if !self.0.propose_streams {
            return Err(Status::unimplemented("no ProposeStream here"));
        }
        let (peer, requests) = (self.0.clone(), request.into_inner());
        let answers = futures::stream::unfold((requests, 0u64), move |(mut requests, mut seen)| {
            let peer = peer.clone();
            async move {
                let mut gathered = Vec::new();
                while gathered.len() < peer.gather.max(1) {
                    let frame = requests.message().await.ok()??;
                    seen += 1;
                    peer.propose_messages.fetch_add(1, Ordering::SeqCst);
                    if peer.end_at_message == Some(seen) {
                        return None;
                    }
                    gathered.push(frame);
                }
                let answers: Vec<Result<ProposeFrame, Status>> = gathered
                    .into_iter()
                    .rev()
                    .map(|frame| Ok(ProposeFrame { id: frame.id, data: applied(&frame.data)? }))
                    .collect();
                Some((futures::stream::iter(answers), (requests, seen)))
            }
        });
        Ok(Response::new(Box::pin(answers.flatten())))
    }

    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("vote"))
    }

    async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("install_snapshot"))
    }

    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        Err(Status::unimplemented("read_index"))
    }

    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("join"))
    }

    async fn timeout_now(&self, _: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowResponse>, Status> {
        Err(Status::unimplemented("timeout_now"))
    }
}

/// Serves `peer` on a free loopback port until the test's runtime ends; returns its address.
pub async fn serve(peer: Arc<FakePeer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServiceServer::new(Fake(peer)))
            .serve_with_incoming(incoming),
    );
    addr
}
