//! Xene on loopback for the benchmarks: a three-server cluster started through the chaos
//! tests' harness (real processes in a temporary directory, removed on drop), agents, and
//! the calls the workloads make.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_model::RunObject;
use xene_proto as pb;
use xene_proto::kv_service_client::KvServiceClient;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;
use xene_proto::token_service_client::TokenServiceClient;

use crate::load::{KvTarget, OpError};

/// Raft timing of the servers the benchmarks start (the server's own defaults unless the
/// command line says otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_logs: u64,
}

/// Starts a cluster of `servers` servers and waits until they all vote. The harness panics
/// when a server does not come up; that panic is turned into an error here.
pub async fn start_cluster(servers: usize, timing: Timing) -> anyhow::Result<TestCluster> {
    let options = ClusterOptions {
        servers,
        heartbeat_ms: timing.heartbeat_ms,
        election_timeout_ms: timing.election_timeout_ms,
        snapshot_logs: timing.snapshot_logs,
        tls: None,
    };
    tokio::spawn(TestCluster::start(options)).await.map_err(|e| anyhow!("starting the Xene cluster: {e}"))
}

/// A `KvService` client of one server, with the admin token.
#[derive(Clone)]
pub struct XeneKv {
    client: KvServiceClient<Channel>,
    auth: MetadataValue<Ascii>,
}

impl XeneKv {
    /// One client per server of `cluster`, in server order.
    pub fn all(cluster: &TestCluster) -> anyhow::Result<Vec<XeneKv>> {
        let auth: MetadataValue<Ascii> =
            format!("Bearer {}", cluster.token).parse().context("the admin token is not printable ASCII")?;
        Ok((0..cluster.servers.len()).map(|i| XeneKv { client: cluster.kv(i), auth: auth.clone() }).collect())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.auth.clone());
        request
    }
}

impl KvTarget for XeneKv {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        let request = self.request(pb::PutRequest { key, value, id: None, prev_kv: false });
        self.client.put(request).await.map(|_| ()).map_err(|s| OpError(format!("{:?}: {}", s.code(), s.message())))
    }

    async fn get(&mut self, key: Vec<u8>, linearizable: bool) -> Result<(), OpError> {
        let request = self.request(pb::RangeRequest { key, prefix: false, limit: 0, serializable: !linearizable });
        self.client.range(request).await.map(|_| ()).map_err(|s| OpError(format!("{:?}: {}", s.code(), s.message())))
    }
}

