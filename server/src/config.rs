//! `xene-server`'s configuration: flags, then `XENE_*` environment variables, then a YAML
//! config file (`--config`), then defaults (DESIGN §5.1).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::tls::{ServerTls, TlsPaths};
use xene_model::address::{ServerAddress, TlsFileError};

/// Raft heartbeat interval when none is configured.
pub const DEFAULT_HEARTBEAT_MS: u64 = 50;
/// Smallest election timeout when none is configured. openraft 0.9 has a follower that heard
/// from a leader wait the largest timeout (twice this: the leader's lease) plus a random
/// timeout between the smallest and the largest before standing: 450–600 ms after the
/// leader's last heartbeat, which keeps a failover under PERF W3's second (DESIGN §5).
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 150;
/// Log entries between snapshots when none is configured (etcd's default too). A snapshot
/// copies the whole state machine; at 10,000 a busy server spent a tenth of its CPU building
/// them (PERF W1), and the log it keeps instead is tens of megabytes.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 100_000;

/// Command-line flags; each also reads the environment variable it names.
#[derive(Debug, Parser)]
#[command(name = "xene-server", version, about = "A Xene control-plane server (a Raft member).")]
pub struct Flags {
    /// YAML file with any of the settings below (keys in snake_case); flags and XENE_*
    /// variables override it.
    #[arg(long, env = "XENE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This server's Raft node ID (1 or more; never reuse an ID). Recorded in the data
    /// directory on first start; later starts may leave it out, and must not change it.
    #[arg(long, env = "XENE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory for the database, the admin token and other state.
    #[arg(long, env = "XENE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, HOST:PORT [default: 127.0.0.1:7400].
    #[arg(long, env = "XENE_GRPC_ADDR")]
    pub grpc_addr: Option<String>,
    /// REST listen address (webhooks, health, metrics), HOST:PORT [default: 127.0.0.1:7401].
    #[arg(long, env = "XENE_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// gRPC address other servers and clients use to reach this one [default: --grpc-addr].
    #[arg(long, env = "XENE_ADVERTISE_GRPC_ADDR")]
    pub advertise_grpc_addr: Option<String>,
    /// REST address others use to reach this one [default: --http-addr].
    #[arg(long, env = "XENE_ADVERTISE_HTTP_ADDR")]
    pub advertise_http_addr: Option<String>,
    /// Secret shared by every server of the cluster; peers without it are refused.
    #[arg(long, env = "XENE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Start a new cluster with this server as its first member (fresh data directory only).
    /// `--bootstrap=false` (or XENE_BOOTSTRAP=false) overrides the config file.
    #[arg(long, env = "XENE_BOOTSTRAP", num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub bootstrap: Option<bool>,
    /// Join the cluster through any of these members' gRPC addresses (fresh data directory only).
    #[arg(long, env = "XENE_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Raft heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "XENE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Smallest Raft election timeout in milliseconds [default: 150, or three heartbeats if
    /// that is more]; the largest is twice it.
    /// A follower stands for election after the largest plus a random timeout without
    /// hearing from the leader: 450–600 ms by default.
    #[arg(long, env = "XENE_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Log entries between snapshots [default: 100000].
    #[arg(long, env = "XENE_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Log output: `pretty` or `json` [default: pretty].
    #[arg(long, env = "XENE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// An agent silent this long (ms) is marked down and its pipelines move [default: 10000].
    #[arg(long, env = "XENE_AGENT_TTL_MS")]
    pub agent_ttl_ms: Option<u64>,
    /// Finished runs kept per pipeline, with their logs [default: 100].
    #[arg(long, env = "XENE_RUN_HISTORY")]
    pub run_history: Option<usize>,
    /// This server's certificate chain (PEM): TLS on both listeners, and toward its peers.
    /// It must name the host of --advertise-grpc-addr (a DNS or IP subject alt name).
    #[arg(long, env = "XENE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "XENE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that signed the other servers' certificates [default: the
    /// system's roots].
    #[arg(long, env = "XENE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Require a client certificate signed by these CA certificates (PEM) on the gRPC
    /// listener, from agents, xenectl and the other servers alike (which present their
    /// --tls-cert).
    #[arg(long, env = "XENE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The same settings as read from `--config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<String>,
    pub http_addr: Option<String>,
    pub advertise_grpc_addr: Option<String>,
    pub advertise_http_addr: Option<String>,
    pub cluster_secret: Option<String>,
    pub bootstrap: Option<bool>,
    pub join: Option<Vec<String>>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<u64>,
    pub snapshot_logs: Option<u64>,
    pub log_format: Option<String>,
    pub agent_ttl_ms: Option<u64>,
    pub run_history: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub grpc_addr: String,
    pub http_addr: String,
    pub advertise_grpc_addr: String,
    pub advertise_http_addr: String,
    pub cluster_secret: String,
    pub bootstrap: bool,
    pub join: Vec<String>,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_logs: u64,
    pub log_format: LogFormat,
    pub agent_ttl: Duration,
    pub run_history: usize,
    /// `None`: plain gRPC and HTTP.
    pub tls: Option<ServerTls>,
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] TlsFileError),
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    yaml_serde::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })
}

