//! `xenectl apply`, `get`, `describe` and `delete`: workflows and pipeline status objects.
//! Manifests are validated here with the same code and messages as the server, before
//! anything is sent.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use xene_model::{parse_manifest, PipelineObject, TaskGraph, Trigger, Workflow};
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;

use crate::client::Cluster;

/// How `get` prints objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

/// The manifest files named by `-f`: a file, every `.yaml`/`.yml`/`.json` in a directory
/// (sorted), or `-` for standard input.
fn manifest_sources(path: &str) -> Result<Vec<(String, String)>> {
    if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let path = Path::new(path);
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{} holds no .yaml, .yml or .json files", path.display());
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            Ok((file.display().to_string(), text))
        })
        .collect()
}

/// Validates every manifest first (nothing is sent if any is invalid), then applies each.
pub async fn apply(cluster: &Cluster, path: &str) -> Result<()> {
    let sources = manifest_sources(path)?;
    let mut problems = Vec::new();
    for (name, text) in &sources {
        if let Err(errors) = parse_manifest(text) {
            for error in errors.errors() {
                problems.push(format!("{name}: {error}"));
            }
        }
    }
    if !problems.is_empty() {
        bail!("nothing was applied; fix these problems first:\n{}", problems.join("\n"));
    }
    for (_, text) in sources {
        let message = pb::ApplyRequest { manifest: text };
        let reply = cluster
            .call(|ch| {
                let message = message.clone();
                async move { ObjectServiceClient::new(ch).apply(cluster.request(message)).await }
            })
            .await?
            .into_inner();
        let object = reply.object.unwrap_or_default();
        println!("workflow/{} {}", object.name, reply.result);
    }
    Ok(())
}

fn normalize_kind(kind: &str) -> Result<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "workflow" | "workflows" | "wf" => Ok("Workflow"),
        "pipeline" | "pipelines" | "pl" => Ok("Pipeline"),
        _ => bail!("unknown kind {kind:?}; use workflows or pipelines"),
    }
}