/// The index of the server that says it leads, waiting up to `timeout` for one.
pub async fn leader(cluster: &TestCluster, timeout: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        for (index, server) in cluster.servers.iter().enumerate() {
            if !server.is_running() {
                continue;
            }
            let status = tokio::time::timeout(Duration::from_millis(500), cluster.status(index)).await;
            if let Ok(Some(status)) = status {
                if status.state == "leader" {
                    return Ok(index);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no Xene leader within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every running server answers and they agree on one leader.
pub async fn healthy(cluster: &TestCluster, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        for (index, server) in cluster.servers.iter().enumerate() {
            if !server.is_running() {
                continue;
            }
            let status = tokio::time::timeout(Duration::from_millis(500), cluster.status(index)).await;
            leaders.push(match status {
                Ok(Some(status)) => status.leader_id,
                _ => 0,
            });
        }
        if !leaders.is_empty() && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Xene cluster did not settle within {timeout:?} (leaders seen: {leaders:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new agent join token with unlimited uses.
pub async fn agent_token(cluster: &TestCluster) -> anyhow::Result<String> {
    let request =
        pb::CreateTokenRequest { kind: "agent".into(), ttl_seconds: 0, uses: 0, description: "xene-bench".into() };
    let reply = TokenServiceClient::new(cluster.channel(0))
        .create(cluster.request(request))
        .await
        .context("creating an agent join token")?;
    Ok(reply.into_inner().token)
}

/// `count` agent join tokens.
pub async fn agent_tokens(cluster: &TestCluster, count: usize) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    for _ in 0..count {
        tokens.push(agent_token(cluster).await?);
    }
    Ok(tokens)
}

/// Applies a workflow manifest.
pub async fn apply(cluster: &TestCluster, index: usize, manifest: String) -> anyhow::Result<()> {
    let mut request = cluster.request(pb::ApplyRequest { manifest });
    request.set_timeout(Duration::from_secs(60));
    ObjectServiceClient::new(cluster.channel(index)).apply(request).await.context("applying a workflow")?;
    Ok(())
}

/// How many pipeline objects are `Scheduled`.
pub async fn scheduled(cluster: &TestCluster) -> anyhow::Result<usize> {
    let request =
        pb::ListObjectsRequest { kind: "Pipeline".into(), label_selector: String::new(), workflow: String::new() };
    let mut request = cluster.request(request);
    request.set_timeout(Duration::from_secs(30));
    let reply = ObjectServiceClient::new(cluster.channel(0)).list(request).await.context("listing pipelines")?;
    let count = reply
        .into_inner()
        .objects
        .iter()
        .filter(|o| {
            serde_json::from_str::<serde_json::Value>(&o.json)
                .map(|v| v["status"]["phase"] == "Scheduled")
                .unwrap_or(false)
        })
        .count();
    Ok(count)
}

/// Waits until `count` pipelines are `Scheduled`.
pub async fn wait_scheduled(cluster: &TestCluster, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = scheduled(cluster).await.unwrap_or(0);
        if now >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{now} of {count} pipelines scheduled after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run `id` as stored.
pub async fn get_run(cluster: &TestCluster, index: usize, id: &str) -> anyhow::Result<RunObject> {
    let reply = RunServiceClient::new(cluster.channel(index))
        .get(cluster.request(pb::GetRunRequest { id: id.into() }))
        .await
        .with_context(|| format!("reading run {id}"))?;
    serde_json::from_str(&reply.into_inner().json).with_context(|| format!("decoding run {id}"))
}

/// Polls run `id` every `every` until `done` says so.
pub async fn wait_run(
    cluster: &TestCluster,
    id: &str,
    every: Duration,
    timeout: Duration,
    done: impl Fn(&RunObject) -> bool,
) -> anyhow::Result<RunObject> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match get_run(cluster, 0, id).await {
            Ok(run) if done(&run) => return Ok(run),
            Ok(run) => format!("phase {:?}", run.status.phase),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("run {id} not done within {timeout:?}: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Starts a run through the API (gRPC), returning its ID.
pub async fn create_run(cluster: &TestCluster, workflow: &str, pipeline: &str) -> anyhow::Result<String> {
    let request = pb::CreateRunRequest { workflow: workflow.into(), pipeline: pipeline.into(), ..Default::default() };
    let reply = RunServiceClient::new(cluster.channel(0))
        .create(cluster.request(request))
        .await
        .with_context(|| format!("starting a run of {workflow}/{pipeline}"))?;
    Ok(reply.into_inner().id)
}

/// The lines and bytes of text stored for run `id`.
pub async fn stored_logs(cluster: &TestCluster, id: &str) -> anyhow::Result<(u64, u64)> {
    use tokio_stream::StreamExt;
    let request =
        pb::LogsRequest { run: id.into(), task: String::new(), step: String::new(), follow: false, resume: vec![] };
    let mut request = cluster.request(request);
    request.set_timeout(Duration::from_secs(300));
    let mut stream = RunServiceClient::new(cluster.channel(0))
        .max_decoding_message_size(64 * 1024 * 1024)
        .logs(request)
        .await
        .context("reading logs")?
        .into_inner();
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(batch) = stream.next().await {
        for line in batch.context("reading logs")?.lines {
            lines += 1;
            bytes += line.text.len() as u64 + 1;
        }
    }
    Ok((lines, bytes))
}

/// A minimal HTTP/1.1 POST (one connection per request, as a forge's webhook sends it).
/// Returns the status code and the body.
pub async fn http_post(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.context("sending the request")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.context("reading the answer")?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Resident memory of a process, from `/proc`.
pub fn rss_bytes(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))?;
    Ok(kb * 1024)
}

/// CPU time (user + system) a process has used, from `/proc` (clock ticks of 10 ms).
pub fn cpu_time(pid: i32) -> anyhow::Result<Duration> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks =
        |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"));
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 10))
}
