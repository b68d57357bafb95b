//! etcd on loopback, the peer of W1–W3 and W8: a three-member cluster of Debian's
//! `etcd-server` in a temporary directory, driven through the `etcd-client` crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};
use xene_chaos_tests::harness::free_port;

use crate::load::{KvTarget, OpError};

/// Finds `etcd`, installing Debian's `etcd-server` when it is missing and `install` is set.
pub fn ensure_installed(install: bool) -> anyhow::Result<PathBuf> {
    if let Some(found) = which("etcd") {
        return Ok(found);
    }
    if !install {
        bail!("etcd is not installed (apt-get install -y etcd-server), and --no-install was given");
    }
    eprintln!("xene-bench: etcd is missing; installing Debian's etcd-server with apt-get");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "etcd-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get install etcd-server")?;
    if !status.success() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let status = Command::new("apt-get")
            .args(["install", "-y", "-qq", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get install etcd-server")?;
        if !status.success() {
            bail!("apt-get install etcd-server failed");
        }
    }
    which("etcd").ok_or_else(|| anyhow!("etcd-server installed, but no etcd on PATH"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// One member process and what is needed to restart it.
struct Member {
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let err = log.try_clone()?;
        let child = Command::new(binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster of etcd processes; they are killed and their data removed on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until they have a leader.
    pub async fn start(binary: PathBuf, size: usize) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new().prefix("xene-bench-etcd-").tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join(format!("m{i}")).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=xene-bench".into(),
                "--logger=zap".into(),
                "--log-level=error".into(),
            ];
            members.push(Member { client_url, args, log: dir.path().join(format!("m{i}.log")), child: None });
        }
        let mut cluster = EtcdCluster { binary, members, _dir: dir };
        for i in 0..size {
            let binary = cluster.binary.clone();
            cluster.members[i].spawn(&binary)?;
        }
        cluster.healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn pid(&self, index: usize) -> Option<i32> {
        self.members[index].child.as_ref().map(|c| c.id() as i32)
    }

    async fn connect(&self, index: usize) -> anyhow::Result<Client> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        Client::connect([self.members[index].client_url.as_str()], Some(options))
            .await
            .with_context(|| format!("connecting to etcd member {index}"))
    }

    /// One client per member, in member order.
    pub async fn targets(&self) -> anyhow::Result<Vec<EtcdKv>> {
        let mut targets = Vec::new();
        for i in 0..self.members.len() {
            targets.push(EtcdKv { kv: self.connect(i).await?.kv_client() });
        }
        Ok(targets)
    }

    /// (member ID, leader ID) as member `index` reports them.
    async fn status(&self, index: usize) -> anyhow::Result<(u64, u64)> {
        let mut client = self.connect(index).await?;
        let status = tokio::time::timeout(Duration::from_millis(500), client.status())
            .await
            .map_err(|_| anyhow!("status of etcd member {index} timed out"))??;
        let member = status.header().map_or(0, |h| h.member_id());
        Ok((member, status.leader()))
    }

    /// The index of the member that leads.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for index in 0..self.members.len() {
                if self.members[index].child.is_none() {
                    continue;
                }
                if let Ok((member, leader)) = self.status(index).await {
                    if member != 0 && member == leader {
                        return Ok(index);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every running member answers and they agree on one leader.
    pub async fn healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for index in 0..self.members.len() {
                if self.members[index].child.is_none() {
                    continue;
                }
                leaders.push(self.status(index).await.map_or(0, |(_, leader)| leader));
            }
            if !leaders.is_empty() && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the etcd cluster did not settle within {timeout:?} (leaders seen: {leaders:?})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self, index: usize) {
        self.members[index].kill();
    }

    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].kill();
        let binary = self.binary.clone();
        self.members[index].spawn(&binary)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// An etcd KV client of one member.
#[derive(Clone)]
pub struct EtcdKv {
    kv: KvClient,
}

impl KvTarget for EtcdKv {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.kv.put(key, value, None).await.map(|_| ()).map_err(|e| OpError(e.to_string()))
    }

    async fn get(&mut self, key: Vec<u8>, linearizable: bool) -> Result<(), OpError> {
        let options = if linearizable { None } else { Some(GetOptions::new().with_serializable()) };
        self.kv.get(key, options).await.map(|_| ()).map_err(|e| OpError(e.to_string()))
    }
}
