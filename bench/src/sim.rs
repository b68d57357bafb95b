//! Simulated agents for W6 and W7: each joins with a join token (a real `AgentService.Join`)
//! and holds a real `AgentService.Session` with the leader, heartbeating on its own timer
//! and counting the leases it is granted. Sessions share HTTP/2 connections, a hundred per
//! connection, so thousands of agents need few sockets.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::Rng;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use xene_proto as pb;
use xene_proto::agent_service_client::AgentServiceClient;
use xene_proto::{agent_message, server_message};

use crate::stats::Samples;

const AGENTS_PER_CONNECTION: usize = 100;

/// What the fleet saw.
#[derive(Default)]
pub struct FleetStats {
    pub open: AtomicUsize,
    pub failures: AtomicU64,
    pub recording: AtomicBool,
    /// Heartbeats sent while recording; with `heartbeats` (the acknowledged ones' round
    /// trips) it shows heartbeats a leader did not acknowledge (give or take those in flight
    /// when recording starts and stops).
    pub sent: AtomicU64,
    pub heartbeats: Mutex<Samples>,
    pub granted: Mutex<HashSet<String>>,
    pub last_error: Mutex<Option<String>>,
}

impl FleetStats {
    pub fn granted(&self) -> usize {
        self.granted.lock().map_or(0, |g| g.len())
    }

    /// Takes the heartbeat round trips recorded since the last call.
    pub fn take_heartbeats(&self) -> Samples {
        self.heartbeats.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default()
    }

    pub fn last_error(&self) -> String {
        self.last_error.lock().ok().and_then(|e| e.clone()).unwrap_or_default()
    }
}

