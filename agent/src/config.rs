//! `xene-agent`'s flags (each also read from its `XENE_*` variable).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use xene_model::address::{ClientTlsPem, ServerAddress};

use crate::connect::ClientTls;
use crate::runner::LogCap;

#[derive(Debug, Clone, Parser)]
#[command(name = "xene-agent", version, about = "A Xene agent: holds pipeline leases and runs their tasks.")]
pub struct AgentConfig {
    /// Servers to connect to, HOST:PORT (or https://HOST:PORT for TLS) separated by commas;
    /// any one will do.
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
    /// Tasks this agent runs at once, over all its runs; a ready task waits for a free slot
    /// [default: twice the number of CPUs].
    #[arg(long, env = "XENE_MAX_TASKS", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_tasks: Option<u64>,
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
    /// CA certificates (PEM) that signed the servers' certificates, for https:// servers
    /// [default: the system's roots].
    #[arg(long, env = "XENE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM), for servers that require client certificates.
    #[arg(long, env = "XENE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "XENE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// What --tls-ca, --tls-cert and --tls-key hold, read by [`AgentConfig::load_tls`].
    #[arg(skip)]
    pub tls: ClientTls,
}

impl AgentConfig {
    /// `--max-tasks`, or twice the CPUs this process may use.
    pub fn max_tasks(&self) -> usize {
        match self.max_tasks {
            Some(max) => max as usize,
            None => std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
        }
    }
}

/// The servers' addresses the agent was given: at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers(Vec<ServerAddress>);

impl std::ops::Deref for Servers {
    type Target = [ServerAddress];

    fn deref(&self) -> &[ServerAddress] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Servers {
    type Item = &'a ServerAddress;
    type IntoIter = std::slice::Iter<'a, ServerAddress>;

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
        match ServerAddress::parse(entry) {
            Ok(address) => servers.push(address),
            Err(e) => {
                return Err(format!(
                    "entry {} of --servers (or XENE_SERVERS), {e}; list the servers' gRPC addresses as HOST:PORT separated by commas, e.g. xene-1:7400,xene-2:7400",
                    index + 1
                ));
            }
        }
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
    /// Reads the TLS files into [`AgentConfig::tls`], and refuses them beside a plain server
    /// address.
    pub fn load_tls(&mut self) -> anyhow::Result<()> {
        let pem = ClientTlsPem::read(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            &self.servers,
            "--servers (or XENE_SERVERS)",
            &|path| std::fs::read(path),
        )?;
        self.tls = pem.map(ClientTls::from).unwrap_or_default();
        // Built now, so that a certificate that does not match its key, or a CA rustls
        // cannot use, stops the agent here rather than failing every connection later.
        for server in self.servers.iter().filter(|s| s.is_tls()) {
            crate::connect::endpoint(server, &self.tls).map_err(|e| {
                anyhow::anyhow!(
                    "the TLS settings (--tls-ca, --tls-cert, --tls-key) for {server}: {}",
                    crate::connect::describe(&e)
                )
            })?;
        }
        Ok(())
    }

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
            ("https://a:1,http://b:2", vec!["https://a:1", "b:2"]),
        ] {
            let config =
                AgentConfig::try_parse_from(["xene-agent", "--servers", text, "--name", "a", "--data-dir", "/a"])
                    .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let got: Vec<String> = config.servers.iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn a_malformed_server_entry_is_refused_saying_which_and_how_to_write_it() {
        for (text, entry, why) in [
            ("a:1,b", "entry 2", "\"b\" is not HOST:PORT or https://HOST:PORT: the port is missing"),
            ("a:1,b c:2", "entry 2", "space"),
            ("grpc://a:1", "entry 1", "scheme"),
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
    fn tls_files_are_read_at_start_up_and_refused_beside_a_plain_server() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n").expect("write");
        let ca = ca.to_str().expect("utf-8 path");

        let mut plain = parse(&["--tls-ca", ca]).expect("flags");
        let message = plain.load_tls().expect_err("TLS beside a plain address").to_string();
        assert!(message.contains("127.0.0.1:7000, a plain address") && message.contains("https://127.0.0.1:7000"));

        let over_tls = |extra: &[&str]| {
            let base = ["xene-agent", "--servers", "https://127.0.0.1:7000", "--name", "a", "--data-dir", "/a"];
            AgentConfig::try_parse_from(base.iter().chain(extra)).expect("flags")
        };
        over_tls(&["--tls-ca", ca]).load_tls().expect("a CA and https:// servers");

        let message = over_tls(&["--tls-ca", "/nonexistent/ca.pem"]).load_tls().expect_err("missing file").to_string();
        assert!(message.contains("--tls-ca /nonexistent/ca.pem") && message.contains("check the path"), "{message}");
        let mut half = parse(&["--tls-cert", ca]).expect("flags");
        let message = half.load_tls().expect_err("a certificate without its key").to_string();
        assert!(message.contains("--tls-cert is given without --tls-key"), "{message}");
    }

    #[test]
    fn max_tasks_defaults_to_twice_the_cpus_and_is_at_least_one() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(&[]).expect("defaults").max_tasks(), 2 * cpus);
        assert_eq!(parse(&["--max-tasks", "3"]).expect("three").max_tasks(), 3);
        let message = parse(&["--max-tasks", "0"]).expect_err("zero").to_string();
        assert!(message.contains("--max-tasks") && message.contains("0 is not in 1..=10000"), "{message}");
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
