//! The agent's identity: a join token is exchanged once for a credential, which is kept in
//! `DATA_DIR/agent.json` (mode 0600) so a restart needs no new token (DESIGN §7.1).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use xene_proto as pb;
use xene_proto::agent_service_client::AgentServiceClient;

use crate::config::AgentConfig;
use crate::connect::channel;

/// What the agent keeps between restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub agent: String,
    pub credential: String,
}

const FILE: &str = "agent.json";

/// Loads the stored credential, or joins with the token and stores the result.
pub async fn load_or_join(config: &AgentConfig) -> Result<Credential> {
    let path = config.data_dir.join(FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let stored: Credential = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid credential file", path.display()))?;
        if stored.agent != config.name {
            bail!(
                "{} belongs to agent {:?}, not {:?}; use the agent's own --data-dir or its name",
                path.display(),
                stored.agent,
                config.name
            );
        }
        return Ok(stored);
    }
    let token = config.token.clone().ok_or_else(|| {
        anyhow!("this agent has not joined yet: pass a join token with --token (xenectl token create --kind agent)")
    })?;
    let request = pb::JoinAgentRequest {
        join_token: token,
        name: config.name.clone(),
        labels: config.labels().into_iter().collect(),
        capacity: config.capacity,
    };
    let mut last = String::new();
    for round in 0..10 {
        for server in &config.servers {
            let mut client = AgentServiceClient::new(channel(server, &config.tls)?);
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(Duration::from_secs(10));
            match client.join(call).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let credential = Credential { agent: reply.agent, credential: reply.credential };
                    store(&config.data_dir, &credential)?;
                    tracing::info!(agent = %credential.agent, "joined the cluster");
                    return Ok(credential);
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                    ) =>
                {
                    last = format!("{server}: {}", crate::connect::describe_status(&status));
                }
                Err(status) => bail!("the cluster refused to let this agent join: {}", status.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * (round + 1))).await;
    }
    bail!("no server answered the join: {last}")
}

fn store(dir: &Path, credential: &Credential) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(serde_json::to_string_pretty(credential)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
