//! The REST port (axum): `/healthz`, `/readyz` and `/metrics` (DESIGN §5.4), starting a run
//! over HTTP (DESIGN §8.1) and webhook deliveries (DESIGN §8.2).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{Role, TokenCache};
use crate::error::ServerError;
use crate::node::ClusterNode;
use crate::triggers::webhook::{self, Accepted, WebhookError};

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
                .route(
                    "/api/v1/webhooks/{workflow}/{trigger}",
                    // One byte more than allowed, so an oversized body is told apart from one
                    // that fits exactly.
                    post(webhook).layer(DefaultBodyLimit::max(webhook::MAX_BODY_BYTES + 1)),
                )
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
/// (DESIGN §8.1): 202 with the run ID. With an `Idempotency-Key` header, the same request sent
/// again answers the run the first one made.
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
        let key = match headers.get("idempotency-key") {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ServerError::InvalidArgument("the Idempotency-Key header must be printable ASCII".into())
            })?),
        };
        crate::runs::create(&state.node, &workflow, &pipeline, "api", body.parameters, key).await
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

/// `POST /api/v1/webhooks/{workflow}/{trigger}`: a delivery from a forge or any sender that
/// signs its body (DESIGN §8.2). No bearer token: the signature is the credential.
async fn webhook(
    State(state): State<RestState>,
    Path((workflow, trigger)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> axum::response::Response {
    let json = |code: StatusCode, value: serde_json::Value| (code, axum::Json(value)).into_response();
    let too_large = || {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "error": format!(
                "the delivery is larger than {} bytes; webhooks take payloads up to that size",
                webhook::MAX_BODY_BYTES
            ) }),
        )
    };
    let body = match body {
        Ok(body) if body.len() > webhook::MAX_BODY_BYTES => return too_large(),
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(),
        Err(rejection) => return json(rejection.status(), serde_json::json!({ "error": rejection.body_text() })),
    };
    match webhook::receive(&state.node, &workflow, &trigger, &headers, &body).await {
        Ok(Accepted::Runs { runs, duplicate }) => {
            if !duplicate {
                tracing::info!(workflow, trigger, ?runs, "webhook delivery started runs");
            }
            json(StatusCode::ACCEPTED, serde_json::json!({ "runs": runs, "duplicate": duplicate }))
        }
        Ok(Accepted::Ignored(reason)) => json(StatusCode::OK, serde_json::json!({ "runs": [], "ignored": reason })),
        Err(e) => {
            let code = match &e {
                WebhookError::NotFound(_) => StatusCode::NOT_FOUND,
                WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                WebhookError::Unreadable(_) => StatusCode::UNPROCESSABLE_ENTITY,
                WebhookError::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
                WebhookError::Server(e) => crate::services::run::http_error(e).0,
            };
            if code == StatusCode::NOT_FOUND {
                tracing::info!(workflow, trigger, error = %e, "webhook delivery to no webhook");
            } else {
                tracing::warn!(workflow, trigger, status = code.as_u16(), error = %e, "webhook delivery refused");
            }
            let url = format!("/api/v1/webhooks/{workflow}/{trigger}");
            json(code, serde_json::json!({ "error": e.public(&url) }))
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
