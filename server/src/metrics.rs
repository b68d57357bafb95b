//! Prometheus metrics (DESIGN §13): Raft term, log, commit and apply index, leadership,
//! proposal latency, API request counts and latencies by method and status; and, on the
//! leader (which holds the agents' sessions and runs the scheduler), agents connected, leases,
//! runs by phase, step durations and log bytes stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use xene_model::status::RunPhase;
use xene_raft_store::Raft;

/// Labels of one request's counter: static strings, so that counting a request allocates
/// nothing ([`method_label`], [`code_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodOnly {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
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
    /// Requests per forwarded message a follower sent to the leader.
    pub forward_batch_requests: Histogram,
    pub api_requests: Family<MethodLabels, Counter>,
    pub api_seconds: Family<MethodOnly, Histogram, fn() -> Histogram>,
    /// The leader's commit index (0 on other servers: openraft 0.9 tells only the leader).
    pub raft_committed_index: Gauge,
    /// Leader only, as of its scheduler's last pass; 0 elsewhere.
    pub agents_connected: Gauge,
    pub leases: Gauge,
    pub runs: Family<PhaseLabel, Gauge>,
    /// Steps that ended, by how long they ran (observed by the leader as agents report them).
    pub step_seconds: Histogram,
    /// Bytes of log chunks the leader stored for agents.
    pub log_bytes: Counter,
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
            raft_committed_index: Gauge::default(),
            agents_connected: Gauge::default(),
            leases: Gauge::default(),
            runs: Family::default(),
            // 0.1 s to about 55 minutes.
            step_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 16)),
            log_bytes: Counter::default(),
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
                "Client requests per message forwarding writes to the leader",
                metrics.forward_batch_requests.clone(),
            );
            r.register("api_requests", "gRPC requests by method and status code", metrics.api_requests.clone());
            r.register("api_request_duration_seconds", "gRPC request latency by method", metrics.api_seconds.clone());
            r.register(
                "raft_committed_index",
                "Index of the last committed entry (on the leader; 0 on other servers)",
                metrics.raft_committed_index.clone(),
            );
            r.register(
                "agents_connected",
                "Agents with an open session (on the leader; 0 on other servers)",
                metrics.agents_connected.clone(),
            );
            r.register("leases", "Pipeline leases held by agents (on the leader)", metrics.leases.clone());
            r.register("runs", "Runs kept, by phase (on the leader)", metrics.runs.clone());
            r.register(
                "step_duration_seconds",
                "How long steps ran, as agents reported them",
                metrics.step_seconds.clone(),
            );
            r.register("log_bytes", "Bytes of step output stored, as agents sent it", metrics.log_bytes.clone());
        }
        metrics
    }

    /// What the leader's scheduler saw in its last pass.
    pub fn observe_scheduler(&self, agents_connected: usize, leases: usize, runs: &[(RunPhase, usize)]) {
        self.agents_connected.set(agents_connected as i64);
        self.leases.set(leases as i64);
        for (phase, count) in runs {
            self.runs.get_or_create(&PhaseLabel { phase: phase.as_str() }).set(*count as i64);
        }
    }

    /// This server stopped leading: the figures only the leader knows are no longer its.
    pub fn clear_scheduler(&self) {
        self.observe_scheduler(0, 0, &RunPhase::ALL.iter().map(|phase| (*phase, 0)).collect::<Vec<_>>());
    }

    /// Counts one call of `method` (a [`METHODS`] entry) that ended with `code` after
    /// `elapsed`; a message of a stream that stands for a call (`RaftService/AppendStream`,
    /// `ProposeStream`) counts as one too.
    pub fn observe_call(&self, method: &'static str, code: &'static str, elapsed: Duration) {
        self.api_requests.get_or_create(&MethodLabels { method, code }).inc();
        self.api_seconds.get_or_create(&MethodOnly { method }).observe(elapsed.as_secs_f64());
    }

    /// Copies the Raft metrics into the gauges; called before each scrape.
    pub fn observe_raft(&self, raft: &Raft) {
        let m = raft.metrics().borrow().clone();
        self.raft_term.set(m.current_term as i64);
        self.raft_last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
        self.raft_applied_index.set(m.last_applied.map_or(0, |id| id.index) as i64);
        self.raft_is_leader.set(i64::from(m.state == openraft::ServerState::Leader));
        self.raft_committed_index.set(committed_index(&m).unwrap_or(0) as i64);
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

/// The leader's commit index, as openraft 0.9 decides it: the highest log ID a majority of
/// every voter configuration (both of a joint one) has flushed, if it is of the leader's own
/// term; else what it has applied, which is committed. `None` on other servers.
fn committed_index(m: &openraft::RaftMetrics<xene_raft_store::NodeId, xene_raft_store::NodeInfo>) -> Option<u64> {
    let replication = m.replication.as_ref()?;
    let applied = m.last_applied.map_or(0, |log_id| log_id.index);
    // The leader's own flushed position is in the map; were it not, applied is below it.
    let matched = |id: &u64| replication.get(id).copied().flatten().or(if *id == m.id { m.last_applied } else { None });
    let configs = m.membership_config.membership().get_joint_config();
    let mut agreed = None;
    for (n, config) in configs.iter().enumerate() {
        let mut ids: Vec<Option<openraft::LogId<xene_raft_store::NodeId>>> = config.iter().map(matched).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let majority = ids.get(config.len() / 2).copied().flatten();
        // `None` (nothing agreed) is the least of all.
        agreed = if n == 0 { majority } else { agreed.min(majority) };
    }
    match agreed {
        // An entry of this leader's own (openraft commits only those directly).
        Some(log_id) if log_id.leader_id.term == m.current_term && log_id.leader_id.node_id == m.id => {
            Some(log_id.index.max(applied))
        }
        _ => Some(applied),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `method` label of a follower's AppendEntries, whether it came as a call or as a
/// message of an append stream.
pub const APPEND_ENTRIES_METHOD: &str = "xene.v1.RaftService/AppendEntries";

/// The `method` label of a forwarded proposal, whether it came as a call or as a message of
/// a forwarding stream.
pub const PROPOSE_METHOD: &str = "xene.v1.RaftService/Propose";

/// Every gRPC method this server serves, as `package.Service/Method`: the only values the
/// `method` label takes besides [`UNKNOWN_METHOD`]. A test checks it against `proto/`.
const METHODS: &[&str] = &[
    "xene.v1.AgentService/Join",
    "xene.v1.AgentService/List",
    "xene.v1.AgentService/Session",
    "xene.v1.ClusterService/AddMember",
    "xene.v1.ClusterService/Members",
    "xene.v1.ClusterService/RemoveMember",
    "xene.v1.ClusterService/Snapshot",
    "xene.v1.ClusterService/Status",
    "xene.v1.ClusterService/TransferLeader",
    "xene.v1.KvService/Delete",
    "xene.v1.KvService/Put",
    "xene.v1.KvService/Range",
    "xene.v1.KvService/Txn",
    "xene.v1.KvService/Watch",
    "xene.v1.ObjectService/Apply",
    "xene.v1.ObjectService/Delete",
    "xene.v1.ObjectService/Get",
    "xene.v1.ObjectService/List",
    "xene.v1.ObjectService/Watch",
    APPEND_ENTRIES_METHOD,
    "xene.v1.RaftService/AppendStream",
    "xene.v1.RaftService/InstallSnapshot",
    "xene.v1.RaftService/Join",
    PROPOSE_METHOD,
    "xene.v1.RaftService/ProposeStream",
    "xene.v1.RaftService/ReadIndex",
    "xene.v1.RaftService/TimeoutNow",
    "xene.v1.RaftService/Vote",
    "xene.v1.RunService/Cancel",
    "xene.v1.RunService/Create",
    "xene.v1.RunService/Get",
    "xene.v1.RunService/List",
    "xene.v1.RunService/Logs",
    "xene.v1.SecretService/Delete",
    "xene.v1.SecretService/List",
    "xene.v1.SecretService/Set",
    "xene.v1.TokenService/Create",
    "xene.v1.TokenService/List",
    "xene.v1.TokenService/Revoke",
];

/// The `method` label of every request to a path that is none of [`METHODS`].
const UNKNOWN_METHOD: &str = "unknown";

/// The `method` label of a request to `path` (`/xene.v1.KvService/Range`): the method, or
/// [`UNKNOWN_METHOD`] for any other path. Anyone who reaches the port, before authentication,
/// chooses the path, so taking it as it comes would let them create a counter and a
/// histogram per path they make up, until the server runs out of memory.
fn method_label(path: &str) -> &'static str {
    let Some(method) = path.strip_prefix('/') else { return UNKNOWN_METHOD };
    METHODS.binary_search(&method).map_or(UNKNOWN_METHOD, |i| METHODS[i])
}

/// The gRPC status codes, as the `code` label writes them.
const CODES: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// The `code` label of a response with this `grpc-status` header: none is a success (a unary
/// call's status then comes in the trailers, and only errors are answered in the headers); a
/// value that is no gRPC code reads `other`.
fn code_label(status: Option<&[u8]>) -> &'static str {
    let Some(status) = status else { return CODES[0] };
    CODES.iter().find(|code| code.as_bytes() == status).copied().unwrap_or("other")
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
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(r) => code_label(r.headers().get("grpc-status").map(|v| v.as_bytes())),
                Err(_) => "transport",
            };
            metrics.observe_call(method, code, started.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods `proto/xene/v1/*.proto` declare, as `package.Service/Method`.
    fn declared_methods() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto/xene/v1");
        let mut methods = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("read proto/proto/xene/v1") {
            let path = entry.expect("proto dir entry").path();
            if path.extension().is_none_or(|e| e != "proto") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a .proto file");
            let mut package = String::new();
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("package ") {
                    package = rest.trim_end_matches(';').trim().to_string();
                } else if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap_or_default().to_string();
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let name = rest.split('(').next().unwrap_or_default().trim();
                    methods.push(format!("{package}.{service}/{name}"));
                }
            }
        }
        methods.sort();
        methods
    }

    #[test]
    fn the_method_list_is_sorted_and_matches_the_protos() {
        let listed: Vec<String> = METHODS.iter().map(|m| m.to_string()).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(listed, sorted, "METHODS must stay sorted (it is binary-searched) and without repeats");
        assert_eq!(listed, declared_methods(), "METHODS must list exactly the rpcs of proto/xene/v1/*.proto");
    }

    #[test]
    fn only_known_methods_get_their_own_label() {
        for (path, label) in [
            ("/xene.v1.KvService/Range", "xene.v1.KvService/Range"),
            ("/xene.v1.AgentService/Session", "xene.v1.AgentService/Session"),
            ("/xene.v1.KvService/Nope", UNKNOWN_METHOD),
            ("/xene.v1.Made-Up/Range", UNKNOWN_METHOD),
            ("/a/b/xene.v1.KvService/Range", UNKNOWN_METHOD),
            ("/xene.v1.KvService/Range/", UNKNOWN_METHOD),
            ("xene.v1.KvService/Range", UNKNOWN_METHOD),
            ("/", UNKNOWN_METHOD),
            ("", UNKNOWN_METHOD),
        ] {
            assert_eq!(method_label(path), label, "path {path:?}");
        }
    }

    /// A service that answers every request `Unimplemented`, as tonic does for unknown paths.
    struct Unimplemented;

    impl tower::Service<http::Request<()>> for Unimplemented {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(());
            response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("12"));
            std::future::ready(Ok(response))
        }
    }

    #[test]
    fn status_headers_are_labelled_by_code() {
        assert_eq!(code_label(None), "0");
        assert_eq!(code_label(Some(b"14")), "14");
        assert_eq!(code_label(Some(b"16")), "16");
        assert_eq!(code_label(Some(b"17")), "other");
        assert_eq!(code_label(Some(b"")), "other");
    }

    #[tokio::test]
    async fn made_up_paths_share_one_series() {
        use tower::{Layer, Service};
        let metrics = std::sync::Arc::new(Metrics::new());
        let mut service = GrpcMetricsLayer { metrics: metrics.clone() }.layer(Unimplemented);
        for path in (0..1_000).map(|i| format!("/random/{i}")).chain(["/xene.v1.KvService/Range".to_string()]) {
            let request = http::Request::builder().uri(path.as_str()).body(()).expect("a valid request");
            service.call(request).await.expect("answered");
        }
        let text = metrics.encode();
        let mut series: Vec<&str> = text.lines().filter(|l| l.starts_with("xene_api_requests_total{")).collect();
        series.sort_unstable();
        assert_eq!(
            series,
            vec![
                r#"xene_api_requests_total{method="unknown",code="12"} 1000"#,
                r#"xene_api_requests_total{method="xene.v1.KvService/Range",code="12"} 1"#,
            ],
            "{text}"
        );
        let histograms = text.lines().filter(|l| l.starts_with("xene_api_request_duration_seconds_count{")).count();
        assert_eq!(histograms, 2, "{text}");
    }
}
