//! The REST port (axum): `/healthz`, `/readyz` and `/metrics` (DESIGN §5.4). Webhooks and the
//! run API join it later.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::ClusterNode;

/// The REST router.
pub fn router(node: Arc<ClusterNode>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// The process is alive.
async fn healthz() -> &'static str {
    "ok\n"
}

/// A leader is known and this server has applied everything committed when asked.
async fn readyz(State(node): State<Arc<ClusterNode>>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), node.readiness()).await {
        Ok(Ok(message)) => (StatusCode::OK, message),
        Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: the leader did not answer in 2 s\n".to_string()),
    }
}

async fn metrics(State(node): State<Arc<ClusterNode>>) -> impl IntoResponse {
    node.metrics.observe_raft(&node.raft);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], node.metrics.encode())
}
