//! Secrets in the store (DESIGN §9.5): set, list (keys only), delete, and resolution of the
//! secret references of a pipeline for the agent that runs it. Values travel to the agent in
//! the run hand-over and are never returned by any read API.
//!
//! Values are stored as they are given, replicated through Raft: anyone with the servers' data
//! directories can read them (no encryption at rest yet).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xene_model::{ContainerExecutor, EnvValue, Executor, Pipeline, SecretKeyRef, PULL_SECRET_KEYS};
use xene_raft_store::{Op, Txn};

use crate::error::{Result, ServerError};
use crate::keys;
use crate::node::ClusterNode;

/// A secret as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub data: BTreeMap<String, String>,
}

fn internal(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(e.to_string())
}

/// Creates or replaces a secret; returns its revision.
pub async fn set(node: &ClusterNode, name: &str, data: BTreeMap<String, String>) -> Result<u64> {
    if let Some(message) = xene_model::names::name_message("secret", name) {
        return Err(ServerError::InvalidArgument(message));
    }
    if data.is_empty() {
        return Err(ServerError::InvalidArgument(format!(
            "secret {name:?} has no data: give at least one --from-literal key=value or --from-file key=PATH"
        )));
    }
    for key in data.keys() {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(ServerError::InvalidArgument(format!(
                "secret {name:?}: key {key:?} may use letters, digits, '-', '_' and '.' only"
            )));
        }
    }
    let record = SecretRecord { name: name.into(), data };
    let value = serde_json::to_vec(&record).map_err(internal)?;
    let response = node
        .txn(Txn { success: vec![Op::Put { key: keys::secret(name).into_bytes(), value }], ..Txn::default() })
        .await?;
    Ok(response.revision)
}

/// Every secret with its keys and revision (values stay in the store).
pub async fn list(node: &ClusterNode) -> Result<Vec<(SecretRecord, u64)>> {
    node.read_barrier().await?;
    let found = node.reader.range(keys::SECRETS.as_bytes().to_vec(), true, 0).await?;
    found
        .kvs
        .iter()
        .map(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).map(|r| (r, kv.mod_revision)).map_err(internal))
        .collect()
}

/// Deletes a secret.
pub async fn delete(node: &ClusterNode, name: &str) -> Result<SecretRecord> {
    let key = keys::secret(name);
    let response = node.txn(Txn { success: vec![Op::DeletePrev { key: key.into_bytes() }], ..Txn::default() }).await?;
    match response.results.first() {
        Some(xene_raft_store::OpResult::Delete { deleted }) if !deleted.is_empty() => {
            serde_json::from_slice(&deleted[0].value).map_err(internal)
        }
        _ => Err(ServerError::NotFound(format!("secret {name:?} not found; see xenectl secret list"))),
    }
}

/// The values of every secret `pipeline` refers to, as `NAME/KEY` → value: in its environment
/// (a reference without a key resolves to the secret's only value, keyed `NAME/`) and as the
/// pull secret of a container executor (its `username` and `password`).
pub async fn resolve_for(node: &ClusterNode, pipeline: &Pipeline) -> Result<BTreeMap<String, String>> {
    let mut wanted = Vec::new();
    let envs = std::iter::once(&pipeline.env)
        .chain(pipeline.tasks.values().map(|t| &t.env))
        .chain(pipeline.tasks.values().flat_map(|t| t.steps.iter().map(|s| &s.env)));
    for env in envs {
        for value in env.values() {
            if let EnvValue::Secret(reference) = value {
                wanted.push(reference.clone());
            }
        }
    }
    // Registry credentials for the images the agent may have to pull (DESIGN §9.3).
    let executors = pipeline.executor.iter().chain(pipeline.tasks.values().filter_map(|t| t.executor.as_ref()));
    for executor in executors {
        if let Executor::Container(ContainerExecutor { pull_secret: Some(name), .. }) = executor {
            for key in PULL_SECRET_KEYS {
                wanted.push(SecretKeyRef { secret_ref: name.clone(), key: Some(key.to_string()) });
            }
        }
    }
    let mut out = BTreeMap::new();
    for reference in wanted {
        let found = node.reader.range(keys::secret(&reference.secret_ref).into_bytes(), false, 0).await?;
        let Some(record) = found.kvs.first().and_then(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).ok())
        else {
            continue;
        };
        match &reference.key {
            Some(key) => {
                if let Some(value) = record.data.get(key) {
                    out.insert(format!("{}/{key}", record.name), value.clone());
                }
            }
            None => {
                if record.data.len() == 1 {
                    if let Some(value) = record.data.values().next() {
                        out.insert(format!("{}/", record.name), value.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}
