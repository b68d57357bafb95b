//! Builds a server's parts from its configuration, runs them, and tears them down in order
//! on shutdown: API listeners, then background tasks, then Raft, then storage (STYLE 8).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use xene_proto::agent_service_server::AgentServiceServer;
use xene_proto::cluster_service_server::ClusterServiceServer;
use xene_proto::kv_service_server::KvServiceServer;
use xene_proto::object_service_server::ObjectServiceServer;
use xene_proto::raft_service_server::RaftServiceServer;
use xene_proto::run_service_server::RunServiceServer;
use xene_proto::secret_service_server::SecretServiceServer;
use xene_proto::token_service_server::TokenServiceServer;
use xene_proto::JoinRequest;
use xene_raft_store::{Compare, NodeInfo, Op, Raft, StoreConfig, Txn};

use crate::agents::AgentHub;
use crate::auth::{self, Role, TokenCache};
use crate::config::ServerConfig;
use crate::keys;
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::network::NetworkFactory;
use crate::node::{now_ms, ClusterNode, NodeRecord, Timing};
use crate::peers::PeerPool;
use crate::services::{
    agent::AgentApi, cluster::ClusterApi, kv::KvApi, object::ObjectApi, raft::RaftApi, run::RunApi, secret::SecretApi,
    token::TokenApi,
};

