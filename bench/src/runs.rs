//! Workloads that run pipelines on a real agent: W4 (trigger → first step started), W5 (a
//! 1,000-task DAG) and W9 (one step printing a million lines).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use hmac::{Hmac, KeyInit, Mac};
use xene_chaos_tests::agent_proc::AgentProc;
use xene_chaos_tests::harness::TestCluster;
use xene_model::status::RunPhase;
use xene_model::RunObject;
use xene_proto as pb;
use xene_proto::secret_service_client::SecretServiceClient;

use crate::report::{dur, mb, Row};
use crate::stats::Samples;
use crate::Bench;

/// How W4 starts a run: a signed generic webhook delivery (`POST /api/v1/webhooks/{workflow}/
/// {trigger}`), as PERF.md says; `Trigger::Api` measures the API trigger instead.
const TRIGGER: Trigger = Trigger::Webhook;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
enum Trigger {
    /// `POST /api/v1/workflows/{w}/pipelines/{p}/runs` with the admin token.
    Api,
    /// `POST /api/v1/webhooks/{w}/{trigger}`, generic provider, HMAC-SHA256 signature.
    Webhook,
}

const WEBHOOK_SECRET: &str = "xene-bench-webhook-secret";

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A cluster with one agent using `executor`, and `manifest` applied and placed.
async fn cluster_with_agent(
    bench: &Bench,
    executor: &str,
    manifest: String,
    pipelines: usize,
) -> anyhow::Result<(TestCluster, AgentProc)> {
    let cluster = crate::xene::start_cluster(3, bench.sizes.timing()).await?;
    let token = crate::xene::agent_token(&cluster).await?;
    let name = format!("bench-{}", std::process::id());
    let agent = cluster.start_agent_with(&name, "bench=yes", &token, executor);
    if TRIGGER == Trigger::Webhook {
        let request = pb::SetSecretRequest {
            name: "bench-hook".into(),
            data: [("secret".to_string(), WEBHOOK_SECRET.to_string())].into_iter().collect(),
        };
        SecretServiceClient::new(cluster.channel(0))
            .set(cluster.request(request))
            .await
            .context("storing the webhook secret")?;
    }
    crate::xene::apply(&cluster, 0, manifest).await?;
    crate::xene::wait_scheduled(&cluster, pipelines, Duration::from_secs(60))
        .await
        .with_context(|| format!("placing the pipeline on the agent; agent log:\n{}", agent.log_tail(10)))?;
    Ok((cluster, agent))
}

/// Starts a run of `workflow`/`pipeline` and waits up to `limit` for it to succeed: its ID,
/// its final state, and how long it took.
async fn run_to_success(
    cluster: &TestCluster,
    agent: &AgentProc,
    workflow: &str,
    pipeline: &str,
    limit: Duration,
) -> anyhow::Result<(String, RunObject, Duration)> {
    let began = Instant::now();
    let id = crate::xene::create_run(cluster, workflow, pipeline).await?;
    let run = crate::xene::wait_run(cluster, &id, Duration::from_millis(50), limit, |r| r.status.phase.is_terminal())
        .await
        .with_context(|| format!("agent log:\n{}", agent.log_tail(10)))?;
    let took = began.elapsed();
    if run.status.phase != RunPhase::Success {
        bail!("the {pipeline} run ended {:?}: {}", run.status.phase, run.status.message.unwrap_or_default());
    }
    Ok((id, run, took))
}

fn trigger_manifest(stamps: &Path, container: bool) -> String {
    let (triggers, pipeline_triggers) = match TRIGGER {
        Trigger::Api => (String::new(), String::new()),
        Trigger::Webhook => (
            "  triggers:\n    hook: {type: webhook, webhook: {provider: generic, secretRef: bench-hook, events: [push]}}\n"
                .to_string(),
            "      triggers: [hook]\n".to_string(),
        ),
    };
    let executor = if container { "      executor: {type: container, image: \"xene/busybox:latest\"}\n" } else { "" };
    let step = if container { "true".to_string() } else { format!("date +%s%N >> {}", stamps.display()) };
    format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: bench-trigger}}\nspec:\n{triggers}  pipelines:\n    start:\n{pipeline_triggers}{executor}      tasks:\n        stamp:\n          steps:\n            - {{name: stamp, run: '{step}'}}\n"
    )
}

