//! `xene-agent`'s flags (each also read from its `XENE_*` variable).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;

use crate::runner::LogCap;

#[derive(Debug, Clone, Parser)]
#[command(name = "xene-agent", version, about = "A Xene agent: holds pipeline leases and runs their tasks.")]
pub struct AgentConfig {
    /// Servers to connect to, HOST:PORT separated by commas; any one will do.
    #[arg(long, env = "XENE_SERVERS", required = true, value_parser = parse_servers)]
    pub servers: Servers,
    /// A join token (xenectl token create --kind agent); needed only the first time.
    #[arg(long, env = "XENE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This agent's name, unique in the cluster (lowercase letters, digits, '-').
    #[arg(long, env = "XENE_AGENT_NAME")]
    pub name: String,
    /// Labels that pipelines select on, k=v separated by commas.
    #[arg(long, env = "XENE_AGENT_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Directory for the agent's credential and work.
    #[arg(long, env = "XENE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// How tasks run: docker or process.
    #[arg(long, env = "XENE_EXECUTOR", default_value = "docker", value_parser = ["docker", "process"])]
    pub executor: String,
    /// How many pipelines this agent takes at most.
    #[arg(long, env = "XENE_AGENT_CAPACITY", default_value_t = 16)]
    pub capacity: u32,
    /// How fast step output is shipped to the servers, in KiB/s, after a burst of a quarter
    /// second's worth; faster output waits in the agent (within each step's cap). 0: no limit.
    #[arg(long, env = "XENE_LOG_RATE_KIB", default_value_t = 4096)]
    pub log_rate_kib: u64,
    /// Per-step log cap, in lines: the first half is shipped as it comes, then only the last
    /// half is kept and shipped when the step ends, behind a marker.
    #[arg(long, env = "XENE_LOG_CAP_LINES", default_value_t = LogCap::DEFAULT.lines, value_parser = clap::value_parser!(u64).range(2..))]
    pub log_cap_lines: u64,
    /// Per-step log cap, in MiB of text, applied as the line cap is.
    #[arg(long, env = "XENE_LOG_CAP_MIB", default_value_t = LogCap::DEFAULT.bytes >> 20, value_parser = clap::value_parser!(u64).range(2..=1 << 20))]
    pub log_cap_mib: u64,
    /// Log output: pretty or json.
    #[arg(long, env = "XENE_LOG_FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,
}

/// The servers' addresses the agent was given: at least one, each `HOST:PORT`
/// ([`crate::connect::endpoint`] accepts every one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers(Vec<String>);

impl std::ops::Deref for Servers {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Servers {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Reads `--servers`/`XENE_SERVERS`: entries separated by commas, each trimmed, empty ones
/// (a trailing comma) skipped. A malformed entry is refused here, at start-up, rather than
/// when the agent first tries it, possibly hours later.
fn parse_servers(text: &str) -> Result<Servers, String> {
    let mut servers = Vec::new();
    for (index, entry) in text.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        if let Err(e) = crate::connect::endpoint(entry) {
            return Err(format!(
                "entry {} of --servers (or XENE_SERVERS), {e}; list the servers' gRPC addresses as HOST:PORT separated by commas, e.g. xene-1:7400,xene-2:7400",
                index + 1
            ));
        }
        servers.push(entry.to_string());
    }
    if servers.is_empty() {
        return Err("--servers (or XENE_SERVERS) names no server; list the servers' gRPC addresses as HOST:PORT separated by commas, e.g. xene-1:7400,xene-2:7400".into());
    }
    Ok(Servers(servers))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("label {text:?}: write it as key=value"))?;
    if key.trim().is_empty() {
        return Err(format!("label {text:?}: the key is empty"));
    }
    Ok((key.trim().to_string(), value.trim().to_string()))
}

impl AgentConfig {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<AgentConfig, clap::Error> {
        let base = ["xene-agent", "--servers", "127.0.0.1:7000", "--name", "a", "--data-dir", "/tmp/a"];
        AgentConfig::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn server_entries_are_trimmed_and_empty_ones_skipped() {
        for (text, want) in [
            ("127.0.0.1:7000", vec!["127.0.0.1:7000"]),
            ("a:1,b:2,", vec!["a:1", "b:2"]),
            ("a:1, b:2 ,,c:3", vec!["a:1", "b:2", "c:3"]),
            (" [::1]:7400 ", vec!["[::1]:7400"]),
        ] {
            let config =
                AgentConfig::try_parse_from(["xene-agent", "--servers", text, "--name", "a", "--data-dir", "/a"])
                    .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(config.servers.to_vec(), want, "{text:?}");
        }
    }

    #[test]
    fn a_malformed_server_entry_is_refused_saying_which_and_how_to_write_it() {
        for (text, entry, why) in [
            ("a:1,b", "entry 2", "\"b\" is not HOST:PORT: the port is missing"),
            ("a:1,b c:2", "entry 2", "space"),
            ("http://a:1", "entry 1", "scheme"),
            ("a:1,,x:99999", "entry 3", "port must be"),
        ] {
            let message =
                AgentConfig::try_parse_from(["xene-agent", "--servers", text, "--name", "a", "--data-dir", "/a"])
                    .expect_err(text)
                    .to_string();
            for part in [entry, why, "--servers", "XENE_SERVERS", "HOST:PORT separated by commas"] {
                assert!(message.contains(part), "{text:?}: {part:?} missing from {message}");
            }
        }
        for empty in ["", ",", " , "] {
            let message = parse_servers(empty).expect_err(empty);
            assert!(message.contains("names no server"), "{empty:?}: {message}");
        }
    }

    #[test]
    fn the_log_cap_defaults_to_the_shippers_and_bad_values_are_refused_with_their_range() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(LogCap { lines: config.log_cap_lines, bytes: config.log_cap_mib << 20 }, LogCap::DEFAULT);
        for (flag, value, range) in
            [("--log-cap-lines", "1", "2.."), ("--log-cap-mib", "1", "2..=1048576"), ("--log-cap-mib", "x", "")]
        {
            let message = parse(&[flag, value]).expect_err("refused").to_string();
            assert!(message.contains(flag) && message.contains(&format!("'{value}'")), "{message}");
            assert!(message.contains(range), "{message}");
        }
    }
}
