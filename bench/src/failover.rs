//! W3: one client writing in a loop (100 ms per request, moving to the next member on any
//! error); the leader is SIGKILLed; the figure is the time from the kill to the
//! acknowledgement of the first write sent after it. Repeated, restarting the killed member
//! and waiting for the cluster to settle between rounds.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use xene_chaos_tests::harness::TestCluster;

use crate::etcd::EtcdCluster;
use crate::load::{key, KvTarget};
use crate::report::{dur, Row};
use crate::stats::Samples;
use crate::Bench;

const PER_REQUEST: Duration = Duration::from_millis(100);
const SETTLE: Duration = Duration::from_secs(30);

/// What the failover driver needs of a cluster.
trait Failover {
    async fn leader(&self) -> anyhow::Result<usize>;
    fn kill(&mut self, index: usize);
    fn restart(&mut self, index: usize) -> anyhow::Result<()>;
    async fn healthy(&self) -> anyhow::Result<()>;
}

impl Failover for TestCluster {
    async fn leader(&self) -> anyhow::Result<usize> {
        crate::xene::leader(self, SETTLE).await
    }
    fn kill(&mut self, index: usize) {
        self.servers[index].kill();
    }
    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.servers[index].restart();
        Ok(())
    }
    async fn healthy(&self) -> anyhow::Result<()> {
        crate::xene::healthy(self, SETTLE).await
    }
}

impl Failover for EtcdCluster {
    async fn leader(&self) -> anyhow::Result<usize> {
        EtcdCluster::leader(self, SETTLE).await
    }
    fn kill(&mut self, index: usize) {
        EtcdCluster::kill(self, index);
    }
    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        EtcdCluster::restart(self, index)
    }
    async fn healthy(&self) -> anyhow::Result<()> {
        EtcdCluster::healthy(self, SETTLE).await
    }
}

/// Writes forever, reporting (sent, acknowledged) of every acknowledged write.
async fn writer<T: KvTarget>(
    mut targets: Vec<T>,
    acks: mpsc::UnboundedSender<(Instant, Instant)>,
    stop: CancellationToken,
) {
    let mut server = 0;
    let mut n = 0u64;
    let value = vec![b'x'; 256];
    while !stop.is_cancelled() {
        n += 1;
        let sent = Instant::now();
        let target = &mut targets[server];
        match tokio::time::timeout(PER_REQUEST, target.put(key(n % 1000), value.clone())).await {
            Ok(Ok(())) => {
                if acks.send((sent, Instant::now())).is_err() {
                    return;
                }
            }
            _ => {
                server = (server + 1) % targets.len();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn measure<C: Failover, T: KvTarget>(cluster: &mut C, targets: Vec<T>, rounds: usize) -> anyhow::Result<Samples> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let writing = tokio::spawn(writer(targets, tx, stop.clone()));
    let result = async {
        let mut samples = Samples::default();
        for _ in 0..rounds {
            cluster.healthy().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let leader = cluster.leader().await?;
            while rx.try_recv().is_ok() {}
            let killed = Instant::now();
            cluster.kill(leader);
            let deadline = tokio::time::Instant::from_std(killed + SETTLE);
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((sent, acked))) if sent > killed => {
                        samples.push(acked - killed);
                        break;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => bail!("the writer stopped"),
                    Err(_) => bail!("no write acknowledged within {SETTLE:?} of the leader's kill"),
                }
            }
            cluster.restart(leader)?;
        }
        cluster.healthy().await?;
        Ok(samples)
    }
    .await;
    stop.cancel();
    let _ = writing.await;
    result
}

pub async fn run(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let rounds = bench.sizes.failovers;
    let mut xene = {
        let mut cluster = crate::xene::start_cluster(3, bench.sizes.timing()).await?;
        let targets = crate::xene::XeneKv::all(&cluster)?;
        measure(&mut cluster, targets, rounds).await?
    };
    let mut etcd = match bench.etcd_cluster().await? {
        Some(mut cluster) => {
            let targets = cluster.targets().await?;
            Some(measure(&mut cluster, targets, rounds).await?)
        }
        None => None,
    };
    let peer = etcd.as_mut().map(|s| (s.median(), s.max()));
    let (median, max) = (xene.median(), xene.max());
    Ok(vec![
        Row::new(format!("W3 failover, {rounds} leader kills: median"))
            .xene(dur(median))
            .peer(peer.map_or("–".into(), |(m, _)| dur(m)))
            .ratio(median.as_secs_f64(), peer.map_or(0.0, |(m, _)| m.as_secs_f64()))
            .target("≤ 0.6 s", Some(median <= Duration::from_millis(600))),
        Row::new("W3 failover: max")
            .xene(dur(max))
            .peer(peer.map_or("–".into(), |(_, m)| dur(m)))
            .ratio(max.as_secs_f64(), peer.map_or(0.0, |(_, m)| m.as_secs_f64()))
            .target("≤ 1 s", Some(max <= Duration::from_secs(1))),
    ])
}