impl ServerConfig {
    /// Merges flags (and their environment variables) over the config file over defaults,
    /// and checks the result.
    pub fn resolve(flags: Flags) -> Result<ServerConfig, ConfigError> {
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = flags.data_dir.or(file.data_dir).ok_or_else(|| {
            ConfigError::Invalid("--data-dir is required (or XENE_DATA_DIR, or data_dir in --config)".into())
        })?;
        let node_id = node_id(flags.node_id.or(file.node_id), &data_dir)?;
        let cluster_secret = flags.cluster_secret.or(file.cluster_secret).ok_or_else(|| {
            ConfigError::Invalid(
                "--cluster-secret is required (or XENE_CLUSTER_SECRET, or cluster_secret in --config)".into(),
            )
        })?;
        if cluster_secret.len() < 8 {
            return Err(ConfigError::Invalid("--cluster-secret must be at least 8 characters".into()));
        }
        // It travels in a gRPC header between the servers.
        if !cluster_secret.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ConfigError::Invalid(
                "--cluster-secret must be printable ASCII (letters, digits, punctuation, spaces), without newlines or other control characters".into(),
            ));
        }
        let grpc_addr = flags.grpc_addr.or(file.grpc_addr).unwrap_or_else(|| "127.0.0.1:7400".into());
        let http_addr = flags.http_addr.or(file.http_addr).unwrap_or_else(|| "127.0.0.1:7401".into());
        let advertise_grpc_addr = advertised(
            "--advertise-grpc-addr",
            "--grpc-addr",
            flags.advertise_grpc_addr.or(file.advertise_grpc_addr),
            &grpc_addr,
        )?;
        let advertise_http_addr = advertised(
            "--advertise-http-addr",
            "--http-addr",
            flags.advertise_http_addr.or(file.advertise_http_addr),
            &http_addr,
        )?;
        let bootstrap = flags.bootstrap.or(file.bootstrap).unwrap_or(false);
        let join = if flags.join.is_empty() { file.join.unwrap_or_default() } else { flags.join };
        if bootstrap && !join.is_empty() {
            return Err(ConfigError::Invalid(
                "--bootstrap and --join exclude each other: bootstrap the first server, join the others".into(),
            ));
        }
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("--log-format {other:?}: use \"pretty\" or \"json\"")));
            }
        };
        let heartbeat = Duration::from_millis(flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(DEFAULT_HEARTBEAT_MS));
        // Unset, the election timeout follows a raised heartbeat (three heartbeats at least),
        // so setting only the heartbeat never makes a configuration that is refused below.
        let election_timeout = Duration::from_millis(
            flags
                .election_timeout_ms
                .or(file.election_timeout_ms)
                .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS.max(3 * heartbeat.as_millis() as u64)),
        );
        if election_timeout <= heartbeat * 2 {
            return Err(ConfigError::Invalid(format!(
                "--election-timeout-ms ({}) must be more than twice --heartbeat-ms ({})",
                election_timeout.as_millis(),
                heartbeat.as_millis()
            )));
        }
        let tls = ServerTls::load(&TlsPaths {
            cert: flags.tls_cert.or(file.tls_cert),
            key: flags.tls_key.or(file.tls_key),
            ca: flags.tls_ca.or(file.tls_ca),
            client_ca: flags.tls_client_ca.or(file.tls_client_ca),
        })?;
        let join = join
            .iter()
            .map(|entry| {
                let address = ServerAddress::parse(entry.trim()).map_err(|e| ConfigError::Invalid(format!("--join: {e}")))?;
                if address.is_tls() && tls.is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "--join names {address}, but this server has no --tls-cert: a server speaks TLS to its peers when it serves TLS itself; give --tls-cert and --tls-key, or write HOST:PORT"
                    )));
                }
                // The scheme follows this server's TLS; peers are named by HOST:PORT.
                Ok(address.authority().to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerConfig {
            node_id,
            tls,
            advertise_grpc_addr,
            advertise_http_addr,
            data_dir,
            grpc_addr,
            http_addr,
            cluster_secret,
            bootstrap,
            join,
            heartbeat,
            election_timeout,
            snapshot_logs: at_least(
                "--snapshot-logs",
                flags.snapshot_logs.or(file.snapshot_logs).unwrap_or(DEFAULT_SNAPSHOT_LOGS),
                1,
            )?,
            log_format,
            run_history: at_least("--run-history", flags.run_history.or(file.run_history).unwrap_or(100) as u64, 1)?
                as usize,
            agent_ttl: Duration::from_millis(at_least(
                "--agent-ttl-ms",
                flags.agent_ttl_ms.or(file.agent_ttl_ms).unwrap_or(10_000),
                MIN_AGENT_TTL_MS,
            )?),
        })
    }
}