/// Largest gRPC message a client may send (a 1 MiB value plus its envelope).
const MAX_CLIENT_MESSAGE: usize = 2 * 1024 * 1024;
/// Largest message between servers (snapshot chunks, batches of log entries).
const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// How long a REST server over TLS waits for requests in flight when stopping (axum::serve,
/// without TLS, waits for them however long they take; a webhook answers in milliseconds).
const REST_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs a server until `shutdown` is cancelled.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The ports first: a server that cannot listen stops before it creates or opens anything.
    // Peers and clients that connect meanwhile wait in the listen backlog until the services
    // below start serving, as they did while Raft started; their calls' deadlines still hold.
    let grpc_listener = TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| format!("binding --grpc-addr {}; is the port in use?", config.grpc_addr))?;
    let http_listener = TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("binding --http-addr {}; is the port in use?", config.http_addr))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let (log_store, state_machine) =
        xene_raft_store::open(&config.data_dir.join("raft"), &StoreConfig::default()).context("opening the store")?;
    // The database's own record first: a start it refuses must not write the file either.
    log_store
        .claim(config.node_id)
        .with_context(|| format!("checking the node ID of the data directory {}", config.data_dir.display()))?;
    crate::config::record_node_id(&config.data_dir, config.node_id)
        .with_context(|| format!("recording the node ID in {}", config.data_dir.display()))?;
    let reader = state_machine.reader();
    let peers = PeerPool::new(&config.cluster_secret, config.tls.clone())?;
    let timing = Timing {
        heartbeat: config.heartbeat,
        election_min: config.election_timeout,
        election_max: config.election_timeout * 2,
        request_deadline: Duration::from_secs(10),
    };
    let raft_config = openraft::Config {
        cluster_name: "xene".into(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: timing.election_min.as_millis() as u64,
        election_timeout_max: timing.election_max.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        // Keep enough entries behind a snapshot that a briefly slow follower catches up from
        // the log instead of needing the whole snapshot (DESIGN §4.7).
        max_in_snapshot_log_to_keep: config.snapshot_logs.min(1_000),
        // Entries per AppendEntries. openraft 0.9 gives each one heartbeat interval to
        // complete; `network::PeerNetwork` also cuts a message at 128 KiB beyond its first
        // entry (a log chunk is about 256 KiB and travels alone), so the count only bounds
        // messages of small writes.
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .context("raft configuration")?;
    let raft =
        Raft::new(config.node_id, Arc::new(raft_config), NetworkFactory::new(peers.clone()), log_store, state_machine)
            .await
            .context("starting raft")?;

    let info =
        NodeInfo { grpc_addr: config.advertise_grpc_addr.clone(), http_addr: config.advertise_http_addr.clone() };
    let metrics = Arc::new(Metrics::new());
    let node = Arc::new(ClusterNode::new(
        config.node_id,
        info.clone(),
        raft.clone(),
        reader.clone(),
        peers,
        metrics.clone(),
        timing,
    ));
    let tokens = TokenCache::default();
    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();

    let hub = Arc::new(AgentHub::new(config.agent_ttl));
    tasks.spawn(tokens.clone().follow(reader.clone(), stop.clone()));
    tasks.spawn(crate::leadership::follow(raft.clone(), node.leadership.clone(), timing.election_min, stop.clone()));
    tasks.spawn(crate::scheduler::run(node.clone(), hub.clone(), config.run_history, stop.clone()));
    {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.grpc())
                .context("the TLS settings of the gRPC listener (--tls-cert, --tls-key, --tls-client-ca)")?;
        }
        let grpc = builder
            .layer(GrpcMetricsLayer { metrics: metrics.clone() })
            .add_service(
                RaftServiceServer::new(RaftApi::new(node.clone(), &config.cluster_secret, stop.clone()))
                    .max_decoding_message_size(MAX_PEER_MESSAGE)
                    .max_encoding_message_size(MAX_PEER_MESSAGE),
            )
            .add_service(
                KvServiceServer::new(KvApi::new(node.clone(), tokens.clone(), stop.clone()))
                    .max_decoding_message_size(MAX_CLIENT_MESSAGE),
            )
            .add_service(ClusterServiceServer::new(ClusterApi::new(node.clone(), tokens.clone())))
            .add_service(SecretServiceServer::new(SecretApi::new(node.clone(), tokens.clone())))
            .add_service(RunServiceServer::new(RunApi::new(node.clone(), tokens.clone(), stop.clone())))
            .add_service(TokenServiceServer::new(TokenApi::new(node.clone(), tokens.clone())))
            .add_service(AgentServiceServer::new(AgentApi::new(
                node.clone(),
                tokens.clone(),
                hub.clone(),
                stop.clone(),
            )))
            .add_service(
                ObjectServiceServer::new(ObjectApi::new(node.clone(), tokens.clone(), stop.clone()))
                    .max_decoding_message_size(MAX_CLIENT_MESSAGE + xene_model::limits::MAX_MANIFEST_BYTES),
            );
        let stop = stop.clone();
        tasks.spawn(async move {
            // Without TCP_NODELAY a response written in more than one piece (HTTP/2 headers,
            // data, trailers) waits for the client's delayed ACK: 40 ms on Linux, which one
            // write in seven paid before (PERF W1 at one client: p99 46 ms, p50 1.9 ms).
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            if let Err(e) = grpc.serve_with_incoming_shutdown(incoming, stop.cancelled()).await {
                tracing::error!(error = %e, "the gRPC server failed");
            }
        });
    }
    {
        let router = crate::http::router(node.clone(), tokens.clone());
        let stop = stop.clone();
        match &config.tls {
            None => {
                tasks.spawn(async move {
                    let listener = http_listener.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(error = %e, "could not set TCP_NODELAY on a REST connection");
                        }
                    });
                    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
                        tracing::error!(error = %e, "the REST server failed");
                    }
                });
            }
            Some(tls) => {
                // axum::serve speaks no TLS; axum-server does, with the same router.
                let rustls =
                    tls.rest().await.context("the TLS settings of the REST listener (--tls-cert, --tls-key)")?;
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls)
                    .acceptor(axum_server::accept::NoDelayAcceptor::new());
                let server = axum_server::from_tcp(http_listener.into_std().context("the REST listener")?)
                    .context("the REST listener")?
                    .acceptor(acceptor);
                tasks.spawn(async move {
                    let handle = axum_server::Handle::new();
                    let serve = server.handle(handle.clone()).serve(router.into_make_service());
                    tokio::pin!(serve);
                    let served = tokio::select! {
                        served = &mut serve => served,
                        _ = stop.cancelled() => {
                            handle.graceful_shutdown(Some(REST_SHUTDOWN_GRACE));
                            serve.await
                        }
                    };
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the REST server failed");
                    }
                });
            }
        }
    }
    tracing::info!(
        node = config.node_id,
        grpc = %config.grpc_addr,
        http = %config.http_addr,
        tls = config.tls.is_some(),
        client_certificates = config.tls.as_ref().is_some_and(|t| t.requires_client_certificates()),
        "listening"
    );

    let initialized = raft.is_initialized().await.context("reading raft state")?;
    if config.bootstrap {
        // A new cluster: Raft first, then the first admin token. Restarted with --bootstrap:
        // a server that died between the two finishes its bootstrap; one that finished it
        // does nothing.
        if !initialized {
            tracing::info!(node = config.node_id, "bootstrapping a new cluster");
            raft.initialize(BTreeMap::from([(config.node_id, info.clone())])).await.context("bootstrapping")?;
        }
        let node = node.clone();
        let data_dir = config.data_dir.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                result = bootstrap_cluster(&node, &data_dir, initialized) => if let Err(e) = result {
                    tracing::error!(error = %e, "creating the first admin token failed");
                }
            }
        });
    } else if !initialized {
        if !config.join.is_empty() {
            let node = node.clone();
            let join = config.join.clone();
            let stop = stop.clone();
            tasks.spawn(async move { join_cluster(&node, &join, stop).await });
        } else {
            bail!(
                "the data directory {} holds no cluster: start the first server with --bootstrap and the others with --join HOST:PORT",
                config.data_dir.display()
            );
        }
    }

    {
        let node = node.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        node.metrics.observe_raft(&node.raft);
                        node.finish_joint_membership().await;
                    }
                }
            }
        });
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: API, background tasks, raft, storage");
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within 10 s");
    }
    if let Err(e) = tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await {
        tracing::warn!(error = %e, "raft did not stop within 10 s");
    }
    drop(node);
    drop(reader);
    tracing::info!("stopped");
    Ok(())
}

