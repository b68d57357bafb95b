//! `xenectl token …` and `xenectl agents`.

use anyhow::{bail, Result};
use xene_proto as pb;
use xene_proto::agent_service_client::AgentServiceClient;
use xene_proto::token_service_client::TokenServiceClient;

use crate::client::Cluster;

fn time_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// `xenectl token create --kind KIND [--ttl D] [--uses N]`: prints the token once.
pub async fn token_create(
    cluster: &Cluster,
    kind: &str,
    ttl: Option<&str>,
    uses: u32,
    description: &str,
) -> Result<()> {
    let ttl_seconds = match ttl {
        None => 0,
        Some(text) => match text.parse::<xene_model::Duration>() {
            Ok(d) if d.as_millis() >= 1000 => d.as_millis() / 1000,
            Ok(_) => bail!("--ttl {text}: use at least 1s"),
            Err(e) => bail!("--ttl {text}: {e}"),
        },
    };
    let message = pb::CreateTokenRequest { kind: kind.into(), ttl_seconds, uses, description: description.into() };
    let reply = cluster
        .call_once("the token may have been created all the same: see xenectl token list", |ch| {
            let message = message.clone();
            async move { TokenServiceClient::new(ch).create(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    let info = reply.info.unwrap_or_default();
    eprintln!("token {} ({}) created; it is shown only now:", info.id, info.kind);
    println!("{}", reply.token);
    Ok(())
}

pub async fn token_list(cluster: &Cluster) -> Result<()> {
    let reply = cluster
        .call(|ch| async move { TokenServiceClient::new(ch).list(cluster.request(pb::ListTokensRequest {})).await })
        .await?
        .into_inner();
    println!(
        "{:<14} {:<14} {:<21} {:<21} {:<6} {:<8} DESCRIPTION",
        "ID", "KIND", "CREATED", "EXPIRES", "USES", "REVOKED"
    );
    for t in reply.tokens {
        let uses = if t.limited_uses { t.uses_left.to_string() } else { "-".into() };
        let description =
            if t.agent.is_empty() { t.description } else { format!("{} (agent {})", t.description, t.agent) };
        println!(
            "{:<14} {:<14} {:<21} {:<21} {:<6} {:<8} {}",
            t.id,
            t.kind,
            time_text(t.created_ms),
            time_text(t.expires_ms),
            uses,
            if t.revoked { "yes" } else { "no" },
            description
        );
    }
    Ok(())
}

pub async fn token_revoke(cluster: &Cluster, id: &str) -> Result<()> {
    let message = pb::RevokeTokenRequest { id: id.into() };
    let info = cluster
        .call(|ch| {
            let message = message.clone();
            async move { TokenServiceClient::new(ch).revoke(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    println!("token {} revoked", info.id);
    Ok(())
}

/// `xenectl agents`: name, labels, state, pipelines held, last heartbeat.
pub async fn agents(cluster: &Cluster) -> Result<()> {
    let reply = cluster
        .call(|ch| async move { AgentServiceClient::new(ch).list(cluster.request(pb::ListAgentsRequest {})).await })
        .await?
        .into_inner();
    println!("{:<20} {:<6} {:<10} {:<24} {:<22} HOLDS", "NAME", "STATE", "PIPELINES", "LAST-HEARTBEAT", "LABELS");
    for a in reply.agents {
        let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let heartbeat = if a.last_heartbeat_ms == 0 { "-".to_string() } else { time_text(a.last_heartbeat_ms) };
        println!(
            "{:<20} {:<6} {:<10} {:<24} {:<22} {}",
            a.name,
            a.state,
            format!("{}/{}", a.pipelines.len(), a.capacity),
            heartbeat,
            if labels.is_empty() { "<none>".into() } else { labels.join(",") },
            a.pipelines.join(",")
        );
    }
    Ok(())
}