/// The smallest `--agent-ttl-ms`: an agent heartbeats at a third of it.
const MIN_AGENT_TTL_MS: u64 = 200;

/// `value` of `flag`, refused below `least`.
fn at_least(flag: &str, value: u64, least: u64) -> Result<u64, ConfigError> {
    if value < least {
        return Err(ConfigError::Invalid(format!("{flag} is {value}; it must be at least {least}")));
    }
    Ok(value)
}

/// The file in the data directory that records the node ID it was first used with.
pub const NODE_ID_FILE: &str = "node-id";

/// This server's node ID: the one given, checked against the one its data directory records,
/// or the recorded one when none is given. A data directory belongs to one Raft member for
/// good: the log and vote in it are that member's, and another ID on them would break the
/// cluster's safety, so a mismatch is refused.
fn node_id(given: Option<u64>, data_dir: &Path) -> Result<u64, ConfigError> {
    if given == Some(0) {
        return Err(ConfigError::Invalid("--node-id must be 1 or more".into()));
    }
    let path = data_dir.join(NODE_ID_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{} does not hold a node ID ({:?}); write this server's ID there, as a number",
                path.display(),
                text.trim()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(ConfigError::Read { path: path.display().to_string(), source }),
    };
    match (given, recorded) {
        (Some(given), Some(recorded)) if given != recorded => Err(ConfigError::Invalid(format!(
            "--node-id is {given}, but the data directory {} belongs to node {recorded} ({}); give --node-id {recorded}, or a data directory of its own to node {given} (if this one never joined a cluster, remove it)",
            data_dir.display(),
            path.display()
        ))),
        (Some(id), _) | (None, Some(id)) => Ok(id),
        (None, None) => Err(ConfigError::Invalid(format!(
            "--node-id is required (or XENE_NODE_ID, or node_id in --config): the data directory {} has none recorded yet",
            data_dir.display()
        ))),
    }
}

/// Records `node_id` in `data_dir` if it is not there yet (written to a temporary file, then
/// renamed, so a crash leaves the whole ID or none). [`ServerConfig::resolve`] checks it on
/// every later start.
pub fn record_node_id(data_dir: &Path, node_id: u64) -> std::io::Result<()> {
    let path = data_dir.join(NODE_ID_FILE);
    if path.exists() {
        return Ok(());
    }
    let temporary = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&temporary, format!("{node_id}\n"))?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The address `flag` advertises: the one given, else the listener's (`listen_flag`, `listen`).
/// Others dial it, so it must be HOST:PORT with a host they can reach: `0.0.0.0` would have
/// them dial themselves.
fn advertised(flag: &str, listen_flag: &str, given: Option<String>, listen: &str) -> Result<String, ConfigError> {
    let (address, source) = match given {
        Some(address) => (address, flag.to_string()),
        None => (listen.to_string(), format!("{listen_flag} (which {flag} defaults to)")),
    };
    let host_port = address.rsplit_once(':').filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    let Some((host, _)) = host_port.filter(|_| !address.contains("://") && !address.contains('/')) else {
        return Err(ConfigError::Invalid(format!(
            "{source} is {address:?}; write HOST:PORT, the address the other servers and agents reach this server at"
        )));
    };
    let unspecified = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
    if unspecified.is_ok_and(|ip| ip.is_unspecified()) {
        return Err(ConfigError::Invalid(format!(
            "{source} is {address}, which others cannot dial; when listening on every interface, give {flag} with this host's name or address"
        )));
    }
    Ok(address)
}
