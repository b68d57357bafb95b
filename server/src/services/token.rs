//! `TokenService`: create, list and revoke tokens (DESIGN §7.1, §11.2). Admin only. Tokens
//! are stored hashed; a token's text is returned once, when it is created.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::token_service_server::TokenService;
use xene_raft_store::{Compare, Op, Txn};

use crate::auth::{self, Role, TokenCache, TokenRecord};
use crate::error::ServerError;
use crate::keys;
use crate::node::{now_ms, ClusterNode};

/// The `TokenService` implementation.
pub struct TokenApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
}

impl TokenApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache) -> Self {
        TokenApi { node, tokens }
    }
}

/// The API's view of a stored token (never its secret or hash).
pub fn info(record: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: record.id.clone(),
        kind: record.kind().into(),
        created_ms: record.created_ms,
        expires_ms: record.expires_ms.unwrap_or(0),
        limited_uses: record.uses_left.is_some(),
        uses_left: record.uses_left.unwrap_or(0),
        revoked: record.revoked,
        description: record.description.clone(),
        agent: record.agent.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let create = request.into_inner();
        let role = match create.kind.as_str() {
            "agent" => Role::Join,
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            other => {
                return Err(ServerError::InvalidArgument(format!(
                    "token kind {other:?}: use agent (to join agents), admin or viewer"
                ))
                .into())
            }
        };
        let now = now_ms();
        let mut token = auth::mint(role, &create.description, now);
        if create.ttl_seconds > 0 {
            token.record.expires_ms = Some(now.saturating_add(create.ttl_seconds.saturating_mul(1000)));
        }
        if create.uses > 0 {
            token.record.uses_left = Some(create.uses);
        }
        let key = keys::token(&token.record.id);
        let value = serde_json::to_vec(&token.record).map_err(|e| ServerError::Internal(e.to_string()))?;
        self.node.create(key, value, "token").await?;
        tracing::info!(token = %token.record.id, kind = token.record.kind(), "token created");
        Ok(Response::new(pb::CreateTokenResponse { info: Some(info(&token.record)), token: token.text }))
    }

    async fn list(&self, request: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        self.node.read_barrier().await?;
        let result =
            self.node.reader.range(keys::TOKENS.as_bytes().to_vec(), true, 0).await.map_err(ServerError::from)?;
        let tokens = result
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).ok())
            .map(|r| info(&r))
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke(&self, request: Request<pb::RevokeTokenRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let id = request.into_inner().id;
        let key = keys::token(&id);
        for _ in 0..5 {
            self.node.read_barrier().await?;
            let found = self.node.reader.range(key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
            let Some(kv) = found.kvs.into_iter().next() else {
                return Err(ServerError::NotFound(format!("no token with ID {id:?}; see xenectl token list")).into());
            };
            let mut record: TokenRecord =
                serde_json::from_slice(&kv.value).map_err(|e| ServerError::Internal(e.to_string()))?;
            record.revoked = true;
            let value = serde_json::to_vec(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
            let response = self
                .node
                .txn(Txn {
                    compare: vec![Compare::mod_revision(key.clone(), kv.mod_revision)],
                    success: vec![Op::Put { key: key.clone().into_bytes(), value }],
                    failure: vec![],
                })
                .await?;
            if response.succeeded {
                tracing::info!(token = %id, "token revoked");
                return Ok(Response::new(info(&record)));
            }
        }
        Err(ServerError::unavailable("the token kept changing; retry").into())
    }
}
