//! `xenectl secret set|list|delete` (DESIGN §9.5). Values go in; they never come back out.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use xene_proto as pb;
use xene_proto::secret_service_client::SecretServiceClient;

use crate::client::Cluster;

/// `xenectl secret set NAME --from-literal k=v... --from-file k=PATH...`.
pub async fn set(cluster: &Cluster, name: &str, literals: &[String], files: &[String]) -> Result<()> {
    let mut data = HashMap::new();
    for literal in literals {
        let (key, value) =
            literal.split_once('=').ok_or_else(|| anyhow!("--from-literal {literal:?}: write it as key=value"))?;
        data.insert(key.to_string(), value.to_string());
    }
    for file in files {
        let (key, path) = file.split_once('=').ok_or_else(|| anyhow!("--from-file {file:?}: write it as key=PATH"))?;
        let value = std::fs::read_to_string(path).with_context(|| format!("--from-file {key}: reading {path}"))?;
        data.insert(key.to_string(), value);
    }
    let message = pb::SetSecretRequest { name: name.into(), data };
    let info = cluster
        .call(|ch| {
            let message = message.clone();
            async move { SecretServiceClient::new(ch).set(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    println!("secret/{} set (keys: {})", info.name, info.keys.join(", "));
    Ok(())
}

pub async fn list(cluster: &Cluster) -> Result<()> {
    let reply = cluster
        .call(|ch| async move { SecretServiceClient::new(ch).list(cluster.request(pb::ListSecretsRequest {})).await })
        .await?
        .into_inner();
    println!("{:<32} KEYS", "NAME");
    for secret in reply.secrets {
        println!("{:<32} {}", secret.name, secret.keys.join(","));
    }
    Ok(())
}

pub async fn delete(cluster: &Cluster, name: &str) -> Result<()> {
    let message = pb::DeleteSecretRequest { name: name.into() };
    let info = cluster
        .call(|ch| {
            let message = message.clone();
            async move { SecretServiceClient::new(ch).delete(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    println!("secret/{} deleted", info.name);
    Ok(())
}
