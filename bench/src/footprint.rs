//! W8: resident memory of one server of a three-server cluster, idle after start and idle
//! after a load of writes; of one idle agent; and the size of the stripped binaries. etcd is
//! measured the same way in the same run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::load::fill;
use crate::report::{mb, thousands, Row};
use crate::xene::rss_bytes;
use crate::Bench;

/// The size of `binary` once stripped (a copy is stripped; the original is left alone).
fn stripped_size(binary: &Path) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("binary");
    std::fs::copy(binary, &copy).with_context(|| format!("copying {}", binary.display()))?;
    let status = Command::new("strip").arg(&copy).status().context("running strip")?;
    if !status.success() {
        return Err(anyhow!("strip failed on {}", binary.display()));
    }
    Ok(std::fs::metadata(&copy)?.len())
}

pub async fn w8(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let idle = Duration::from_secs(sizes.idle);
    let keys = sizes.footprint_keys;
    // Xene: the leader's memory, fresh and after the writes; then an idle agent.
    let (xene_fresh, xene_loaded, agent_rss) = {
        let cluster = crate::xene::start_cluster(3, sizes.timing()).await?;
        tokio::time::sleep(idle).await;
        let leader = crate::xene::leader(&cluster, Duration::from_secs(30)).await?;
        let pid = cluster.servers[leader].pid().ok_or_else(|| anyhow!("no leader process"))?.as_raw();
        let fresh = rss_bytes(pid)?;
        let targets = crate::xene::XeneKv::all(&cluster)?;
        fill(&targets, keys, sizes.value_size, 256).await.context("writing keys to Xene")?;
        tokio::time::sleep(idle).await;
        let loaded = rss_bytes(pid)?;
        let token = crate::xene::agent_token(&cluster).await?;
        let agent = cluster.start_agent_with(&format!("bench-idle-{}", std::process::id()), "", &token, "process");
        tokio::time::sleep(idle.max(Duration::from_secs(2))).await;
        let agent_pid = agent.pid().ok_or_else(|| anyhow!("the agent did not start"))? as i32;
        let agent_rss = rss_bytes(agent_pid)?;
        (fresh, loaded, agent_rss)
    };
    let etcd = match bench.etcd_cluster().await? {
        Some(cluster) => {
            tokio::time::sleep(idle).await;
            let leader = cluster.leader(Duration::from_secs(30)).await?;
            let pid = cluster.pid(leader).ok_or_else(|| anyhow!("no etcd leader process"))?;
            let fresh = rss_bytes(pid)?;
            let targets = cluster.targets().await?;
            fill(&targets, keys, sizes.value_size, 256).await.context("writing keys to etcd")?;
            tokio::time::sleep(idle).await;
            Some((fresh, rss_bytes(pid)?))
        }
        None => None,
    };
    let bin = &bench.bin_dir;
    let server_size = stripped_size(&bin.join("xene-server"))?;
    let agent_size = stripped_size(&bin.join("xene-agent"))?;
    let etcd_size = bench.etcd.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let peer_fresh = etcd.map(|(f, _)| f);
    let peer_loaded = etcd.map(|(_, l)| l);
    Ok(vec![
        Row::new(format!("W8 server RSS, idle {} s after start", sizes.idle))
            .xene(mb(xene_fresh))
            .peer(peer_fresh.map_or("–".into(), mb))
            .ratio(xene_fresh as f64, peer_fresh.unwrap_or(0) as f64)
            .target("≤ 20 MB", Some(xene_fresh <= 20_000_000)),
        Row::new(format!("W8 server RSS, idle after {} puts of {} B", thousands(keys), sizes.value_size))
            .xene(mb(xene_loaded))
            .peer(peer_loaded.map_or("–".into(), mb))
            .ratio(xene_loaded as f64, peer_loaded.unwrap_or(0) as f64)
            .target("≤ 0.5× etcd", peer_loaded.map(|p| xene_loaded as f64 <= 0.5 * p as f64)),
        Row::new("W8 agent RSS, idle").xene(mb(agent_rss)).target("≤ 15 MB", Some(agent_rss <= 15_000_000)),
        Row::new("W8 stripped binaries: server / agent")
            .xene(format!("{} / {}", mb(server_size), mb(agent_size)))
            .peer(etcd_size.map_or("–".into(), |s| format!("etcd {} (as packaged)", mb(s)))),
    ])
}