/// On the first server: once it leads, records its node ID and creates the first admin
/// token, written to `DATA_DIR/admin.token` (mode 0600) and printed once.
/// Stores the first admin token (and this server's record) unless the cluster has them, and
/// writes the token to `DATA_DIR/admin.token`. `resumed`: on a restart, where this server may
/// no longer lead (the write is forwarded to the leader).
async fn bootstrap_cluster(node: &ClusterNode, data_dir: &std::path::Path, resumed: bool) -> anyhow::Result<()> {
    let wait = node.raft.wait(Some(Duration::from_secs(60)));
    if resumed {
        wait.metrics(|m| m.current_leader.is_some(), "a leader").await.context("waiting for a leader")?;
    } else {
        wait.state(openraft::ServerState::Leader, "bootstrap leader").await.context("waiting to become leader")?;
    }
    node.read_barrier().await.context("reading the cluster's state")?;
    let done = node.reader.range(keys::BOOTSTRAPPED.as_bytes().to_vec(), false, 0).await?;
    if !done.kvs.is_empty() {
        return Ok(());
    }
    if resumed {
        tracing::warn!("the bootstrap was interrupted before the first admin token was stored; finishing it");
    }
    let path = data_dir.join("admin.token");
    let token = auth::mint(Role::Admin, "created at bootstrap", now_ms());
    let record = serde_json::to_vec(&token.record)?;
    let node_record = serde_json::to_vec(&NodeRecord {
        grpc_addr: node.info.grpc_addr.clone(),
        http_addr: node.info.http_addr.clone(),
        removed: false,
    })?;
    // The file is written before the token is stored: if this server dies in between, the
    // token is simply never valid, rather than valid and lost.
    write_private(&path, format!("{}\n", token.text).as_bytes())?;
    let response = node
        .txn(Txn {
            compare: vec![Compare::absent(keys::BOOTSTRAPPED)],
            success: vec![
                Op::Put { key: keys::token(&token.record.id).into(), value: record },
                Op::Put { key: keys::node(node.id).into(), value: node_record },
                Op::Put { key: keys::BOOTSTRAPPED.into(), value: token.record.id.clone().into() },
            ],
            failure: vec![],
        })
        .await?;
    if response.succeeded {
        tracing::info!(path = %path.display(), "created the first admin token");
        // Printed once, as DESIGN §5.1 asks; it is also in the file above.
        println!("xene: admin token (also in {}): {}", path.display(), token.text);
    } else {
        std::fs::remove_file(&path).ok();
    }
    Ok(())
}

fn write_private(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// On a new server: asks the members named by `--join` to admit it until one does.
async fn join_cluster(node: &ClusterNode, addrs: &[String], stop: CancellationToken) {
    let mut pause = Duration::from_millis(200);
    loop {
        for addr in addrs {
            let request = JoinRequest {
                node_id: node.id,
                grpc_addr: node.info.grpc_addr.clone(),
                http_addr: node.info.http_addr.clone(),
            };
            let attempt = async {
                let mut client = node.peers.client(addr)?;
                client
                    .join(node.peers.request(request, Duration::from_secs(60)))
                    .await
                    .map_err(crate::node::status_to_error)
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = attempt => result,
            };
            match result {
                Ok(reply) => {
                    tracing::info!(via = %addr, leader = reply.into_inner().leader_id, "joined the cluster");
                    return;
                }
                Err(e) if !e.is_retryable() && !matches!(e, crate::error::ServerError::Internal(_)) => {
                    tracing::error!(via = %addr, error = %e, "the cluster refused to admit this server");
                    return;
                }
                Err(e) => tracing::warn!(via = %addr, error = %e, "joining failed; retrying"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}
