//! `RaftService`: the internal server-to-server service. Every call must carry the cluster
//! secret; Raft messages are handed to openraft, proposals (calls or a follower's stream,
//! `crate::forwarding`) and read-index requests are answered by the leader, and joins are
//! admitted through the leader.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use xene_proto::raft_service_server::RaftService;
use xene_proto::{
    JoinRequest, JoinResponse, ProposeFrame, RaftPayload, ReadIndexRequest, ReadIndexResponse, TimeoutNowRequest,
    TimeoutNowResponse,
};
use xene_raft_store::{codec, NodeInfo};

use crate::error::ServerError;
use crate::forwarding;
use crate::metrics::APPEND_ENTRIES_METHOD;
use crate::node::ClusterNode;

/// The `RaftService` implementation.
pub struct RaftApi {
    node: Arc<ClusterNode>,
    secret: Vec<u8>,
    /// Ends the append streams when the server shuts down.
    stop: CancellationToken,
}

/// The answers of one append stream.
type AppendReplies = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

impl RaftApi {
    pub fn new(node: Arc<ClusterNode>, cluster_secret: &str, stop: CancellationToken) -> Self {
        RaftApi { node, secret: cluster_secret.as_bytes().to_vec(), stop }
    }

    fn check_secret<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let given = request.metadata().get(xene_proto::CLUSTER_SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or(b"");
        if bool::from(given.ct_eq(&self.secret)) {
            Ok(())
        } else {
            Err(ServerError::Unauthenticated(
                "wrong or missing cluster secret: every server of a cluster needs the same --cluster-secret".into(),
            )
            .into())
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, payload: &RaftPayload) -> Result<T, Status> {
    codec::decode(what, &payload.data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: serde::Serialize>(value: &T) -> Response<RaftPayload> {
    Response::new(RaftPayload { data: codec::encode(value) })
}

/// The next answer of an append stream: its next request handed to openraft. `None` once the
/// leader has closed the stream; an error ends it.
async fn next_append(
    mut requests: Streaming<RaftPayload>,
    node: Arc<ClusterNode>,
) -> Option<(Result<RaftPayload, Status>, Option<(Streaming<RaftPayload>, Arc<ClusterNode>)>)> {
    let payload = match requests.message().await {
        Ok(Some(payload)) => payload,
        Ok(None) => return None,
        Err(status) => return Some((Err(status), None)),
    };
    let started = Instant::now();
    let rpc = match decode("append entries request", &payload) {
        Ok(rpc) => rpc,
        Err(status) => return Some((Err(status), None)),
    };
    let answer = RaftPayload { data: codec::encode(&node.raft.append_entries(rpc).await) };
    // Counted as the unary call it replaces, so the API metrics read the same either way.
    node.metrics.observe_call(APPEND_ENTRIES_METHOD, "0", started.elapsed());
    Some((Ok(answer), Some((requests, node))))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    type AppendStreamStream = AppendReplies;
    type ProposeStreamStream = forwarding::Answers;

    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_secret(&request)?;
        let rpc = decode("append entries request", request.get_ref())?;
        Ok(reply(&self.node.raft.append_entries(rpc).await))
    }

    async fn append_stream(&self, request: Request<Streaming<RaftPayload>>) -> Result<Response<AppendReplies>, Status> {
        self.check_secret(&request)?;
        let state = Some((request.into_inner(), self.node.clone()));
        // One request at a time, each answered before the next is read: the leader's link
        // sends its next message only after this answer, as with calls.
        let replies = futures::stream::unfold(state, |state| async move {
            let (requests, node) = state?;
            next_append(requests, node).await
        });
        Ok(Response::new(Box::pin(replies.take_until(self.stop.clone().cancelled_owned()))))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_secret(&request)?;
        let rpc = decode("vote request", request.get_ref())?;
        Ok(reply(&self.node.raft.vote(rpc).await))
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_secret(&request)?;
        let rpc = decode("snapshot chunk", request.get_ref())?;
        Ok(reply(&self.node.raft.install_snapshot(rpc).await))
    }

    async fn propose(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_secret(&request)?;
        let data = forwarding::answer(&self.node, &request.get_ref().data).await?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn propose_stream(
        &self,
        request: Request<Streaming<ProposeFrame>>,
    ) -> Result<Response<forwarding::Answers>, Status> {
        self.check_secret(&request)?;
        let answers = forwarding::serve(request.into_inner(), self.node.clone());
        Ok(Response::new(Box::pin(answers.take_until(self.stop.clone().cancelled_owned()))))
    }

    async fn read_index(&self, request: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        self.check_secret(&request)?;
        let read_index = self.node.read_index_local().await?;
        Ok(Response::new(ReadIndexResponse { read_index }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.check_secret(&request)?;
        let join = request.into_inner();
        if join.grpc_addr.is_empty() {
            return Err(ServerError::InvalidArgument("join: grpc_addr is empty".into()).into());
        }
        let info = NodeInfo { grpc_addr: join.grpc_addr, http_addr: join.http_addr };
        let members = self.node.add_member(join.node_id, info).await?;
        let leader_id = self.node.leader().map_or(0, |(id, _)| id);
        Ok(Response::new(JoinResponse { leader_id, members }))
    }

    async fn timeout_now(&self, request: Request<TimeoutNowRequest>) -> Result<Response<TimeoutNowResponse>, Status> {
        self.check_secret(&request)?;
        let deadline = Duration::from_millis(request.get_ref().deadline_ms.min(60_000));
        let became_leader = self.node.timeout_now(deadline).await;
        Ok(Response::new(TimeoutNowResponse { became_leader }))
    }
}
