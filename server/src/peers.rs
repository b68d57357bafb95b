//! Connections to other servers, reused across calls (one lazily connected channel per
//! address), with the cluster secret attached to every call; over TLS when this server
//! serves TLS itself (`crate::tls`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use xene_proto::raft_service_client::RaftServiceClient;

use crate::error::{Result, ServerError};
use crate::tls::ServerTls;

/// A pool of channels to peers, keyed by gRPC address.
#[derive(Clone)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    secret: Arc<MetadataValue<tonic::metadata::Ascii>>,
    routes: Arc<HashMap<String, String>>,
    tls: Option<Arc<ServerTls>>,
}

fn routes_from_env() -> HashMap<String, String> {
    let Ok(spec) = std::env::var(PEER_ROUTES_ENV) else { return HashMap::new() };
    let routes: HashMap<String, String> = spec
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(addr, via)| (addr.trim().to_string(), via.trim().to_string()))
        .collect();
    tracing::warn!(?routes, "{PEER_ROUTES_ENV} is set: peer traffic goes through test proxies");
    routes
}

/// Test hook: `XENE_TEST_PEER_ROUTES=ADDR=VIA,ADDR=VIA` makes this server reach the peer at
/// `ADDR` through `VIA` instead (a fault-injecting proxy of the chaos tests, one per link).
pub const PEER_ROUTES_ENV: &str = "XENE_TEST_PEER_ROUTES";

impl PeerPool {
    pub fn new(cluster_secret: &str, tls: Option<ServerTls>) -> Result<Self> {
        let secret = cluster_secret.parse().map_err(|_| {
            ServerError::InvalidArgument("--cluster-secret must be printable ASCII without newlines".into())
        })?;
        Ok(PeerPool {
            channels: Arc::default(),
            secret: Arc::new(secret),
            routes: Arc::new(routes_from_env()),
            tls: tls.map(Arc::new),
        })
    }

    /// Whether the cluster speaks TLS (this server serves it, and expects it of its peers).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A client for the peer at `addr`; the channel connects on first use and reconnects by
    /// itself after failures.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<WholeBody>> {
        Ok(RaftServiceClient::new(WholeBody(self.channel(addr)?)).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// The shared channel to `addr`, for any service.
    pub fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let target = self.routes.get(addr).map_or(addr, String::as_str);
                let endpoint = match &self.tls {
                    Some(tls) => tls.peer_endpoint(target),
                    None => Endpoint::from_shared(format!("http://{target}")),
                }
                .map_err(|e| ServerError::InvalidArgument(format!("peer address {addr:?}: {e}")))?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5));
                let channel = endpoint.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(channel)
    }

    /// Wraps `message` in a request carrying the cluster secret and a deadline.
    pub fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(timeout);
        request
    }

    /// Wraps a stream of messages in a request carrying the cluster secret and no deadline:
    /// the stream lasts as long as its link; each message has its own deadline at the sender.
    pub fn stream_request<T>(&self, messages: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(messages);
        request.metadata_mut().insert(xene_proto::CLUSTER_SECRET_HEADER, (*self.secret).clone());
        request
    }
}

/// Why a message on one of the servers' long-lived streams to each other (`AppendStream`,
/// `ProposeStream`) got no answer.
#[derive(Clone, Debug)]
pub enum StreamFailure {
    /// The stream, or the connection under it, ended as the text says; the peer may or may
    /// not have seen the message.
    Closed(String),
    /// The peer answered with an error status.
    Status(tonic::Status),
}

impl StreamFailure {
    /// A stream's error status: an ended stream or connection (`Unavailable`, `Unknown`,
    /// `Cancelled`), else the peer's answer.
    pub fn from_status(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled => StreamFailure::Closed(status.message().to_string()),
            _ => StreamFailure::Status(status),
        }
    }
}

/// A channel that sends each request's body whole: tonic hands a unary request's message to
/// HTTP/2 as a stream that learns it has ended only when polled again, so every call left as
/// three writes (headers, the message, an empty frame that ends the stream). Collected first,
/// the message carries the end-of-stream flag itself: two writes (PERF W1, BENCHMARKS.md).
/// For unary calls only: a streaming request would be held back until its stream ended, so
/// `RaftService/AppendStream` goes on the channel itself (`crate::network`).
#[derive(Clone)]
pub struct WholeBody(Channel);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<tonic::body::Body>> for WholeBody {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, std::result::Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), BoxError>> {
        tower::Service::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The channel that was polled ready makes the call; a clone stays for the next one.
        let clone = self.0.clone();
        let mut channel = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            let message = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(parts, tonic::body::Body::new(http_body_util::Full::new(message)));
            tower::Service::call(&mut channel, request).await.map_err(Into::into)
        })
    }
}