/// Simulated agents holding sessions with one server (the leader).
pub struct Fleet {
    leader: String,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    channels: Vec<Channel>,
    joined: Vec<(String, String)>,
    connected: usize,
    pub stats: Arc<FleetStats>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Fleet {
    pub fn new(leader_grpc: &str) -> Fleet {
        Fleet {
            leader: leader_grpc.to_string(),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            channels: Vec::new(),
            joined: Vec::new(),
            connected: 0,
            stats: Arc::default(),
        }
    }

    fn channel(&mut self, agent: usize) -> anyhow::Result<Channel> {
        let index = agent / AGENTS_PER_CONNECTION;
        while self.channels.len() <= index {
            let channel = Endpoint::from_shared(format!("http://{}", self.leader))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect_lazy();
            self.channels.push(channel);
        }
        Ok(self.channels[index].clone())
    }

    /// Joins agents until `count` have joined: one lane per token, the joins of a lane one
    /// after another. A join rewrites its token's record under a compare on its revision, so
    /// concurrent joins with one token fail each other ("the join token kept changing").
    pub async fn join(&mut self, tokens: &[String], count: usize, capacity: u32) -> anyhow::Result<()> {
        if tokens.is_empty() {
            bail!("no join tokens");
        }
        let first = self.joined.len();
        let prefix = format!("sim-{}", std::process::id());
        let lanes = tokens.len();
        let mut work: Vec<Vec<(usize, Channel, pb::JoinAgentRequest)>> = vec![Vec::new(); lanes];
        for i in first..count {
            let request = pb::JoinAgentRequest {
                join_token: tokens[i % lanes].clone(),
                name: format!("{prefix}-{i}"),
                labels: [("sim".to_string(), "yes".to_string())].into_iter().collect(),
                capacity,
            };
            work[i % lanes].push((i, self.channel(i)?, request));
        }
        let mut lanes_running = JoinSet::new();
        for lane in work {
            lanes_running.spawn(async move {
                let mut joined = Vec::new();
                for (i, channel, request) in lane {
                    let mut last = None;
                    let mut done = false;
                    for attempt in 0..10u64 {
                        let mut call = tonic::Request::new(request.clone());
                        call.set_timeout(Duration::from_secs(30));
                        match AgentServiceClient::new(channel.clone()).join(call).await {
                            Ok(reply) => {
                                joined.push((i, request.name.clone(), reply.into_inner().credential));
                                done = true;
                                break;
                            }
                            Err(status) => last = Some(status.message().to_string()),
                        }
                        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                    }
                    if !done {
                        bail!("joining {}: {}", request.name, last.unwrap_or_default());
                    }
                }
                anyhow::Ok(joined)
            });
        }
        let mut all = Vec::new();
        while let Some(lane) = lanes_running.join_next().await {
            all.extend(lane.context("a join lane failed")??);
        }
        all.sort_by_key(|(i, _, _)| *i);
        self.joined.extend(all.into_iter().map(|(_, name, credential)| (name, credential)));
        Ok(())
    }

    /// Opens a session for every joined agent that has none yet.
    pub fn connect(&mut self, heartbeat: Duration, capacity: u32) -> anyhow::Result<()> {
        for i in self.connected..self.joined.len() {
            let channel = self.channel(i)?;
            let (_, credential) = self.joined[i].clone();
            let stats = self.stats.clone();
            let stop = self.stop.clone();
            self.tasks.spawn(session(channel, credential, capacity, heartbeat, stats, stop));
        }
        self.connected = self.joined.len();
        Ok(())
    }

    /// Waits until `count` sessions are open.
    pub async fn wait_open(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.stats.open.load(Ordering::Relaxed) < count {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} of {count} agent sessions open after {timeout:?}; last error: {}",
                    self.stats.open.load(Ordering::Relaxed),
                    self.stats.last_error()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Closes every session and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Decrements the open-session count when a session ends.
struct Open(Arc<FleetStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn session(
    channel: Channel,
    credential: String,
    capacity: u32,
    heartbeat: Duration,
    stats: Arc<FleetStats>,
    stop: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = once(&channel, &credential, capacity, heartbeat, &stats, &stop) => result,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = stats.last_error.lock() {
                    *last = Some(format!("{e:#}"));
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn once(
    channel: &Channel,
    credential: &str,
    capacity: u32,
    heartbeat: Duration,
    stats: &Arc<FleetStats>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::Hello {
        labels: [("sim".to_string(), "yes".to_string())].into_iter().collect(),
        capacity,
        held: vec![],
        version: "xene-bench".into(),
    };
    tx.send(pb::AgentMessage { body: Some(agent_message::Body::Hello(hello)) }).await.context("queueing the hello")?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().context("credential")?);
    let mut inbound =
        AgentServiceClient::new(channel.clone()).session(request).await.context("opening a session")?.into_inner();
    match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
        Ok(Ok(Some(pb::ServerMessage { body: Some(server_message::Body::Welcome(_)) }))) => {}
        other => bail!("no welcome: {other:?}"),
    }
    stats.open.fetch_add(1, Ordering::Relaxed);
    let _open = Open(stats.clone());
    let offset = Duration::from_micros(rand::rng().random_range(0..heartbeat.as_micros().max(1) as u64));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                // The server echoes `sent_ms` untouched; microseconds give finer round trips.
                let beat = pb::Heartbeat { sent_ms: now_us() };
                if stats.recording.load(Ordering::Relaxed) {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                tx.send(pb::AgentMessage { body: Some(agent_message::Body::Heartbeat(beat)) }).await.context("sending a heartbeat")?;
            }
            message = inbound.message() => match message.context("session")? {
                None => bail!("the server closed the session"),
                Some(pb::ServerMessage { body: Some(server_message::Body::Ack(ack)) }) => {
                    if stats.recording.load(Ordering::Relaxed) {
                        let rtt = Duration::from_micros(now_us().saturating_sub(ack.sent_ms));
                        if let Ok(mut samples) = stats.heartbeats.lock() {
                            samples.push(rtt);
                        }
                    }
                }
                Some(pb::ServerMessage { body: Some(server_message::Body::Grant(grant)) }) => {
                    if let Ok(mut granted) = stats.granted.lock() {
                        granted.insert(grant.pipeline);
                    }
                }
                Some(_) => {}
            },
        }
    }
}
