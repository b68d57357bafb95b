//! `SecretService` (DESIGN §9.5, §11.1): set, list and delete secrets. Admin only; values are
//! never returned.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::secret_service_server::SecretService;

use crate::auth::{Role, TokenCache};
use crate::node::ClusterNode;
use crate::secrets;

/// The `SecretService` implementation.
pub struct SecretApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
}

impl SecretApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache) -> Self {
        SecretApi { node, tokens }
    }
}

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn set(&self, request: Request<pb::SetSecretRequest>) -> Result<Response<pb::SecretInfo>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let set = request.into_inner();
        let keys: Vec<String> = set.data.keys().cloned().collect();
        let revision = secrets::set(&self.node, &set.name, set.data.into_iter().collect()).await?;
        tracing::info!(secret = %set.name, "secret set");
        Ok(Response::new(pb::SecretInfo { name: set.name, keys, resource_version: revision }))
    }

    async fn list(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let secrets = secrets::list(&self.node)
            .await?
            .into_iter()
            .map(|(record, revision)| pb::SecretInfo {
                name: record.name,
                keys: record.data.into_keys().collect(),
                resource_version: revision,
            })
            .collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn delete(&self, request: Request<pb::DeleteSecretRequest>) -> Result<Response<pb::SecretInfo>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let record = secrets::delete(&self.node, &request.get_ref().name).await?;
        Ok(Response::new(pb::SecretInfo {
            name: record.name,
            keys: record.data.into_keys().collect(),
            resource_version: 0,
        }))
    }
}
