//! W6 (agent sessions: how many heartbeating agents one leader carries) and W7 (placement
//! of thousands of pipelines on simulated agents).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;

use crate::report::{dur, mb, rate, thousands, Row};
use crate::sim::Fleet;
use crate::xene::{cpu_time, rss_bytes};
use crate::Bench;

/// Join tokens, and so joins in flight at once.
const JOIN_LANES: usize = 16;

/// One step of W6.
struct Step {
    agents: usize,
    cores: f64,
    p99: Duration,
    rss: u64,
    failures: u64,
    /// Heartbeats sent in the window, and acknowledgements received in it.
    sent: u64,
    acked: u64,
}

impl Step {
    fn passed(&self) -> bool {
        self.cores < 1.0 && self.p99 < Duration::from_millis(100) && self.failures == 0
    }
}

pub async fn w6(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let cluster = crate::xene::start_cluster(3, sizes.timing()).await?;
    let leader = crate::xene::leader(&cluster, Duration::from_secs(30)).await?;
    let pid = cluster.servers[leader].pid().ok_or_else(|| anyhow!("the leader has no process"))?.as_raw();
    let tokens = crate::xene::agent_tokens(&cluster, JOIN_LANES).await?;
    let heartbeat = Duration::from_millis(sizes.agent_heartbeat_ms);
    let mut fleet = Fleet::new(&cluster.servers[leader].grpc);
    let mut steps = Vec::new();
    let result = async {
        for &agents in &sizes.agents {
            fleet.join(&tokens, agents, 16).await?;
            fleet.connect(heartbeat, 16)?;
            fleet.wait_open(agents, Duration::from_secs(120)).await?;
            tokio::time::sleep(heartbeat * 2).await;
            let failures = fleet.stats.failures.load(Ordering::Relaxed);
            fleet.stats.take_heartbeats();
            fleet.stats.sent.store(0, Ordering::Relaxed);
            fleet.stats.recording.store(true, Ordering::Relaxed);
            let (cpu0, began) = (cpu_time(pid)?, Instant::now());
            tokio::time::sleep(Duration::from_secs(sizes.window)).await;
            let (cpu1, elapsed) = (cpu_time(pid)?, began.elapsed());
            fleet.stats.recording.store(false, Ordering::Relaxed);
            let mut samples = fleet.stats.take_heartbeats();
            if samples.is_empty() {
                bail!("no heartbeat was acknowledged with {agents} agents");
            }
            let step = Step {
                agents,
                cores: (cpu1.saturating_sub(cpu0)).as_secs_f64() / elapsed.as_secs_f64(),
                p99: samples.percentile(99.0),
                rss: rss_bytes(pid)?,
                failures: fleet.stats.failures.load(Ordering::Relaxed) - failures,
                sent: fleet.stats.sent.load(Ordering::Relaxed),
                acked: samples.len() as u64,
            };
            eprintln!(
                "xene-bench: W6 {} agents: leader {:.2} cores, heartbeat p99 {}, RSS {}, {} session failures, {} of {} heartbeats acknowledged",
                step.agents,
                step.cores,
                dur(step.p99),
                mb(step.rss),
                step.failures,
                step.acked,
                step.sent
            );
            let passed = step.passed();
            steps.push(step);
            if !passed {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    fleet.shutdown().await;
    drop(cluster);
    result?;
    let mut rows = Vec::new();
    let best = steps.iter().filter(|s| s.passed()).max_by_key(|s| s.agents);
    let per_second = |n: usize| n as f64 * 1000.0 / sizes.agent_heartbeat_ms as f64;
    rows.push(
        Row::new(format!(
            "W6 agent sessions (heartbeat every {}): largest N with leader < 1 core and p99 < 100 ms",
            dur(heartbeat)
        ))
        .xene(best.map_or("none passed".into(), |s| {
            format!(
                "{} ({} heartbeats/s, RSS {})",
                thousands(s.agents as u64),
                rate(per_second(s.agents), ""),
                mb(s.rss)
            )
        }))
        .peer("Nomad (documented): 50 heartbeats/s per leader")
        .ratio(best.map_or(0.0, |s| per_second(s.agents)), 50.0)
        .target("N ≥ 5,000", Some(best.is_some_and(|s| s.agents >= 5_000))),
    );
    for step in &steps {
        rows.push(Row::new(format!("W6 {} agents", thousands(step.agents as u64))).xene(format!(
            "leader {:.2} cores, heartbeat p99 {}, RSS {}, {} of {} heartbeats acknowledged{}",
            step.cores,
            dur(step.p99),
            mb(step.rss),
            thousands(step.acked),
            thousands(step.sent),
            if step.failures > 0 { format!(", {} session failures", step.failures) } else { String::new() }
        )));
    }
    Ok(rows)
}

fn placement_manifest(workflow: usize, pipelines: usize) -> String {
    let mut manifest = format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: bench-place-{workflow}}}\nspec:\n  pipelines:\n"
    );
    for p in 0..pipelines {
        manifest.push_str(&format!(
            "    p{p}:\n      agentSelector: {{sim: \"yes\"}}\n      tasks:\n        t:\n          steps:\n            - {{name: s, run: 'true'}}\n"
        ));
    }
    manifest
}