async fn fetch(cluster: &Cluster, kind: &str, name: Option<&str>, selector: &str) -> Result<Vec<pb::Object>> {
    match name {
        Some(name) => {
            let message = pb::GetObjectRequest { kind: kind.into(), name: name.into() };
            let object = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { ObjectServiceClient::new(ch).get(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            Ok(vec![object])
        }
        None => {
            let message =
                pb::ListObjectsRequest { kind: kind.into(), label_selector: selector.into(), workflow: String::new() };
            let reply = cluster
                .call(|ch| {
                    let message = message.clone();
                    async move { ObjectServiceClient::new(ch).list(cluster.request(message)).await }
                })
                .await?
                .into_inner();
            Ok(reply.objects)
        }
    }
}

fn age(timestamp: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(timestamp) = timestamp else { return "-".into() };
    let seconds = (chrono::Utc::now() - timestamp).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `xenectl get KIND [NAME]`.
pub async fn get(cluster: &Cluster, kind: &str, name: Option<&str>, output: Output, selector: &str) -> Result<()> {
    let kind = normalize_kind(kind)?;
    let objects = fetch(cluster, kind, name, selector).await?;
    let values: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| {
            serde_json::from_str(&o.json).with_context(|| format!("the server sent unreadable JSON for {}", o.name))
        })
        .collect::<Result<_>>()?;
    match output {
        Output::Json => {
            let value = if name.is_some() {
                values.into_iter().next().unwrap_or_default()
            } else {
                serde_json::json!({ "items": values })
            };
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Yaml => {
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", yaml_serde::to_string(value)?);
            }
        }
        Output::Table | Output::Wide => {
            let wide = output == Output::Wide;
            if kind == "Workflow" {
                let mut rows = vec![vec!["NAME", "PIPELINES", "TRIGGERS", "AGE"]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()];
                if wide {
                    rows[0].extend(["RESOURCE-VERSION".into(), "LABELS".into()]);
                }
                for (object, value) in objects.iter().zip(values) {
                    let workflow: Workflow = serde_json::from_value(value).context("reading a workflow")?;
                    let mut row = vec![
                        workflow.metadata.name.clone(),
                        workflow.spec.pipelines.len().to_string(),
                        workflow.spec.triggers.len().to_string(),
                        age(workflow.metadata.creation_timestamp),
                    ];
                    if wide {
                        row.extend([object.resource_version.to_string(), labels_text(&workflow.metadata.labels)]);
                    }
                    rows.push(row);
                }
                print_table(&rows);
            } else {
                let mut rows =
                    vec![vec!["NAME", "STATUS", "AGENT", "REASON"].into_iter().map(String::from).collect::<Vec<_>>()];
                if wide {
                    rows[0].extend(["EPOCH".into(), "RESOURCE-VERSION".into()]);
                }
                for (object, value) in objects.iter().zip(values) {
                    let pipeline: PipelineObject = serde_json::from_value(value).context("reading a pipeline")?;
                    let mut row = vec![
                        pipeline.metadata.name.clone(),
                        pipeline.status.phase.as_str().into(),
                        pipeline.status.agent.clone().unwrap_or_else(|| "-".into()),
                        pipeline.status.reason.clone().unwrap_or_else(|| "-".into()),
                    ];
                    if wide {
                        row.extend([
                            pipeline.status.lease_epoch.map_or("-".into(), |e| e.to_string()),
                            object.resource_version.to_string(),
                        ]);
                    }
                    rows.push(row);
                }
                print_table(&rows);
            }
        }
    }
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> =
            row.iter().enumerate().map(|(c, cell)| format!("{cell:<width$}", width = widths[c])).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// `xenectl describe workflow NAME`: metadata, pipelines with status and triggers, and the
/// task DAG drawn as a tree.
pub async fn describe(cluster: &Cluster, kind: &str, name: &str) -> Result<()> {
    if normalize_kind(kind)? != "Workflow" {
        return describe_pipeline(cluster, name).await;
    }
    let object = fetch(cluster, "Workflow", Some(name), "").await?.remove(0);
    let workflow: Workflow = serde_json::from_str(&object.json).context("reading the workflow")?;
    let message =
        pb::ListObjectsRequest { kind: "Pipeline".into(), label_selector: String::new(), workflow: name.into() };
    let statuses = cluster
        .call(|ch| {
            let message = message.clone();
            async move { ObjectServiceClient::new(ch).list(cluster.request(message)).await }
        })
        .await?
        .into_inner()
        .objects;
    let statuses: Vec<PipelineObject> = statuses.iter().filter_map(|o| serde_json::from_str(&o.json).ok()).collect();

    println!("Name:              {}", workflow.metadata.name);
    if let Some(description) = &workflow.metadata.description {
        println!("Description:       {description}");
    }
    println!("Labels:            {}", labels_text(&workflow.metadata.labels));
    println!("UID:               {}", workflow.metadata.uid.as_deref().unwrap_or("-"));
    println!("Created:           {}", workflow.metadata.creation_timestamp.map_or("-".into(), |t| t.to_rfc3339()));
    println!("Resource version:  {}", object.resource_version);
    println!("Pipelines:");
    for (pipeline_name, pipeline) in &workflow.spec.pipelines {
        println!("  {pipeline_name}:");
        if let Some(description) = &pipeline.description {
            println!("    Description:  {description}");
        }
        match statuses.iter().find(|s| s.spec.pipeline == *pipeline_name) {
            Some(status) => {
                let mut line = status.status.phase.as_str().to_string();
                if let Some(agent) = &status.status.agent {
                    line.push_str(&format!(" on {agent}"));
                }
                if let Some(reason) = &status.status.reason {
                    line.push_str(&format!(" ({reason})"));
                }
                println!("    Status:       {line}");
            }
            None => println!("    Status:       -"),
        }
        let mut triggers = vec!["api".to_string()];
        for trigger_name in &pipeline.triggers {
            let text = match workflow.spec.triggers.get(trigger_name) {
                Some(Trigger::Cron(cron)) => {
                    format!(
                        "{trigger_name} (cron {:?}{})",
                        cron.cron,
                        cron.timezone.as_ref().map_or(String::new(), |tz| format!(" {tz}"))
                    )
                }
                Some(Trigger::Webhook(hook)) => format!(
                    "{trigger_name} (webhook {}{})",
                    format!("{:?}", hook.webhook.provider).to_lowercase(),
                    if hook.webhook.events.is_empty() {
                        String::new()
                    } else {
                        format!(", events {}", hook.webhook.events.join(","))
                    }
                ),
                None => format!("{trigger_name} (unknown)"),
            };
            triggers.push(text);
        }
        println!("    Triggers:     {}", triggers.join(", "));
        println!("    Tasks:");
        let graph = TaskGraph::from_pipeline(pipeline).map_err(|e| anyhow!("the stored pipeline is not a DAG: {e}"))?;
        for line in task_tree(&graph, pipeline) {
            println!("      {line}");
        }
    }
    Ok(())
}

/// `xenectl describe pipeline WORKFLOW/PIPELINE`: placement, and each trigger with its next
/// and last fire and, for webhooks, the URL to give the sender.
async fn describe_pipeline(cluster: &Cluster, name: &str) -> Result<()> {
    if !name.contains('/') {
        bail!("name the pipeline as WORKFLOW/PIPELINE, e.g. xenectl describe pipeline {name}/build");
    }
    let object = fetch(cluster, "Pipeline", Some(name), "").await?.remove(0);
    let pipeline: PipelineObject = serde_json::from_str(&object.json).context("reading the pipeline")?;
    let status = &pipeline.status;
    println!("Name:              {}", pipeline.metadata.name);
    println!("Workflow:          {}", pipeline.spec.workflow);
    println!("Status:            {}", status.phase.as_str());
    if let Some(reason) = &status.reason {
        println!("Reason:            {reason}");
    }
    println!("Agent:             {}", status.agent.as_deref().unwrap_or("-"));
    println!("Lease epoch:       {}", status.lease_epoch.map_or("-".into(), |e| e.to_string()));
    println!("Triggers:");
    println!(
        "  api              xenectl run {name}, or POST /api/v1/workflows/{}/pipelines/{}/runs",
        pipeline.spec.workflow, pipeline.spec.pipeline
    );
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or("-".to_string(), |t| t.to_rfc3339());
    for trigger in &status.triggers {
        println!("  {} ({}: {})", trigger.name, trigger.kind, trigger.detail);
        if trigger.kind == "cron" {
            println!("    Next fire:      {}", time(trigger.next_fire));
        }
        let last_run = trigger.last_run.as_deref().map_or(String::new(), |r| format!(" (run {r})"));
        println!("    Last fire:      {}{last_run}", time(trigger.last_fire));
        if let Some(url) = &trigger.webhook_url {
            println!("    Webhook URL:    {url}");
        }
    }
    Ok(())
}

/// Levels of the task tree drawn with their own indentation; deeper ones keep this one's and
/// say their level, so a long chain of tasks (up to 10,000) prints one short line per task.
const MAX_DRAWN_LEVELS: usize = 24;

/// The task DAG as a tree, a line per task: each root, then the tasks after it, indented; a
/// task after several others is drawn under the first and referred to ("see above") under
/// the rest. Drawn with a stack of its own, not by recursion, however deep the chain.
fn task_tree(graph: &TaskGraph, pipeline: &xene_model::Pipeline) -> Vec<String> {
    struct Frame<'a> {
        task: &'a str,
        indent: String,
        last: bool,
        level: usize,
    }
    let mut lines = Vec::new();
    let mut shown = std::collections::BTreeSet::new();
    let roots: Vec<&str> = graph.topological_order().into_iter().filter(|t| graph.dependencies(t).is_empty()).collect();
    let mut stack: Vec<Frame<'_>> =
        roots.into_iter().rev().map(|task| Frame { task, indent: String::new(), last: true, level: 0 }).collect();
    while let Some(Frame { task, indent, last, level }) = stack.pop() {
        let branch = match (level, last) {
            (0, _) => "",
            (_, true) => "└─ ",
            (_, false) => "├─ ",
        };
        if !shown.insert(task) {
            lines.push(format!("{indent}{branch}{task} (see above)"));
            continue;
        }
        let steps = pipeline.tasks.get(task).map_or(0, |t| t.steps.len());
        let deps = graph.dependencies(task);
        let after = if deps.len() > 1 { format!(", after {}", deps.join(" and ")) } else { String::new() };
        let deep = if level >= MAX_DRAWN_LEVELS { format!(", level {}", level + 1) } else { String::new() };
        lines.push(format!("{indent}{branch}{task} ({steps} step{}{after}{deep})", if steps == 1 { "" } else { "s" }));
        let child_indent = if level == 0 || level >= MAX_DRAWN_LEVELS {
            indent
        } else {
            format!("{indent}{}", if last { "   " } else { "│  " })
        };
        let children = graph.dependents(task);
        let count = children.len();
        for (i, child) in children.into_iter().enumerate().rev() {
            stack.push(Frame { task: child, indent: child_indent.clone(), last: i + 1 == count, level: level + 1 });
        }
    }
    lines
}

/// `xenectl delete workflow NAME`.
pub async fn delete(cluster: &Cluster, kind: &str, name: &str) -> Result<()> {
    let kind = normalize_kind(kind)?;
    let message = pb::DeleteObjectRequest { kind: kind.into(), name: name.into(), resource_version: 0 };
    let reply = cluster
        .call(|ch| {
            let message = message.clone();
            async move { ObjectServiceClient::new(ch).delete(cluster.request(message)).await }
        })
        .await?
        .into_inner();
    for object in reply.deleted {
        println!("{}/{} deleted", object.kind.to_lowercase(), object.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline_of(manifest: &str) -> xene_model::Pipeline {
        let workflow = parse_manifest(manifest).expect("a valid manifest");
        workflow.spec.pipelines.into_values().next().expect("one pipeline")
    }

    #[test]
    fn the_tree_shows_fan_out_and_fan_in_once_each() {
        let pipeline = pipeline_of(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  pipelines:\n    p:\n      tasks:\n\
             \x20       a: {steps: [{name: s, run: 'true'}]}\n\
             \x20       b: {dependencies: [a], steps: [{name: s, run: 'true'}, {name: t, run: 'true'}]}\n\
             \x20       c: {dependencies: [a], steps: [{name: s, run: 'true'}]}\n\
             \x20       d: {dependencies: [b, c], steps: [{name: s, run: 'true'}]}\n",
        );
        let graph = TaskGraph::from_pipeline(&pipeline).expect("a DAG");
        assert_eq!(
            task_tree(&graph, &pipeline),
            ["a (1 step)", "├─ b (2 steps)", "│  └─ d (1 step, after b and c)", "└─ c (1 step)", "   └─ d (see above)",]
        );
    }

    #[test]
    fn a_chain_of_ten_thousand_tasks_prints_short_lines() {
        let mut manifest = String::from(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  pipelines:\n    p:\n      tasks:\n",
        );
        manifest.push_str("        t0: {steps: [{name: s, run: 'true'}]}\n");
        for i in 1..10_000 {
            manifest.push_str(&format!(
                "        t{i}: {{dependencies: [t{}], steps: [{{name: s, run: 'true'}}]}}\n",
                i - 1
            ));
        }
        let pipeline = pipeline_of(&manifest);
        let graph = TaskGraph::from_pipeline(&pipeline).expect("a DAG");
        let lines = task_tree(&graph, &pipeline);
        assert_eq!(lines.len(), 10_000);
        assert_eq!(lines[1], "└─ t1 (1 step)");
        assert_eq!(lines[9_999], format!("{}└─ t9999 (1 step, level 10000)", "   ".repeat(MAX_DRAWN_LEVELS - 1)));
        assert!(lines.iter().all(|line| line.chars().count() < 120), "no line grows with the chain");
    }
}
