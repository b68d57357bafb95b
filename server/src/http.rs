//! The REST port (axum): `/healthz`, `/readyz` and `/metrics` (DESIGN §5.4), and starting a
//! run over HTTP (DESIGN §8.1).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{Role, TokenCache};
use crate::error::ServerError;
use crate::node::ClusterNode;

/// What the REST handlers share.
#[derive(Clone)]
pub struct RestState {
    pub node: Arc<ClusterNode>,
    pub tokens: TokenCache,
}

/// The REST router.
pub fn router(node: Arc<ClusterNode>, tokens: TokenCache) -> Router {
    let state = RestState { node: node.clone(), tokens };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
        .merge(
            Router::new()
                .route("/api/v1/workflows/{workflow}/pipelines/{pipeline}/runs", post(create_run))
                .with_state(state),
        )
}

/// The request body of a run: optional parameters.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/workflows/{workflow}/pipelines/{pipeline}/runs` with an admin bearer token
/// (DESIGN §8.1): 202 with the run ID.
async fn create_run(
    State(state): State<RestState>,
    Path((workflow, pipeline)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        metadata.insert("authorization", value);
    }
    let result = async {
        state.tokens.authorize(&state.node, &metadata, Role::Admin).await?;
        let body: RunBody = if body.is_empty() {
            RunBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ServerError::InvalidArgument(format!(
                    "request body: {e}; send {{\"parameters\": {{\"key\": \"value\"}}}} or nothing"
                ))
            })?
        };
        crate::runs::create(&state.node, &workflow, &pipeline, "api", body.parameters).await
    }
    .await;
    match result {
        Ok(run) => {
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "runs": [run.run.metadata.name] }))).into_response()
        }
        Err(e) => {
            let (code, message) = crate::services::run::http_error(&e);
            (code, axum::Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
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
