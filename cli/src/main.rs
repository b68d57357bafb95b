//! `xenectl`: the command-line client of a Xene cluster.

mod agents;
mod client;
mod config;
mod objects;
mod runs;
mod secrets;

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use tokio_stream::StreamExt;
use xene_proto as pb;
use xene_proto::cluster_service_client::ClusterServiceClient;
use xene_proto::kv_service_client::KvServiceClient;

use client::Cluster;

#[derive(Parser)]
#[command(name = "xenectl", version, about = "Control a Xene cluster.")]
struct Cli {
    /// Servers to talk to, HOST:PORT (https://HOST:PORT for TLS) separated by commas; tried
    /// in turn [default: servers in the config file, else 127.0.0.1:7400].
    #[arg(long, env = "XENE_SERVERS", value_delimiter = ',', global = true)]
    servers: Option<Vec<String>>,
    /// Bearer token (see DATA_DIR/admin.token on the first server) [default: token in the
    /// config file].
    #[arg(long, env = "XENE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Config file with servers, token, tls_ca, tls_cert and tls_key [default:
    /// ~/.config/xene/config.yaml, if it exists].
    #[arg(long, env = "XENECTL_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that signed the servers' certificates, for https:// servers
    /// [default: the system's roots].
    #[arg(long, env = "XENE_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for servers that require one.
    #[arg(long, env = "XENE_TLS_CERT", global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "XENE_TLS_KEY", global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// Per-call timeout in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update workflows from manifests (validated here first).
    Apply {
        /// A manifest file, a directory of them, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// List objects, or show one.
    Get {
        /// workflows or pipelines.
        kind: String,
        /// A workflow name, or WORKFLOW/PIPELINE.
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: objects::Output,
        /// Only objects whose labels match, e.g. team=infra,tier!=db (not with NAME).
        #[arg(short = 'l', long, default_value = "", conflicts_with = "name")]
        selector: String,
    },
    /// Show a workflow (pipelines, status, triggers, task tree) or a pipeline WORKFLOW/PIPELINE
    /// (placement; each trigger with its next and last fire and webhook URL).
    Describe { kind: String, name: String },
    /// Delete a workflow and its pipelines.
    Delete { kind: String, name: String },
    /// Start a run of WORKFLOW/PIPELINE and print its ID.
    Run {
        target: String,
        /// A run parameter, key=value (repeatable); steps see it as an environment variable.
        #[arg(long = "param")]
        params: Vec<String>,
        /// Show the task tree until the run ends; exit non-zero unless it succeeded.
        #[arg(long)]
        watch: bool,
    },
    /// List runs, optionally of WORKFLOW or WORKFLOW/PIPELINE.
    Runs {
        target: Option<String>,
        #[arg(long, default_value = "")]
        phase: String,
    },
    /// Print a run's logs.
    Logs {
        run: String,
        #[arg(long, default_value = "")]
        task: String,
        #[arg(long, default_value = "")]
        step: String,
        /// Keep printing new lines until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a run.
    Cancel { run: String },
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Set, list and delete secrets (values are never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The agents: state, labels, pipelines held, last heartbeat.
    Agents,
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// The raw key-value store (admin only).
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Create or replace a secret.
    Set {
        name: String,
        /// key=value (repeatable).
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// key=PATH: the file's contents (repeatable).
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
    /// List secrets and their keys.
    List,
    /// Delete a secret.
    Delete { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once and stored only hashed.
    Create {
        /// agent (for agents to join), admin or viewer.
        #[arg(long)]
        kind: String,
        /// Lifetime, e.g. 30m, 1h, 24h (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// How many times a join token may be used (default: unlimited).
        #[arg(long, default_value_t = 0)]
        uses: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by ID.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// This server's view: role, leader, term, indexes, members.
    Status,
    /// The members and their roles.
    Members,
    /// Add a server (it must be running); it joins as a learner and becomes a voter.
    Add { node_id: u64, grpc_addr: String, http_addr: String },
    /// Remove a server from the cluster; its node ID is never used again.
    Remove { node_id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { node_id: u64 },
    /// Build a snapshot now on the server answering.
    Snapshot,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Write a value.
    Put { key: String, value: String },
    /// Read a key, or every key under a prefix.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Read this server's state without asking the leader (possibly stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key, or every key under a prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Print every change to a key or prefix as it happens.
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (0: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xenectl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Completion { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "xenectl", &mut std::io::stdout());
        return Ok(());
    }
    let settings = config::resolve(config::Given {
        config: cli.config,
        servers: cli.servers,
        token: cli.token,
        tls_ca: cli.tls_ca,
        tls_cert: cli.tls_cert,
        tls_key: cli.tls_key,
    })?;
    let cluster = Cluster::new(settings, Duration::from_secs(cli.timeout))?;
    match cli.command {
        Command::Apply { file } => objects::apply(&cluster, &file).await,
        Command::Get { kind, name, output, selector } => {
            objects::get(&cluster, &kind, name.as_deref(), output, &selector).await
        }
        Command::Describe { kind, name } => objects::describe(&cluster, &kind, &name).await,
        Command::Delete { kind, name } => objects::delete(&cluster, &kind, &name).await,
        Command::Token(TokenCommand::Create { kind, ttl, uses, description }) => {
            agents::token_create(&cluster, &kind, ttl.as_deref(), uses, &description).await
        }
        Command::Token(TokenCommand::List) => agents::token_list(&cluster).await,
        Command::Token(TokenCommand::Revoke { id }) => agents::token_revoke(&cluster, &id).await,
        Command::Agents => agents::agents(&cluster).await,
        Command::Secret(SecretCommand::Set { name, literals, files }) => {
            secrets::set(&cluster, &name, &literals, &files).await
        }
        Command::Secret(SecretCommand::List) => secrets::list(&cluster).await,
        Command::Secret(SecretCommand::Delete { name }) => secrets::delete(&cluster, &name).await,
        Command::Run { target, params, watch } => runs::run(&cluster, &target, &params, watch).await,
        Command::Runs { target, phase } => runs::list(&cluster, target.as_deref(), &phase).await,
        Command::Logs { run, task, step, follow } => runs::logs(&cluster, &run, &task, &step, follow).await,
        Command::Cancel { run } => runs::cancel(&cluster, &run).await,
        Command::Cluster(command) => cluster_command(&cluster, command).await,
        Command::Completion { .. } => Ok(()),
        Command::Kv(command) => kv_command(&cluster, command).await,
    }
}

fn print_members(members: &[pb::Member], leader: u64) {
    println!("{:<8} {:<8} {:<24} {:<24}", "ID", "ROLE", "GRPC", "HTTP");
    for m in members {
        let role = if m.node_id == leader { "leader" } else { m.role.as_str() };
        println!("{:<8} {:<8} {:<24} {:<24}", m.node_id, role, m.grpc_addr, m.http_addr);
    }
}

async fn cluster_command(cluster: &Cluster, command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status => {
            let status =
                cluster
                    .call(|ch| async move {
                        ClusterServiceClient::new(ch).status(cluster.request(pb::StatusRequest {})).await
                    })
                    .await?
                    .into_inner();
            println!("node:        {} ({})", status.node_id, status.state);
            println!("leader:      {} {}", status.leader_id, status.leader_grpc_addr);
            println!("term:        {}", status.term);
            println!("applied:     {}", status.applied_index);
            println!("last log:    {}", status.last_log_index);
            print_members(&status.members, status.leader_id);
        }
        ClusterCommand::Members => {
            let reply = cluster
                .call(|ch| async move {
                    ClusterServiceClient::new(ch).members(cluster.request(pb::MembersRequest {})).await
                })
                .await?
                .into_inner();
            print_members(&reply.members, reply.leader_id);
        }
        ClusterCommand::Add { node_id, grpc_addr, http_addr } => {
            let message = pb::AddMemberRequest { node_id, grpc_addr, http_addr };
            let reply = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { ClusterServiceClient::new(ch).add_member(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            print_members(&reply.members, 0);
        }
        ClusterCommand::Remove { node_id } => {
            let reply = cluster
                .call(|ch| async move {
                    ClusterServiceClient::new(ch)
                        .remove_member(cluster.request(pb::RemoveMemberRequest { node_id }))
                        .await
                })
                .await?
                .into_inner();
            print_members(&reply.members, 0);
        }
        ClusterCommand::TransferLeader { node_id } => {
            let reply = cluster
                .call(|ch| async move {
                    ClusterServiceClient::new(ch)
                        .transfer_leader(cluster.request(pb::TransferLeaderRequest { node_id }))
                        .await
                })
                .await?
                .into_inner();
            println!("leader is now node {}", reply.leader_id);
        }
        ClusterCommand::Snapshot => {
            let reply = cluster
                .call(|ch| async move {
                    ClusterServiceClient::new(ch).snapshot(cluster.request(pb::SnapshotRequest {})).await
                })
                .await?
                .into_inner();
            println!("node {} snapshot at index {}", reply.node_id, reply.snapshot_index);
        }
    }
    Ok(())
}

/// A request ID for this invocation, so the server applies a retried write once.
fn request_id() -> pb::RequestId {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    pb::RequestId { client_id: format!("xenectl-{}-{nanos}", std::process::id()), request_id: 1 }
}

async fn kv_command(cluster: &Cluster, command: KvCommand) -> Result<()> {
    match command {
        KvCommand::Put { key, value } => {
            let message = pb::PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                id: Some(request_id()),
                prev_kv: false,
            };
            let reply = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { KvServiceClient::new(ch).put(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            println!("revision {}", reply.header.map_or(0, |h| h.revision));
        }
        KvCommand::Get { key, prefix, limit, serializable } => {
            let message = pb::RangeRequest { key: key.clone().into_bytes(), prefix, limit, serializable };
            let reply = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { KvServiceClient::new(ch).range(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            if reply.kvs.is_empty() && !prefix {
                bail!("key {key:?} not found");
            }
            for kv in reply.kvs {
                if prefix {
                    println!("{}={}", String::from_utf8_lossy(&kv.key), String::from_utf8_lossy(&kv.value));
                } else {
                    println!("{}", String::from_utf8_lossy(&kv.value));
                }
            }
            if reply.more {
                eprintln!("(more keys; raise --limit)");
            }
        }
        KvCommand::Del { key, prefix } => {
            let message = pb::DeleteRequest { key: key.into_bytes(), prefix, id: Some(request_id()), prev_kv: false };
            let reply = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { KvServiceClient::new(ch).delete(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            println!("deleted {}", reply.deleted);
        }
        KvCommand::Watch { key, prefix, rev } => {
            let key_shown = key.clone();
            let message = pb::WatchRequest { key: key.into_bytes(), prefix, start_revision: rev };
            let mut stream = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { KvServiceClient::new(ch).watch(cluster.stream_request(message)).await }
                })
                .await?
                .into_inner();
            // The revision to go on from, should the stream break.
            let mut next = rev;
            while let Some(response) = stream.next().await {
                let response = response.map_err(|s| {
                    let resume = if next > 0 { format!(" --rev {next}") } else { String::new() };
                    anyhow!(
                        "the watch ended ({:?}: {}); to go on without missing an event, run xenectl kv watch{}{resume} {key_shown} again",
                        s.code(),
                        s.message(),
                        if prefix { " --prefix" } else { "" },
                    )
                })?;
                if response.compact_revision != 0 {
                    bail!(
                        "revision {rev} is compacted (events up to {} are gone); watch from a later revision",
                        response.compact_revision
                    );
                }
                for event in response.events {
                    let kv = event.kv.unwrap_or_default();
                    let kind = if event.r#type == pb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" };
                    next = next.max(kv.mod_revision + 1);
                    println!(
                        "{} {kind} {}={}",
                        kv.mod_revision,
                        String::from_utf8_lossy(&kv.key),
                        String::from_utf8_lossy(&kv.value)
                    );
                }
            }
        }
    }
    Ok(())
}
