//! `xenectl run`, `runs`, `logs` and `cancel` (DESIGN §9, §12).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_stream::StreamExt;
use tonic::Code;
use xene_model::status::{RunPhase, StepStatus};
use xene_model::RunObject;
use xene_proto as pb;
use xene_proto::run_service_client::RunServiceClient;

use crate::client::Cluster;

fn decode(run: &pb::Run) -> Result<RunObject> {
    serde_json::from_str(&run.json).with_context(|| format!("the server sent an unreadable run {}", run.id))
}

async fn get(cluster: &Cluster, id: &str) -> Result<RunObject> {
    let message = pb::GetRunRequest { id: id.into() };
    let run = cluster
        .call(|ch| {
            let message = message.clone();
            async move { RunServiceClient::new(ch).get(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    decode(&run)
}

/// `xenectl run WORKFLOW/PIPELINE [--param k=v]... [--watch]`: prints the run ID; with
/// `--watch`, shows the task tree until the run ends and fails unless it succeeded.
pub async fn run(cluster: &Cluster, target: &str, params: &[String], watch: bool) -> Result<()> {
    let (workflow, pipeline) =
        target.split_once('/').ok_or_else(|| anyhow!("{target:?}: name the pipeline as WORKFLOW/PIPELINE"))?;
    let mut parameters = std::collections::HashMap::new();
    for param in params {
        let (key, value) = param.split_once('=').ok_or_else(|| anyhow!("--param {param:?}: write it as key=value"))?;
        parameters.insert(key.to_string(), value.to_string());
    }
    // One key for every try of this command: a try whose answer was lost (its server died
    // after the run was made) is answered, on the next server, with the same run.
    let idempotency_key = format!("xenectl-{:032x}", rand::random::<u128>());
    let message =
        pb::CreateRunRequest { workflow: workflow.into(), pipeline: pipeline.into(), parameters, idempotency_key };
    let created = cluster
        .call(|ch| {
            let message = message.clone();
            async move { RunServiceClient::new(ch).create(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    println!("{}", created.id);
    if !watch {
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let run = get(cluster, &created.id).await?;
        let view = tree(&run);
        if view != last {
            eprintln!("{view}");
            last = view;
        }
        if run.status.phase.is_terminal() {
            if run.status.phase == RunPhase::Success {
                return Ok(());
            }
            bail!(
                "run {} ended {}{}",
                created.id,
                run.status.phase.as_str(),
                run.status.message.map(|m| format!(": {m}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The run's phase and its tasks and steps, one per line.
fn tree(run: &RunObject) -> String {
    let mut out = format!("{} {}", run.metadata.name, run.status.phase.as_str());
    if let Some(reason) = run.status.reason {
        out.push_str(&format!(" ({})", reason.as_str()));
    }
    for (name, task) in &run.status.tasks {
        out.push_str(&format!("\n  {name}: {}", task.status.as_str()));
        if task.attempt > 0 {
            out.push_str(&format!(" (attempt {})", task.attempt + 1));
        }
        for step in &task.steps {
            let code = step.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default();
            let reason = if step.status == StepStatus::Error {
                step.reason.map(|r| format!(" {}", r.as_str())).unwrap_or_default()
            } else {
                String::new()
            };
            out.push_str(&format!("\n    {}: {}{code}{reason}", step.name, step.status.as_str()));
        }
        if !task.outputs.is_empty() {
            let shown: Vec<String> = task.outputs.iter().map(|(key, value)| format!("{key}={}", clip(value))).collect();
            out.push_str(&format!("\n    outputs: {}", shown.join(" ")));
        }
    }
    out
}

/// `value` (one line: outputs are lines) cut to 60 characters, for the tree.
fn clip(value: &str) -> String {
    match value.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

/// `xenectl runs [WORKFLOW[/PIPELINE]] [--phase P]`.
pub async fn list(cluster: &Cluster, target: Option<&str>, phase: &str) -> Result<()> {
    let (workflow, pipeline) = match target {
        None => (String::new(), String::new()),
        Some(t) => match t.split_once('/') {
            Some((w, p)) => (w.to_string(), p.to_string()),
            None => (t.to_string(), String::new()),
        },
    };
    let message = pb::ListRunsRequest { workflow, pipeline, phase: phase.into() };
    let reply = cluster
        .call(|ch| {
            let message = message.clone();
            async move { RunServiceClient::new(ch).list(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    println!("{:<48} {:<14} {:<10} {:<12} STARTED", "RUN", "PHASE", "TRIGGER", "AGENT");
    for run in &reply.runs {
        let run = decode(run)?;
        println!(
            "{:<48} {:<14} {:<10} {:<12} {}",
            run.metadata.name,
            run.status.phase.as_str(),
            run.spec.trigger,
            run.status.agent.as_deref().unwrap_or("-"),
            run.status.started.map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        );
    }
    Ok(())
}

/// `xenectl logs RUN [--task T] [--step S] [-f]`.
pub async fn logs(cluster: &Cluster, id: &str, task: &str, step: &str, follow: bool) -> Result<()> {
    // Where each (task, step, execution) is: a stream that breaks (its server stopped) goes on
    // through another server from there, without a line twice or a line lost.
    let mut resume: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut breaks = 0;
    loop {
        let cursors = resume
            .iter()
            .map(|((task, step, execution), next)| pb::LogCursor {
                task: task.clone(),
                step: step.clone(),
                execution: execution.clone(),
                next_seq: *next,
            })
            .collect();
        let message = pb::LogsRequest { run: id.into(), task: task.into(), step: step.into(), follow, resume: cursors };
        let mut stream = cluster
            .call(|ch| {
                let message = message.clone();
                async move { RunServiceClient::new(ch).logs(cluster.stream_request(message)).await }
            })
            .await?
            .into_inner();
        let broke = loop {
            match stream.next().await {
                None => return Ok(()),
                Some(Ok(batch)) => {
                    breaks = 0;
                    for line in batch.lines {
                        if task.is_empty() || step.is_empty() {
                            println!("[{}/{}] {}", line.task, line.step, line.text);
                        } else {
                            println!("{}", line.text);
                        }
                        let next = resume.entry((line.task, line.step, line.execution)).or_insert(0);
                        *next = (*next).max(line.seq + 1);
                    }
                }
                Some(Err(status)) => break status,
            }
        };
        let passing = matches!(broke.code(), Code::Unavailable | Code::Unknown | Code::Cancelled);
        if !passing || breaks >= MAX_STREAM_BREAKS {
            let again = if breaks >= MAX_STREAM_BREAKS {
                format!("it broke {MAX_STREAM_BREAKS} times in a row without a line; check the servers (xenectl cluster status)")
            } else {
                format!("run xenectl logs {id} again to read what is stored")
            };
            bail!("the log stream of run {id} ended ({:?}: {}); {again}", broke.code(), broke.message());
        }
        breaks += 1;
        eprintln!("xenectl: the log stream broke ({}); going on through another server", broke.message());
    }
}

/// Breaks of a log stream in a row (with no line between) after which `logs` gives up.
const MAX_STREAM_BREAKS: u32 = 5;

/// `xenectl cancel RUN`.
pub async fn cancel(cluster: &Cluster, id: &str) -> Result<()> {
    let message = pb::CancelRunRequest { id: id.into() };
    let run = cluster
        .call(|ch| {
            let message = message.clone();
            async move { RunServiceClient::new(ch).cancel(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    let run = decode(&run)?;
    println!(
        "run {} {}",
        run.metadata.name,
        if run.status.phase.is_terminal() { run.status.phase.as_str() } else { "cancelling" }
    );
    Ok(())
}
