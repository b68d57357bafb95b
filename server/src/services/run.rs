//! `RunService` (DESIGN §8.1, §9, §11.1): start runs by hand (the default API trigger), read
//! them, cancel them, and stream their logs.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use xene_proto as pb;
use xene_proto::run_service_server::RunService;

use crate::auth::{Role, TokenCache};
use crate::error::ServerError;
use crate::node::ClusterNode;
use crate::runs::{self, StoredRun};

/// The `RunService` implementation.
pub struct RunApi {
    node: Arc<ClusterNode>,
    tokens: TokenCache,
    stop: CancellationToken,
}

impl RunApi {
    pub fn new(node: Arc<ClusterNode>, tokens: TokenCache, stop: CancellationToken) -> Self {
        RunApi { node, tokens, stop }
    }
}

pub fn to_pb(stored: &StoredRun) -> pb::Run {
    pb::Run {
        id: stored.run.metadata.name.clone(),
        resource_version: stored.revision,
        json: serde_json::to_string(&stored.run).unwrap_or_default(),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RunService for RunApi {
    #[tracing::instrument(skip_all, fields(node = self.node.id))]
    async fn create(&self, request: Request<pb::CreateRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        let create = request.into_inner();
        let parameters: BTreeMap<String, String> = create.parameters.into_iter().collect();
        let key = Some(create.idempotency_key.as_str()).filter(|key| !key.is_empty());
        let stored = runs::create(&self.node, &create.workflow, &create.pipeline, "api", parameters, key).await?;
        Ok(Response::new(to_pb(&stored)))
    }

    async fn get(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        Ok(Response::new(to_pb(&runs::get(&self.node, &request.get_ref().id).await?)))
    }

    async fn list(&self, request: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let list = request.get_ref();
        let runs = runs::list(&self.node, &list.workflow, &list.pipeline, &list.phase).await?;
        Ok(Response::new(pb::ListRunsResponse { runs: runs.iter().map(to_pb).collect() }))
    }

    #[tracing::instrument(skip_all, fields(node = self.node.id))]
    async fn cancel(&self, request: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Admin).await?;
        Ok(Response::new(to_pb(&runs::cancel(&self.node, &request.get_ref().id).await?)))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        self.tokens.authorize(&self.node, request.metadata(), Role::Viewer).await?;
        let logs = request.into_inner();
        // Fails early, with NotFound, for an unknown run, task or step.
        let run = runs::get(&self.node, &logs.run).await?;
        let pipeline = match runs::workflow(&self.node, &run.run.spec.workflow).await {
            Ok((workflow, _)) => workflow.spec.pipelines.get(&run.run.spec.pipeline).cloned(),
            Err(_) => None,
        };
        check_names(&run.run, pipeline.as_ref(), &logs.task, &logs.step)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = self.node.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // The next sequence number to send, per (task, step, execution): lines are sent once,
            // in order. A follower sees a retried task's new attempt after the old one.
            // A reader resuming a broken stream says where it left off.
            let mut next: BTreeMap<(String, String, String), u64> = logs
                .resume
                .iter()
                .map(|c| ((c.task.clone(), c.step.clone(), c.execution.clone()), c.next_seq))
                .collect();
            let prefix = crate::keys::logs_of(&logs.run).into_bytes();
            'list: loop {
                // Read the run's state before its logs: once it is terminal, the agent has
                // shipped every line, so the logs read after are complete. The state also names
                // each task's execution, the only one whose lines count.
                let (finished, executions) = match runs::get(&node, &logs.run).await {
                    Ok(run) => (run.run.status.phase.is_terminal(), executions_of(&run.run)),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                // Page by page, so that a run with megabytes of logs is never held whole. The
                // watch below starts after the first page's revision: a chunk stored while the
                // pages are read comes either in a later page or from the watch (or both; the
                // cursors send its lines once).
                let mut from = Vec::new();
                let mut revision = None;
                loop {
                    let page = match runs::log_chunk_page(&node, &logs.run, from).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    revision.get_or_insert(page.revision);
                    if !send_lines(&tx, &logs, &executions, &mut next, page.chunks).await {
                        return;
                    }
                    match page.next {
                        Some(key) => from = key,
                        None => break,
                    }
                }
                let revision = revision.unwrap_or_default();
                if !logs.follow || finished {
                    return;
                }
                // Then follow new chunks through a watch, and the run's end (or a task's new
                // execution) by polling its state.
                let Ok(mut watcher) = node.reader.watch(revision + 1, prefix.clone()) else { continue 'list };
                loop {
                    let events = tokio::select! {
                        _ = stop.cancelled() => {
                            // Said, so that a follower does not take the end for the run's.
                            let _ = tx
                                .send(Err(Status::unavailable(
                                    "the server is shutting down; follow the logs again through another server",
                                )))
                                .await;
                            return;
                        }
                        _ = tx.closed() => return,
                        events = watcher.next() => events,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            match runs::get(&node, &logs.run).await {
                                Ok(run) if run.run.status.phase.is_terminal() => continue 'list,
                                Ok(run) if executions_of(&run.run) != executions => continue 'list,
                                Ok(_) => continue,
                                Err(_) => continue 'list,
                            }
                        }
                    };
                    let Ok(events) = events else { continue 'list };
                    let chunks: Vec<xene_model::LogChunk> = events
                        .into_iter()
                        .filter(|e| e.kind == xene_raft_store::EventKind::Put)
                        .filter_map(|e| serde_json::from_slice::<xene_model::LogChunk>(&e.kv.value).ok())
                        .collect();
                    // A chunk of an execution other than the one read: a task started anew (or
                    // a dead execution's chunk landed late). Reading again from the store sorts
                    // it out; the cursors keep what was sent from being sent twice.
                    if chunks.iter().any(|c| executions.get(&c.task).map_or("", String::as_str) != c.execution) {
                        continue 'list;
                    }
                    if !send_lines(&tx, &logs, &executions, &mut next, chunks).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Refuses a `task` or `step` filter that names nothing the run has (by its status, or by its
/// pipeline's spec before it starts): it would match nothing, and a follower would wait
/// silently for the run's end.
fn check_names(
    run: &xene_model::RunObject,
    pipeline: Option<&xene_model::Pipeline>,
    task: &str,
    step: &str,
) -> Result<(), Status> {
    use std::collections::BTreeSet;
    let mut known: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, status) in &run.status.tasks {
        known.entry(name).or_default().extend(status.steps.iter().map(|s| s.name.as_str()));
    }
    for (name, spec) in pipeline.map(|p| &p.tasks).into_iter().flatten() {
        known.entry(name).or_default().extend(spec.steps.iter().map(|s| s.name.as_str()));
    }
    let id = &run.metadata.name;
    if !task.is_empty() && !known.contains_key(task) {
        let names: Vec<&str> = known.keys().copied().collect();
        return Err(Status::not_found(format!("run {id} has no task {task:?}; its tasks: {}", names.join(", "))));
    }
    if !step.is_empty() {
        let steps: BTreeSet<&str> = known
            .iter()
            .filter(|(name, _)| task.is_empty() || **name == task)
            .flat_map(|(_, steps)| steps.iter().copied())
            .collect();
        if !steps.contains(step) {
            let of = if task.is_empty() { String::new() } else { format!(" in task {task:?}") };
            let names: Vec<&str> = steps.into_iter().collect();
            return Err(Status::not_found(format!(
                "run {id} has no step {step:?}{of}; its steps: {}",
                names.join(", ")
            )));
        }
    }
    Ok(())
}

/// Each task's current execution, as the run's state names it (empty: none named).
fn executions_of(run: &xene_model::RunObject) -> BTreeMap<String, String> {
    run.status.tasks.iter().map(|(task, status)| (task.clone(), status.execution.clone())).collect()
}

/// Sends the lines of `chunks` that come next for their step, in messages of at most 1,000
/// lines (well under gRPC's message size limit), skipping chunks of any execution other than
/// the task's current one. Returns false when the client is gone.
async fn send_lines(
    tx: &tokio::sync::mpsc::Sender<Result<pb::LogsResponse, Status>>,
    logs: &pb::LogsRequest,
    executions: &BTreeMap<String, String>,
    next: &mut BTreeMap<(String, String, String), u64>,
    chunks: Vec<xene_model::LogChunk>,
) -> bool {
    let mut lines = Vec::new();
    for chunk in chunks {
        if (!logs.task.is_empty() && chunk.task != logs.task) || (!logs.step.is_empty() && chunk.step != logs.step) {
            continue;
        }
        if executions.get(&chunk.task).map_or("", String::as_str) != chunk.execution {
            continue;
        }
        let cursor = next.entry((chunk.task.clone(), chunk.step.clone(), chunk.execution.clone())).or_insert(0);
        for line in chunk.lines {
            if line.seq == *cursor {
                *cursor += 1;
                lines.push(pb::LogEntry {
                    task: chunk.task.clone(),
                    step: chunk.step.clone(),
                    seq: line.seq,
                    ts_ms: line.ts_ms,
                    stream: line.stream,
                    text: line.text,
                    execution: chunk.execution.clone(),
                });
            }
        }
    }
    let mut lines = lines.into_iter().peekable();
    while lines.peek().is_some() {
        let batch: Vec<pb::LogEntry> = lines.by_ref().take(1_000).collect();
        if tx.send(Ok(pb::LogsResponse { lines: batch })).await.is_err() {
            return false;
        }
    }
    true
}

/// For the REST handler: the error as an HTTP status and message.
pub fn http_error(e: &ServerError) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let code = match e {
        ServerError::InvalidArgument(_) | ServerError::Rejected(_) => StatusCode::BAD_REQUEST,
        ServerError::NotFound(_) => StatusCode::NOT_FOUND,
        ServerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ServerError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        ServerError::Conflict(_) | ServerError::AlreadyExists(_) => StatusCode::CONFLICT,
        ServerError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.to_string())
}