pub async fn w7(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let (pipelines, agents) = (sizes.pipelines, sizes.placement_agents.max(1));
    let capacity = (pipelines.div_ceil(agents) * 2).max(16) as u32;
    let cluster = crate::xene::start_cluster(3, sizes.timing()).await?;
    let leader = crate::xene::leader(&cluster, Duration::from_secs(30)).await?;
    let tokens = crate::xene::agent_tokens(&cluster, JOIN_LANES).await?;
    let mut fleet = Fleet::new(&cluster.servers[leader].grpc);
    let result = async {
        fleet.join(&tokens, agents, capacity).await?;
        fleet.connect(Duration::from_secs(2), capacity)?;
        fleet.wait_open(agents, Duration::from_secs(120)).await?;
        let per_workflow = 100;
        let manifests: Vec<String> = (0..pipelines.div_ceil(per_workflow))
            .map(|w| placement_manifest(w, per_workflow.min(pipelines - w * per_workflow)))
            .collect();
        let began = Instant::now();
        let mut applies = futures::stream::iter(manifests.into_iter().map(|m| crate::xene::apply(&cluster, leader, m)))
            .buffer_unordered(4);
        while let Some(applied) = applies.next().await {
            applied?;
        }
        let applied = began.elapsed();
        let deadline = Instant::now() + Duration::from_secs(600);
        while fleet.stats.granted() < pipelines {
            if Instant::now() > deadline {
                bail!("{} of {pipelines} pipelines granted after 600 s", fleet.stats.granted());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let placed = began.elapsed();
        crate::xene::wait_scheduled(&cluster, pipelines, Duration::from_secs(60))
            .await
            .context("pipelines granted but not Scheduled")?;
        anyhow::Ok((applied, placed))
    }
    .await;
    fleet.shutdown().await;
    drop(cluster);
    let (applied, placed) = result?;
    let per_second = pipelines as f64 / placed.as_secs_f64();
    Ok(vec![
        Row::new(format!(
            "W7 placement: {} pipelines, {} agents: placements/s",
            thousands(pipelines as u64),
            thousands(agents as u64)
        ))
        .xene(format!("{} (all granted {} after the first apply)", rate(per_second, "/s"), dur(placed)))
        .peer("Nomad C1M (published, 5 servers): 3,750/s")
        .ratio(per_second, 3750.0)
        .target("≥ 5,000/s", Some(per_second >= 5000.0)),
        Row::new("W7 applying the workflows (100 pipelines each)").xene(dur(applied)),
    ])
}
