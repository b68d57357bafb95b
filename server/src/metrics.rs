//! Prometheus metrics (DESIGN §13): Raft term, log and apply index, leadership, proposal
//! latency, and API request counts and latencies by method and status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use xene_raft_store::Raft;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodOnly {
    pub method: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric this server exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub raft_term: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_leader_changes: Counter,
    pub proposal_seconds: Histogram,
    /// Requests per entry the leader wrote (`proposals.rs` groups concurrent writes).
    pub proposal_batch_requests: Histogram,
    /// Requests per forwarding call a follower made to the leader.
    pub forward_batch_requests: Histogram,
    pub api_requests: Family<MethodLabels, Counter>,
    pub api_seconds: Family<MethodOnly, Histogram, fn() -> Histogram>,
    last_leader: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("xene")),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_leader_changes: Counter::default(),
            proposal_seconds: latency_histogram(),
            proposal_batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            forward_batch_requests: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency_histogram),
            last_leader: AtomicU64::new(0),
        };
        {
            let mut r = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register("raft_term", "Current Raft term", metrics.raft_term.clone());
            r.register("raft_last_log_index", "Index of the last Raft log entry", metrics.raft_last_log_index.clone());
            r.register("raft_applied_index", "Index of the last applied entry", metrics.raft_applied_index.clone());
            r.register("raft_is_leader", "1 when this server is the Raft leader", metrics.raft_is_leader.clone());
            r.register(
                "raft_leader_changes",
                "Leader changes seen by this server",
                metrics.raft_leader_changes.clone(),
            );
            r.register(
                "proposal_duration_seconds",
                "Time to commit and apply a proposal",
                metrics.proposal_seconds.clone(),
            );
            r.register(
                "proposal_batch_requests",
                "Client requests per Raft entry written by this server as leader",
                metrics.proposal_batch_requests.clone(),
            );
            r.register(
                "forward_batch_requests",
                "Client requests per call forwarding writes to the leader",
                metrics.forward_batch_requests.clone(),
            );
            r.register("api_requests", "gRPC requests by method and status code", metrics.api_requests.clone());
            r.register("api_request_duration_seconds", "gRPC request latency by method", metrics.api_seconds.clone());
        }
        metrics
    }

    /// Copies the Raft metrics into the gauges; called before each scrape.
    pub fn observe_raft(&self, raft: &Raft) {
        let m = raft.metrics().borrow().clone();
        self.raft_term.set(m.current_term as i64);
        self.raft_last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
        self.raft_applied_index.set(m.last_applied.map_or(0, |id| id.index) as i64);
        self.raft_is_leader.set(i64::from(m.state == openraft::ServerState::Leader));
        let leader = m.current_leader.unwrap_or(0);
        if leader != 0 && self.last_leader.swap(leader, Ordering::Relaxed) != leader {
            self.raft_leader_changes.inc();
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A tower layer that counts gRPC requests and times them, by method and status.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    pub metrics: std::sync::Arc<Metrics>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around each gRPC service.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: std::sync::Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("/");
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string(),
                Err(_) => "transport".to_string(),
            };
            metrics.api_requests.get_or_create(&MethodLabels { method: method.clone(), code }).inc();
            metrics.api_seconds.get_or_create(&MethodOnly { method }).observe(started.elapsed().as_secs_f64());
            response
        })
    }
}