/// Starts one run of bench-trigger/start the way [`TRIGGER`] says; returns the run ID.
async fn fire(cluster: &TestCluster, n: usize) -> anyhow::Result<String> {
    let addr = &cluster.servers[0].http;
    let (status, body) = match TRIGGER {
        Trigger::Api => {
            let auth = format!("Bearer {}", cluster.token);
            crate::xene::http_post(
                addr,
                "/api/v1/workflows/bench-trigger/pipelines/start/runs",
                &[("Authorization", auth)],
                b"",
            )
            .await?
        }
        Trigger::Webhook => {
            let body = format!("{{\"ref\":\"refs/heads/main\",\"n\":{n}}}");
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes())
                .map_err(|e| anyhow!("HMAC key: {e}"))?;
            mac.update(body.as_bytes());
            let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            let headers = [
                ("X-Xene-Signature-256", signature),
                ("X-Xene-Event", "push".to_string()),
                ("X-Xene-Delivery", format!("bench-{}-{n}-{}", std::process::id(), now_ns())),
            ];
            crate::xene::http_post(addr, "/api/v1/webhooks/bench-trigger/hook", &headers, body.as_bytes()).await?
        }
    };
    if status != 202 {
        bail!("trigger answered {status}: {body}");
    }
    let value: serde_json::Value = serde_json::from_str(&body).context("trigger answer")?;
    value["runs"][0].as_str().map(String::from).ok_or_else(|| anyhow!("no run ID in {body}"))
}

/// Waits until `path` has more than `lines` lines and returns line number `lines` (from 0).
async fn wait_line(path: &Path, lines: usize, timeout: Duration) -> anyhow::Result<u128> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(line) = text.lines().nth(lines) {
                return line.trim().parse().with_context(|| format!("timestamp {line:?}"));
            }
        }
        if Instant::now() > deadline {
            bail!("no step started within {timeout:?} of the trigger");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// W4 with the process executor: the step writes its start time; the peer is `fork+exec` of
/// the same command.
pub async fn w4(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let count = bench.sizes.triggers;
    let dir = tempfile::Builder::new().prefix("xene-bench-w4-").tempdir()?;
    let stamps = dir.path().join("stamps");
    let (cluster, agent) = cluster_with_agent(bench, "process", trigger_manifest(&stamps, false), 1).await?;
    let mut xene = Samples::default();
    for n in 0..count {
        let sent = now_ns();
        fire(&cluster, n).await?;
        let started = wait_line(&stamps, n, Duration::from_secs(30))
            .await
            .with_context(|| format!("agent log:\n{}", agent.log_tail(10)))?;
        xene.push(Duration::from_nanos(started.saturating_sub(sent) as u64));
    }
    drop(agent);
    drop(cluster);
    let mut peer = Samples::default();
    let alone = dir.path().join("alone");
    for _ in 0..count {
        let sent = now_ns();
        let status = Command::new("/bin/sh")
            .args(["-c", &format!("date +%s%N > {}", alone.display())])
            .stdin(Stdio::null())
            .status()
            .context("running sh")?;
        if !status.success() {
            bail!("sh -c date failed");
        }
        let started: u128 = std::fs::read_to_string(&alone)?.trim().parse().context("timestamp")?;
        peer.push(Duration::from_nanos(started.saturating_sub(sent) as u64));
    }
    let via = match TRIGGER {
        Trigger::Api => "API trigger",
        Trigger::Webhook => "webhook",
    };
    let (p50, p99) = (xene.median(), xene.percentile(99.0));
    let mut rows = vec![
        Row::new(format!("W4 {via} → first step, process executor, {count} runs: p50"))
            .xene(dur(p50))
            .peer(format!("fork+exec {}", dur(peer.median())))
            .ratio(p50.as_secs_f64(), peer.median().as_secs_f64())
            .target("≤ 20 ms", Some(p50 <= Duration::from_millis(20))),
        Row::new("W4 process executor: p99")
            .xene(dur(p99))
            .peer(format!("fork+exec {}", dur(peer.percentile(99.0))))
            .ratio(p99.as_secs_f64(), peer.percentile(99.0).as_secs_f64()),
    ];
    if bench.sizes.container {
        rows.extend(w4_container(bench).await.unwrap_or_else(|e| vec![Row::failed("W4 container executor", &e)]));
    }
    Ok(rows)
}

/// W4 with the container executor: the step's recorded start time; the peer is
/// `docker run --rm IMAGE true`.
async fn w4_container(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let image = "xene/busybox:latest";
    let inspect =
        Command::new("docker").args(["image", "inspect", image]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !inspect.is_ok_and(|s| s.success()) {
        bail!("Docker or the image {image} is missing (scripts/busybox-image.sh builds it)");
    }
    let count = bench.sizes.triggers.min(50);
    let (cluster, agent) =
        cluster_with_agent(bench, "docker", trigger_manifest(Path::new("/dev/null"), true), 1).await?;
    let mut xene = Samples::default();
    for n in 0..count {
        let sent = SystemTime::now();
        let id = fire(&cluster, n).await?;
        let run = crate::xene::wait_run(&cluster, &id, Duration::from_millis(5), Duration::from_secs(60), |r| {
            r.status.tasks.get("stamp").and_then(|t| t.steps.first()).is_some_and(|s| s.started.is_some())
        })
        .await
        .with_context(|| format!("agent log:\n{}", agent.log_tail(10)))?;
        let started = run.status.tasks["stamp"].steps[0].started.map(SystemTime::from).unwrap_or(sent);
        xene.push(started.duration_since(sent).unwrap_or_default());
    }
    drop(agent);
    drop(cluster);
    let mut peer = Samples::default();
    for _ in 0..count.min(20) {
        let began = Instant::now();
        Command::new("docker").args(["run", "--rm", image, "true"]).stdout(Stdio::null()).status()?;
        peer.push(began.elapsed());
    }
    let p50 = xene.median();
    let floor = peer.median() + Duration::from_millis(50);
    Ok(vec![Row::new(format!("W4 container executor, {count} runs: p50"))
        .xene(dur(p50))
        .peer(format!("docker run {}", dur(peer.median())))
        .ratio(p50.as_secs_f64(), peer.median().as_secs_f64())
        .target("≤ docker run + 50 ms", Some(p50 <= floor))])
}

fn task_name(layer: usize, i: usize) -> String {
    format!("t{layer}-{i}")
}

/// W5: a DAG of `layers` × `width` tasks, each depending on two tasks of the layer before;
/// the peer is `make -jN` on the same graph.
pub async fn w5(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let (layers, width) = (bench.sizes.dag_layers, bench.sizes.dag_width);
    let mut manifest = String::from(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: bench-dag}\nspec:\n  pipelines:\n    dag:\n      tasks:\n",
    );
    let mut makefile = String::new();
    let last: Vec<String> = (0..width).map(|i| task_name(layers - 1, i)).collect();
    makefile.push_str(&format!(".PHONY: all {}\nall: {}\n", last.join(" "), last.join(" ")));
    for layer in 0..layers {
        for i in 0..width {
            let name = task_name(layer, i);
            let deps: Vec<String> = if layer == 0 {
                vec![]
            } else {
                let mut d = vec![task_name(layer - 1, i), task_name(layer - 1, (i + 1) % width)];
                d.dedup();
                d
            };
            manifest.push_str(&format!(
                "        {name}:\n          dependencies: [{}]\n          steps:\n            - {{name: s, run: 'true'}}\n",
                deps.join(", ")
            ));
            makefile.push_str(&format!(".PHONY: {name}\n{name}: {}\n\t@true\n", deps.join(" ")));
        }
    }
    let (cluster, agent) = cluster_with_agent(bench, "process", manifest, 1).await?;
    let (_, _, wall) = run_to_success(&cluster, &agent, "bench-dag", "dag", Duration::from_secs(600)).await?;
    drop(agent);
    drop(cluster);
    let dir = tempfile::Builder::new().prefix("xene-bench-w5-").tempdir()?;
    std::fs::write(dir.path().join("Makefile"), makefile)?;
    let jobs = bench.machine.cores.to_string();
    let began = Instant::now();
    let status = Command::new("make")
        .args(["-s", "-j", &jobs, "all"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()
        .context("running make")?;
    let make = began.elapsed();
    if !status.success() {
        bail!("make failed");
    }
    let tasks = layers * width;
    let met = wall <= Duration::from_secs(2) && wall.as_secs_f64() <= 3.0 * make.as_secs_f64();
    Ok(vec![Row::new(format!("W5 {tasks}-task DAG: trigger → Success"))
        .xene(dur(wall))
        .peer(format!("make -j{jobs} {}", dur(make)))
        .ratio(wall.as_secs_f64(), make.as_secs_f64())
        .target("≤ 2 s and ≤ 3× make", Some(met))])
}

/// W9: one step printing `lines` lines of 100 bytes, with log shipping, against the same
/// command writing to /dev/null: the median of `log_runs` runs of the step (one after the
/// other, each waited for until its logs are stored) and of twice as many of the command alone
/// (which varies by tens of percent from one run to the next on a small machine).
pub async fn w9(bench: &Bench) -> anyhow::Result<Vec<Row>> {
    let lines = bench.sizes.lines;
    let runs = bench.sizes.log_runs.max(1);
    let command = format!("yes \"$(printf %099d 0)\" | head -n {lines}");
    let manifest = format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: bench-logs}}\nspec:\n  pipelines:\n    logs:\n      tasks:\n        print:\n          steps:\n            - {{name: print, run: '{command}'}}\n"
    );
    let (cluster, agent) = cluster_with_agent(bench, "process", manifest, 1).await?;
    let mut steps = Samples::default();
    let mut stored = Vec::new();
    for _ in 0..runs {
        let (id, run, to_success) =
            run_to_success(&cluster, &agent, "bench-logs", "logs", Duration::from_secs(1800)).await?;
        let step =
            run.status.tasks.get("print").and_then(|t| t.steps.first()).ok_or_else(|| anyhow!("no step status"))?;
        let step_wall = match (step.started, step.finished) {
            (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
            _ => bail!("the step has no start or finish time"),
        };
        let (stored_lines, stored_bytes) = crate::xene::stored_logs(&cluster, &id).await?;
        steps.push(step_wall);
        stored.push((to_success, stored_lines, stored_bytes));
    }
    // What storing the logs (and reading them back, from server 0) left in the servers' memory.
    let mut server_rss = Vec::new();
    for server in &cluster.servers {
        let pid = server.pid().ok_or_else(|| anyhow!("a server of the cluster is not running"))?.as_raw();
        server_rss.push(mb(crate::xene::rss_bytes(pid)?));
    }
    drop(agent);
    drop(cluster);
    let mut alone_runs = Samples::default();
    for _ in 0..2 * runs {
        let began = Instant::now();
        let status =
            Command::new("/bin/sh").args(["-c", &format!("{command} > /dev/null")]).status().context("running sh")?;
        alone_runs.push(began.elapsed());
        if !status.success() {
            bail!("the command alone failed");
        }
    }
    let (step_wall, alone) = (steps.median(), alone_runs.median());
    stored.sort_by_key(|(took, _, _)| *took);
    let (to_success, stored_lines, stored_bytes) = stored[stored.len() / 2];
    let overhead = step_wall.as_secs_f64() / alone.as_secs_f64().max(1e-9) - 1.0;
    let stored_rate = stored_bytes as f64 / to_success.as_secs_f64().max(1e-9);
    let of = |n: usize| if n > 1 { format!(", median of {n}") } else { String::new() };
    Ok(vec![
        Row::new(format!("W9 step printing {lines} lines of 100 B: step wall time{}", of(runs)))
            .xene(format!("{} ({:+.0} %)", dur(step_wall), overhead * 100.0))
            .peer(format!("command alone {}{}", dur(alone), of(2 * runs)))
            .ratio(step_wall.as_secs_f64(), alone.as_secs_f64())
            .target("overhead ≤ 25 %", Some(overhead <= 0.25)),
        Row::new("W9 logs stored")
            .xene(format!(
                "{} lines, {} in {} ({}/s)",
                stored_lines,
                mb(stored_bytes),
                dur(to_success),
                mb(stored_rate as u64)
            ))
            .peer("–"),
        Row::new(format!("W9 servers' RSS after storing {runs} runs' logs; server 0 read them back"))
            .xene(server_rss.join(" / "))
            .peer("–"),
    ])
}
