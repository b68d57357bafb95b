//! Runs pipelines (DESIGN §9): resolves a run's task DAG with petgraph, starts every ready
//! task while the agent has a free task slot (`--max-tasks`, over all its runs), runs each task's steps in order, applies the failure
//! rules (a failed step fails its task; its remaining steps and every task depending on it
//! stay `NotExecuted`), retries tasks by their policy, and reports statuses and log lines to
//! the leader, fenced by the lease epoch the run was started under.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use xene_model::outputs::{
    input_variable, outputs_bytes, parse_outputs, OutputError, MAX_OUTPUT_BYTES, MAX_RUN_OUTPUT_BYTES, OUTPUT_VARIABLE,
};
use xene_model::status::{ErrorReason, RunPhase, StepStatus};
use xene_model::{
    EnvValue, Executor, Pipeline, RunObject, StepRunStatus, TaskGraph, TaskRunStatus, When, Workflow, PULL_SECRET_KEYS,
};
use xene_proto as pb;
use xene_proto::agent_message;

use crate::chunk::ChunkJson;
use crate::docker::{DockerExecutor, RegistryCredentials, RunResources, StepCommand, TaskContainer, TaskSpec};
use crate::leases::Leases;
use crate::lines::{now_ms, StepOutput};
use crate::outbox::{Outbox, Outgoing};
use crate::outputs::{read_outputs_file, OutputFile, OutputFiles, OUTPUTS_DIR};
use crate::process::{run_step, StepEnd, StepRecords};
use crate::tail::Tail;

/// The agent's runs.
pub struct Runner {
    /// This agent's name, which steps see as `XENE_AGENT`.
    agent: String,
    work_dir: PathBuf,
    leases: Arc<Leases>,
    outbox: Outbox,
    /// The agent's task slots, shared by all its runs (DESIGN §9.2: every ready task at once, up
    /// to a per-agent limit): a task holds one while it runs.
    slots: Arc<Semaphore>,
    /// The container executor, when the agent runs containers and Docker answered.
    docker: Option<DockerExecutor>,
    /// What the agent was asked to use: `docker` or `process`.
    executor: String,
    log_cap: LogCap,
    step_records: Arc<StepRecords>,
    /// The process executor's outputs files, reused across tasks and runs.
    outputs: Arc<OutputFiles>,
    tasks: TaskTracker,
    running: Mutex<HashMap<String, (String, u64, CancellationToken)>>,
    /// Starts under a newer epoch of runs still stopping under an older one, by run.
    deferred: Mutex<HashMap<String, Deferred>>,
    /// Final statuses of the latest finished runs, to report again if the leader asks once more.
    finished: Mutex<Finished>,
    /// Runs being stopped because this agent no longer holds their pipeline: they end as
    /// `AgentLost`, not as cancelled by a user.
    lost: Mutex<BTreeSet<String>>,
    /// Bumped to have every running run's status sent again ([`Runner::report_all`]).
    resend: tokio::sync::watch::Sender<u64>,
}

/// The final statuses of the last [`Finished::KEPT`] runs this agent finished, by run.
#[derive(Default)]
struct Finished {
    by_run: HashMap<String, (u64, RunObject)>,
    order: std::collections::VecDeque<String>,
}

impl Finished {
    /// Enough for a leader to ask again about any run of the last few minutes; bounded, so an
    /// agent that runs a cron job every minute for a year does not hold half a million runs.
    const KEPT: usize = 1024;

    fn get(&self, run: &str) -> Option<&(u64, RunObject)> {
        self.by_run.get(run)
    }

    fn remove(&mut self, run: &str) {
        if self.by_run.remove(run).is_some() {
            self.order.retain(|r| r != run);
        }
    }

    fn insert(&mut self, run: String, epoch: u64, done: RunObject) {
        if self.by_run.insert(run.clone(), (epoch, done)).is_none() {
            self.order.push_back(run);
        }
        while self.order.len() > Self::KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.by_run.remove(&oldest);
            }
        }
    }
}

/// A start that waits for the run's older execution to stop.
struct Deferred {
    run_json: String,
    epoch: u64,
    secrets: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// How a [`Runner`] runs tasks.
pub struct RunnerOptions {
    /// Tasks at once, over all of the agent's runs (`--max-tasks`).
    pub max_tasks: usize,
    /// `docker` or `process`.
    pub executor: String,
    pub log_cap: LogCap,
    /// Where the process executor notes the steps it runs.
    pub step_records: Arc<StepRecords>,
}

impl Runner {
    pub fn new(
        agent: String,
        work_dir: PathBuf,
        leases: Arc<Leases>,
        outbox: Outbox,
        docker: Option<DockerExecutor>,
        options: RunnerOptions,
    ) -> Arc<Self> {
        let outputs = OutputFiles::new(work_dir.join(OUTPUTS_DIR));
        Arc::new(Runner {
            agent,
            work_dir,
            leases,
            outbox,
            slots: Arc::new(Semaphore::new(options.max_tasks.max(1))),
            docker,
            executor: options.executor,
            log_cap: options.log_cap,
            step_records: options.step_records,
            outputs,
            tasks: TaskTracker::new(),
            running: Mutex::default(),
            deferred: Mutex::default(),
            finished: Mutex::default(),
            lost: Mutex::default(),
            resend: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Sends every running run's status again (on a new session: the leader marked the runs
    /// `Unknown` while this agent had none).
    pub fn report_all(&self) {
        self.resend.send_modify(|generation| *generation += 1);
    }

    /// The leader hands over a run to start under lease `epoch`.
    /// `payload` is the body of the webhook delivery that started it, empty for other triggers.
    pub fn start(self: &Arc<Self>, run_json: &str, epoch: u64, secrets: BTreeMap<String, String>, payload: Vec<u8>) {
        let run: RunObject = match serde_json::from_str(run_json) {
            Ok(run) => run,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable run from the leader");
                return;
            }
        };
        let id = run.metadata.name.clone();
        if let Some((done_epoch, done)) = self.finished.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned() {
            if done_epoch >= epoch {
                report(&self.outbox, done_epoch, &done);
                return;
            }
            self.finished.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
        let pipeline_name = format!("{}/{}", run.spec.workflow, run.spec.pipeline);
        let Some(workflow_json) = self.leases.workflow_of(&pipeline_name, epoch) else {
            tracing::warn!(run = %id, epoch, "not holding the run's pipeline at this epoch; ignoring");
            return;
        };
        let cancel = CancellationToken::new();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, old_epoch, old_cancel)) = running.get(&id) {
                if *old_epoch < epoch {
                    old_cancel.cancel();
                    self.deferred
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), Deferred { run_json: run_json.to_string(), epoch, secrets, payload });
                }
                return;
            }
            running.insert(id.clone(), (pipeline_name.clone(), epoch, cancel.clone()));
        }
        let this = Arc::clone(self);
        self.tasks.spawn(async move {
            let event = (!payload.is_empty()).then(|| Arc::new(payload));
            let done = this.execute(run, epoch, &workflow_json, Arc::new(secrets), event, cancel).await;
            let id = done.metadata.name.clone();
            this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            // A stop that came after the run decided how it ended must not colour its next start.
            this.lost.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            this.finished.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), epoch, done);
            let deferred = this.deferred.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(next) = deferred {
                this.start(&next.run_json, next.epoch, next.secrets, next.payload);
            }
        });
    }

    /// Stops a run (cancelled by a user, or fenced off because the lease moved).
    pub fn stop(&self, run: &str) {
        if let Some((_, _, cancel)) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(run) {
            cancel.cancel();
        }
    }

    /// Stops a run only if it runs under `epoch` or older (a fenced write of that epoch).
    pub fn stop_at(&self, run: &str, epoch: u64) {
        if let Some((_, at, cancel)) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(run) {
            if *at <= epoch {
                cancel.cancel();
            }
        }
    }

    /// Stops every run of a pipeline whose lease this agent no longer holds.
    pub fn stop_pipeline(&self, pipeline: &str) {
        for (run, (of, _, cancel)) in self.running.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if of == pipeline {
                tracing::info!(run = %run, pipeline, "stopping a run whose lease is gone");
                self.lost.lock().unwrap_or_else(|p| p.into_inner()).insert(run.clone());
                cancel.cancel();
            }
        }
    }

    /// The IDs of the runs in flight.
    pub fn running_ids(&self) -> BTreeSet<String> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// The container executor, if any.
    pub fn docker(&self) -> Option<&DockerExecutor> {
        self.docker.as_ref()
    }

    /// Stops every run; the agent is shutting down.
    pub async fn shutdown(&self) {
        for (_, _, cancel) in self.running.lock().unwrap_or_else(|p| p.into_inner()).values() {
            cancel.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn execute(
        &self,
        mut run: RunObject,
        epoch: u64,
        workflow_json: &str,
        secrets: Arc<BTreeMap<String, String>>,
        event: Option<Arc<Vec<u8>>>,
        cancel: CancellationToken,
    ) -> RunObject {
        let id = run.metadata.name.clone();
        run.status.started = Some(Utc::now());
        run.status.phase = RunPhase::StartingUp;
        run.status.agent = Some(self.agent.clone());
        run.status.lease_epoch = Some(epoch);
        run.status.agent_lost_at = None;
        let pipeline = match serde_json::from_str::<Workflow>(workflow_json)
            .ok()
            .and_then(|w| w.spec.pipelines.get(&run.spec.pipeline).cloned())
        {
            Some(pipeline) => pipeline,
            None => {
                return self.fail(
                    run,
                    epoch,
                    ErrorReason::InfrastructureError,
                    "the pipeline is not in the workflow the lease came with",
                )
            }
        };
        for (name, task) in &pipeline.tasks {
            let steps = task.steps.iter().map(|s| not_executed(&s.name)).collect();
            run.status.tasks.insert(
                name.clone(),
                TaskRunStatus {
                    status: StepStatus::NotExecuted,
                    reason: None,
                    attempt: 0,
                    execution: String::new(),
                    steps,
                    outputs: BTreeMap::new(),
                },
            );
        }
        let start_applied = report_and_hear_applied(&self.outbox, epoch, &run);
        // Until the run's status reporter starts (once the run is `Running`), a new session's
        // call for every status is answered with this one.
        let starting = ResendWhileStarting::start(run.clone(), self.outbox.clone(), epoch, self.resend.subscribe());
        let workspace = self.work_dir.join(&id);
        if let Err(e) = std::fs::create_dir_all(&workspace) {
            return self.fail(
                run,
                epoch,
                ErrorReason::InfrastructureError,
                &format!("creating the workspace {}: {e}", workspace.display()),
            );
        }
        // The webhook payload beside the workspace, not in it: a step may clone into an empty
        // workspace.
        let event_file = self.work_dir.join(format!("{id}.event.json"));
        if let Some(event) = &event {
            if let Err(e) = std::fs::write(&event_file, event.as_slice()) {
                return self.fail(
                    run,
                    epoch,
                    ErrorReason::InfrastructureError,
                    &format!("writing the webhook payload to {}: {e}", event_file.display()),
                );
            }
        }
        let graph = match TaskGraph::from_pipeline(&pipeline) {
            Ok(graph) => graph,
            Err(e) => return self.fail(run, epoch, ErrorReason::InfrastructureError, &e.to_string()),
        };
        // Containers when a task asks for one and this agent runs them (DESIGN §9.3, §9.4).
        let wants_containers = self.executor == "docker"
            && pipeline.tasks.values().any(|t| matches!(pipeline.executor_for(t), Some(Executor::Container(_)) | None));
        let containers = if wants_containers {
            let Some(docker) = self.docker.clone() else {
                return self.fail(
                    run,
                    epoch,
                    ErrorReason::InfrastructureError,
                    "the pipeline runs in containers but Docker is not reachable from this agent",
                );
            };
            match docker.prepare_run(&id, &run.spec.workflow, &run.spec.pipeline).await {
                Ok(resources) => {
                    tracing::info!(run = %id, volume = resources.volume(), "run workspace volume ready");
                    Some((docker, Arc::new(resources)))
                }
                Err(e) => return self.fail(run, epoch, ErrorReason::InfrastructureError, &e.to_string()),
            }
        } else {
            None
        };
        // No step starts before the leader has applied this start (the wait overlaps the
        // preparation above). A leader cut off from the others before then may be followed by
        // one that never heard of it and hands the run to another agent; once it is applied,
        // every later leader knows the run is here, and starting it elsewhere is a counted
        // retry (DESIGN §7.4, §7.5). A cancel or this agent's fence ends the wait, and the
        // run ends before its first task. A waiter dropped unanswered means the agent is
        // stopping, which cancels every run.
        let applied = tokio::select! {
            heard = start_applied => heard.is_ok(),
            _ = cancel.cancelled() => false,
        };
        if !applied {
            cancel.cancelled().await;
        }
        // Stopped and waited for: a StartingUp it was sending must not follow Running.
        starting.stop().await;
        if !cancel.is_cancelled() {
            run.status.phase = RunPhase::Running;
            report(&self.outbox, epoch, &run);
        }

        let run_timeout = pipeline.timeout.map(|d| d.as_std());
        let deadline = run_timeout.map(|t| tokio::time::Instant::now() + t);
        let timed_out = CancellationToken::new();
        let step_cancel = CancellationToken::new();
        let shared = Arc::new(Mutex::new(run));
        let reporter = StatusReporter::start(Arc::clone(&shared), self.outbox.clone(), epoch, self.resend.subscribe());
        // One copy of the pipeline for every task (a 1,000-task pipeline is not copied 1,000 times).
        let pipeline = Arc::new(pipeline);
        let facts = Arc::new(RunFacts::of(&shared.lock().unwrap_or_else(|p| p.into_inner())));
        // The tasks whose dependencies have all ended, kept as tasks end.
        let mut walk = graph.walk();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        let mut workers = tokio::task::JoinSet::new();
        // Which task each worker runs, kept outside it: a worker that panicked returns nothing.
        let mut worker_tasks: HashMap<tokio::task::Id, String> = HashMap::new();
        // What went wrong in the agent itself, for the run's message.
        let mut broken: Vec<String> = Vec::new();
        // A slot this run waited for and got, for its next task.
        let mut spare: Option<OwnedSemaphorePermit> = None;
        loop {
            // Start every ready task whose condition holds, while the agent has free slots.
            let mut waiting = false;
            while let Some(task) = walk.next_ready() {
                let dependency_failed = graph.dependencies(task).iter().any(|d| failed.contains(*d));
                let when = pipeline.tasks.get(task).and_then(|t| t.when.as_ref());
                match decide(when, dependency_failed) {
                    Decision::Run => {}
                    Decision::SkipAfterFailure => {
                        // Stays NotExecuted, and so do the tasks after it that need success.
                        walk.ended(task);
                        failed.insert(task.to_string());
                        continue;
                    }
                    Decision::SkipUnmet => {
                        // Stays NotExecuted; nothing went wrong, so the tasks after it run.
                        walk.ended(task);
                        continue;
                    }
                }
                if cancel.is_cancelled() || timed_out.is_cancelled() {
                    break;
                }
                let Some(slot) = spare.take().or_else(|| Arc::clone(&self.slots).try_acquire_owned().ok()) else {
                    waiting = true;
                    break;
                };
                walk.take();
                let task = task.to_string();
                let context = TaskContext {
                    run: Arc::clone(&shared),
                    facts: Arc::clone(&facts),
                    pipeline: Arc::clone(&pipeline),
                    task: task.clone(),
                    workspace: workspace.clone(),
                    outputs: Arc::clone(&self.outputs),
                    outbox: self.outbox.clone(),
                    changed: Arc::clone(&reporter.changed),
                    epoch,
                    cancel: step_cancel.clone(),
                    secrets: Arc::clone(&secrets),
                    containers: containers.clone(),
                    event: event.clone().map(|payload| (event_file.clone(), payload)),
                    log_cap: self.log_cap,
                    step_records: Arc::clone(&self.step_records),
                };
                let worker = workers.spawn(async move {
                    let _slot = slot;
                    context.run_task().await
                });
                worker_tasks.insert(worker.id(), task);
            }
            if workers.is_empty() && !waiting {
                break;
            }
            let sleep = async {
                match deadline {
                    Some(at) if !timed_out.is_cancelled() => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(joined) = workers.join_next_with_id() => {
                    if let Some((task, ended)) = task_ended(&shared, &mut worker_tasks, joined) {
                        walk.ended(&task);
                        match ended {
                            TaskEnd::Succeeded => {}
                            TaskEnd::Failed => {
                                failed.insert(task);
                            }
                            TaskEnd::Broken(message) => {
                                reporter.changed.notify_one();
                                broken.push(message);
                                failed.insert(task);
                            }
                        }
                    }
                }
                slot = Arc::clone(&self.slots).acquire_owned(), if waiting => spare = slot.ok(),
                _ = cancel.cancelled(), if !step_cancel.is_cancelled() => step_cancel.cancel(),
                _ = sleep => {
                    timed_out.cancel();
                    step_cancel.cancel();
                }
            }
        }
        // A slot got for a task that never started goes back before the clean-up.
        drop(spare);
        // Stopped first, so that no status of its can follow the ones below.
        reporter.stop().await;
        let mut run = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        run.status.phase = RunPhase::ShuttingDown;
        report(&self.outbox, epoch, &run);
        let _ = tokio::fs::remove_dir_all(&workspace).await;
        if event.is_some() {
            let _ = tokio::fs::remove_file(&event_file).await;
        }
        if let Some((docker, resources)) = containers {
            match Arc::try_unwrap(resources) {
                Ok(resources) => {
                    if let Err(e) = docker.finish_run(resources).await {
                        tracing::warn!(run = %id, error = %e, "removing the run's volume failed; the orphan collector will retry");
                    }
                }
                Err(_) => {
                    tracing::warn!(run = %id, "the run's resources are still in use; the orphan collector will remove them")
                }
            }
        }
        run.status.finished = Some(Utc::now());
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if lost {
            // Not a user's cancel: if the lease is still at this epoch when this arrives, the
            // run did not finish, and says why.
            run.status.phase = RunPhase::Error;
            run.status.reason = Some(ErrorReason::AgentLost);
            run.status.message = Some("the agent lost the pipeline's lease while the run was in flight".into());
        } else if cancel.is_cancelled() {
            run.status.phase = RunPhase::Cancelled;
            run.status.reason = Some(ErrorReason::Cancelled);
        } else if timed_out.is_cancelled() {
            run.status.phase = RunPhase::Error;
            run.status.reason = Some(ErrorReason::TimedOut);
            run.status.message = Some(format!("the run exceeded its timeout of {:?}", run_timeout.unwrap_or_default()));
        } else if failed.is_empty() {
            run.status.phase = RunPhase::Success;
        } else {
            run.status.phase = RunPhase::Error;
            run.status.reason = run.status.tasks.values().find_map(|t| t.reason).or(Some(ErrorReason::Failed));
            let names: Vec<&String> = failed
                .iter()
                .filter(|t| run.status.tasks.get(*t).is_some_and(|s| s.status == StepStatus::Error))
                .collect();
            let mut message =
                format!("failed tasks: {}", names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "));
            for why in &broken {
                message.push_str("; ");
                message.push_str(why);
            }
            run.status.message = Some(message);
        }
        tracing::info!(run = %id, phase = run.status.phase.as_str(), "run finished");
        report(&self.outbox, epoch, &run);
        run
    }

    fn fail(&self, mut run: RunObject, epoch: u64, reason: ErrorReason, message: &str) -> RunObject {
        run.status.phase = RunPhase::Error;
        run.status.reason = Some(reason);
        run.status.message = Some(message.to_string());
        run.status.finished = Some(Utc::now());
        report(&self.outbox, epoch, &run);
        run
    }
}

/// How a task's worker ended.
#[derive(Debug, PartialEq, Eq)]
enum TaskEnd {
    Succeeded,
    Failed,
    /// The worker itself died (it panicked): the task is failed with `InfrastructureError`,
    /// and this says so for the run's message.
    Broken(String),
}

/// Takes the outcome of a task's worker: the task it ran and how it ended. A worker that
/// panicked leaves its task failed with `InfrastructureError` in `run` (and any step it was
/// running too), so that the run does not end `Success` nor its dependents start. `None` only
/// for a worker `names` does not know, which the runner never spawns.
/// Whether a task whose dependencies have all ended runs, given its `when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Run,
    /// Its condition needs success and a dependency failed (or was skipped after a failure):
    /// it counts as failed for the tasks after it.
    SkipAfterFailure,
    /// `on_failure` and nothing failed: skipped, as a success for the tasks after it.
    SkipUnmet,
}

fn decide(when: Option<&When>, dependency_failed: bool) -> Decision {
    match (when.unwrap_or(&When::OnSuccess), dependency_failed) {
        (When::Always, _) | (When::OnFailure, true) => Decision::Run,
        (When::OnFailure, false) => Decision::SkipUnmet,
        // An expression needs success too; the task's worker then evaluates it over the
        // dependencies' outputs (`TaskContext::condition_holds`).
        (When::OnSuccess | When::Expression(_), false) => Decision::Run,
        (When::OnSuccess | When::Expression(_), true) => Decision::SkipAfterFailure,
    }
}

fn task_ended(
    run: &Mutex<RunObject>,
    names: &mut HashMap<tokio::task::Id, String>,
    joined: Result<(tokio::task::Id, bool), tokio::task::JoinError>,
) -> Option<(String, TaskEnd)> {
    let (id, outcome) = match joined {
        Ok((id, ok)) => (id, Ok(ok)),
        Err(e) => (e.id(), Err(e)),
    };
    let Some(task) = names.remove(&id) else {
        tracing::error!(worker = %id, "a task worker the runner does not know ended; ignoring it");
        return None;
    };
    let e = match outcome {
        Ok(true) => return Some((task, TaskEnd::Succeeded)),
        Ok(false) => return Some((task, TaskEnd::Failed)),
        Err(e) => e,
    };
    let why = match e.try_into_panic() {
        Ok(payload) => match payload.downcast_ref::<&str>() {
            Some(text) => format!("panicked: {text}"),
            None => match payload.downcast_ref::<String>() {
                Some(text) => format!("panicked: {text}"),
                None => "panicked".to_string(),
            },
        },
        Err(e) => format!("was stopped ({e})"),
    };
    let message =
        format!("the agent's worker for task {task:?} {why}; this is a bug in xene-agent: please report it with the agent's log");
    tracing::error!(task = %task, reason = %why, "a task worker died; failing the task");
    let finished = Utc::now();
    let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(status) = run.status.tasks.get_mut(&task) {
        status.status = StepStatus::Error;
        status.reason = Some(ErrorReason::InfrastructureError);
        for step in status.steps.iter_mut().filter(|s| s.status == StepStatus::Running) {
            step.status = StepStatus::Error;
            step.reason = Some(ErrorReason::InfrastructureError);
            step.finished = Some(finished);
        }
    }
    Some((task, TaskEnd::Broken(message)))
}

fn not_executed(name: &str) -> StepRunStatus {
    StepRunStatus {
        name: name.into(),
        status: StepStatus::NotExecuted,
        exit_code: None,
        reason: None,
        started: None,
        finished: None,
    }
}

fn report(outbox: &Outbox, epoch: u64, run: &RunObject) {
    let _ = outbox.send(status_message(epoch, run).into());
}

/// As [`report`], and answers once the leader has applied the status.
fn report_and_hear_applied(outbox: &Outbox, epoch: u64, run: &RunObject) -> oneshot::Receiver<()> {
    let (applied, heard) = oneshot::channel();
    let _ = outbox.send(Outgoing { message: status_message(epoch, run), applied: Some(applied) });
    heard
}

fn status_message(epoch: u64, run: &RunObject) -> pb::AgentMessage {
    let update = pb::RunUpdate {
        run: run.metadata.name.clone(),
        epoch,
        run_json: serde_json::to_string(run).unwrap_or_default(),
        // Numbered by the session when it sends it.
        seq: 0,
    };
    pb::AgentMessage { body: Some(agent_message::Body::RunUpdate(update)) }
}

/// Sends a running run's status as tasks change it, at most once every [`Self::EVERY`]: a task
/// update marks the status changed, and the reporter sends the whole latest status. A status
/// is the run's whole state, so the ones skipped lose nothing, and a run of 1,000 tasks sends
/// tens of statuses instead of thousands of copies of a large one (PERF W5). The first change
/// after a quiet spell is sent at once.
struct StatusReporter {
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StatusReporter {
    const EVERY: Duration = Duration::from_millis(50);

    fn start(
        run: Arc<Mutex<RunObject>>,
        outbox: Outbox,
        epoch: u64,
        mut resend: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        let changed = Arc::new(tokio::sync::Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (changed, stop) = (Arc::clone(&changed), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = changed.notified() => {}
                        // A closed sender (the runner gone) just stops asking.
                        Ok(()) = resend.changed() => {}
                    }
                    report(&outbox, epoch, &run.lock().unwrap_or_else(|p| p.into_inner()));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Self::EVERY) => {}
                    }
                }
            }
        });
        StatusReporter { changed, stop, task: Some(task) }
    }

    /// Stops the reporter once it has sent what it was sending; the caller's next status
    /// supersedes anything it had not sent yet.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StatusReporter {
    /// A run abandoned half-way (its future dropped) stops its reporter too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Sends a run's `StartingUp` status again whenever [`Runner::report_all`] asks, until
/// stopped (the run's [`StatusReporter`] takes over from `Running`) or dropped (the run
/// failed before it ran: a late `StartingUp` after its end is refused by the leader).
struct ResendWhileStarting(Option<tokio::task::JoinHandle<()>>);

impl ResendWhileStarting {
    fn start(run: RunObject, outbox: Outbox, epoch: u64, mut resend: tokio::sync::watch::Receiver<u64>) -> Self {
        ResendWhileStarting(Some(tokio::spawn(async move {
            while resend.changed().await.is_ok() {
                report(&outbox, epoch, &run);
            }
        })))
    }

    /// Stops it once it has sent what it was sending.
    async fn stop(mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ResendWhileStarting {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// What a run's steps are told of it that does not change while it runs: taken once per run,
/// not copied out of the run's whole status for each task (a 1,000-task run copied its status
/// of 1,000 tasks once per task; PERF W5).
struct RunFacts {
    name: String,
    workflow: String,
    pipeline: String,
    agent: String,
    parameters: BTreeMap<String, String>,
}

impl RunFacts {
    fn of(run: &RunObject) -> Self {
        RunFacts {
            name: run.metadata.name.clone(),
            workflow: run.spec.workflow.clone(),
            pipeline: run.spec.pipeline.clone(),
            agent: run.status.agent.clone().unwrap_or_default(),
            parameters: run.spec.parameters.clone(),
        }
    }
}

/// Everything one task needs.
struct TaskContext {
    run: Arc<Mutex<RunObject>>,
    facts: Arc<RunFacts>,
    pipeline: Arc<Pipeline>,
    task: String,
    workspace: PathBuf,
    /// The process executor's outputs files (`$XENE_OUTPUT`).
    outputs: Arc<OutputFiles>,
    outbox: Outbox,
    /// Tells the run's [`StatusReporter`] that the status changed.
    changed: Arc<tokio::sync::Notify>,
    epoch: u64,
    cancel: CancellationToken,
    /// `NAME/KEY` → value, as the leader resolved them (`NAME/` for a secret's only value).
    secrets: Arc<BTreeMap<String, String>>,
    /// The container executor and the run's volume, when the run uses containers.
    containers: Option<(DockerExecutor, Arc<RunResources>)>,
    /// The webhook payload and the file on this host that holds it, when a webhook started
    /// the run.
    event: Option<(PathBuf, Arc<Vec<u8>>)>,
    log_cap: LogCap,
    step_records: Arc<StepRecords>,
}

impl TaskContext {
    fn update(&self, change: impl FnOnce(&mut TaskRunStatus)) {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = run.status.tasks.get_mut(&self.task) {
            change(status);
        }
        self.changed.notify_one();
    }

    /// Runs the task's steps, retrying the whole task by its policy. Returns whether it
    /// succeeded, or was skipped because its condition does not hold (as a success for the
    /// tasks after it).
    async fn run_task(&self) -> bool {
        let Some(task) = self.pipeline.tasks.get(&self.task) else { return false };
        match self.condition_holds(task) {
            Ok(true) => {}
            // Either way told in the first step's log, under an execution of its own.
            Ok(false) => {
                let when = task.when.as_ref().map_or("", When::as_str);
                let (run, execution) = self.before_any_attempt();
                self.note_on_first_step(
                    task,
                    &run,
                    &execution,
                    &format!("skipped: the condition {when:?} does not hold"),
                );
                return true;
            }
            Err(message) => {
                let (run, execution) = self.before_any_attempt();
                self.not_started(task, &run, &execution, ErrorReason::Failed, message);
                return false;
            }
        }
        let retries = task.retries.clone().or_else(|| self.pipeline.retries.clone());
        let limit = retries.as_ref().map_or(0, |r| r.limit);
        let mut attempt = 0u32;
        loop {
            let outcome = self.attempt(attempt).await;
            match outcome {
                None => return true,
                Some(reason) if attempt < limit && reason != ErrorReason::Cancelled && !self.cancel.is_cancelled() => {
                    attempt += 1;
                    let delay = retries.as_ref().map_or(Duration::ZERO, |r| r.delay(attempt).as_std());
                    tracing::info!(task = %self.task, attempt, delay_ms = delay.as_millis() as u64, "retrying the task");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Some(_) => return false,
            }
        }
    }

    /// Whether the task's `when` expression holds over its dependencies' outputs (DESIGN
    /// §10); `true` for the keywords, which the runner decided on already.
    fn condition_holds(&self, task: &xene_model::Task) -> Result<bool, String> {
        let Some(when @ When::Expression(_)) = &task.when else { return Ok(true) };
        let run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        when.evaluate(|dependency, key| run.status.tasks.get(dependency).and_then(|s| s.outputs.get(key)).cloned())
    }

    /// One attempt: `None` on success, else why it failed.
    async fn attempt(&self, attempt: u32) -> Option<ErrorReason> {
        let task = self.pipeline.tasks.get(&self.task)?;
        // The status names the execution before any of its log chunks leaves (same run,
        // so the leader applies them in this order).
        let execution = new_execution_id();
        self.update(|s| {
            s.status = StepStatus::Running;
            s.reason = None;
            s.attempt = attempt;
            s.execution = execution.clone();
            s.outputs.clear();
            for step in &mut s.steps {
                *step = not_executed(&step.name);
            }
        });
        let run = &self.facts;
        // One container per task attempt, from the task's image (the pipeline's by default).
        let container = match (&self.containers, self.pipeline.executor_for(task)) {
            (Some((docker, resources)), Some(Executor::Container(spec))) => {
                let credentials = match self.pull_credentials(spec) {
                    Ok(credentials) => credentials,
                    Err(message) => return self.infrastructure_error(task, &run.name, &execution, message),
                };
                let task_spec = TaskSpec {
                    task: self.task.clone(),
                    attempt,
                    image: spec.image.clone(),
                    cpu: spec.cpu,
                    memory: spec.memory,
                    credentials,
                    event: self.event.as_ref().map(|(_, payload)| Arc::clone(payload)),
                };
                // A pull can take minutes, or stall: a cancellation, the run's timeout, a lost
                // lease or the agent's shutdown stops waiting for it. Dropping `start_task` is
                // safe: a container it had already created carries the run's labels, and
                // `finish_run` (or the orphan sweep) removes it.
                let started = tokio::select! {
                    started = docker.start_task(resources, &task_spec) => started,
                    _ = self.cancel.cancelled() => {
                        let message = format!("the task was stopped while its container was starting (image {})", spec.image);
                        return self.not_started(task, &run.name, &execution, ErrorReason::Cancelled, message);
                    }
                };
                match started {
                    Ok(container) => {
                        tracing::info!(task = %self.task, attempt, container = container.name(), id = container.id(), "task container started");
                        Some((docker.clone(), container))
                    }
                    Err(e) => return self.infrastructure_error(task, &run.name, &execution, e.to_string()),
                }
            }
            (Some(_), None) => {
                let message = "this agent runs containers, and the task names no image: set executor: {type: container, image: ...} or {type: process}";
                return self.infrastructure_error(task, &run.name, &execution, message.into());
            }
            _ => None,
        };
        let outcome = self.steps(task, &execution, container.as_ref()).await;
        if let Some((docker, container)) = container {
            if let Err(e) = docker.stop_task(container).await {
                tracing::warn!(task = %self.task, error = %e, "removing the task's container failed");
            }
        }
        outcome
    }

    /// The registry credentials of the executor's pull secret, from the secrets handed over
    /// with the run; a named secret without both keys is an error that says how to make it.
    fn pull_credentials(&self, spec: &xene_model::ContainerExecutor) -> Result<Option<RegistryCredentials>, String> {
        let Some(name) = &spec.pull_secret else { return Ok(None) };
        let [username, password] = PULL_SECRET_KEYS.map(|key| self.secrets.get(&format!("{name}/{key}")));
        match (username, password) {
            (Some(username), Some(password)) => Ok(Some(RegistryCredentials {
                username: username.clone(),
                password: password.clone(),
                server: crate::docker::registry_of(&spec.image),
            })),
            _ => Err(format!(
                "pull secret {name:?} does not exist or lacks a key of {PULL_SECRET_KEYS:?}; create it with \
                 xenectl secret set {name} --from-literal username=USER --from-literal password=PASSWORD"
            )),
        }
    }

    /// Fails the attempt with `InfrastructureError` before its first step could run, saying
    /// why in the first step's log.
    fn infrastructure_error(
        &self,
        task: &xene_model::Task,
        run: &str,
        execution: &str,
        message: String,
    ) -> Option<ErrorReason> {
        self.not_started(task, run, execution, ErrorReason::InfrastructureError, message)
    }

    /// Ends the attempt for `reason` before its first step could run, saying why in the first
    /// step's log.
    fn not_started(
        &self,
        task: &xene_model::Task,
        run: &str,
        execution: &str,
        reason: ErrorReason,
        message: String,
    ) -> Option<ErrorReason> {
        self.note_on_first_step(task, run, execution, &message);
        self.update(|s| {
            s.status = StepStatus::Error;
            s.reason = Some(reason);
            if let Some(step) = s.steps.first_mut() {
                step.status = StepStatus::Error;
                step.reason = Some(reason);
            }
        });
        Some(reason)
    }

    /// An execution ID for what is said of the task before any attempt (its condition), named
    /// in its status before any log chunk of it leaves; with the run's name.
    fn before_any_attempt(&self) -> (String, String) {
        let execution = new_execution_id();
        self.update(|s| s.execution = execution.clone());
        (self.facts.name.clone(), execution)
    }

    /// Ships `message` as the only line of the task's first step under `execution`.
    fn note_on_first_step(&self, task: &xene_model::Task, run: &str, execution: &str, message: &str) {
        let first = task.steps.first().map_or("", |s| s.name.as_str());
        let target = ChunkTarget { run, task: &self.task, execution, step: first };
        let mut shipper = LogShipper::new(&self.outbox, self.epoch, target, &self.secrets, self.log_cap);
        shipper.note(message);
        shipper.finish();
    }

    /// The task's outputs so far (what its steps wrote to `$XENE_OUTPUT`), with secret values
    /// masked as in logs; or why they cannot be read: `Failed` for a malformed or oversized
    /// file (the step's doing), `InfrastructureError` when the engine cannot hand it over.
    async fn read_outputs(
        &self,
        container: Option<&(DockerExecutor, TaskContainer)>,
        file: Option<&OutputFile>,
        shipper: &LogShipper<'_>,
    ) -> Result<BTreeMap<String, String>, (ErrorReason, String)> {
        let text = match container {
            Some((docker, container)) => docker
                .read_output(container, MAX_OUTPUT_BYTES)
                .await
                .map_err(|e| (ErrorReason::InfrastructureError, e.to_string()))?
                .map_err(|message| (ErrorReason::Failed, message))?,
            None => {
                let Some(path) = file.map(|f| f.path().to_path_buf()) else {
                    return Err((ErrorReason::InfrastructureError, "the task attempt holds no outputs file".into()));
                };
                tokio::task::spawn_blocking(move || read_outputs_file(&path, MAX_OUTPUT_BYTES))
                    .await
                    .map_err(|e| (ErrorReason::InfrastructureError, format!("reading the outputs file: {e}")))??
            }
        };
        let outputs = outputs_from(&text, &shipper.masks).map_err(|e| (ErrorReason::Failed, e.to_string()))?;
        // The run's other tasks' outputs, and this task's, travel in one status.
        let others: usize = {
            let run = self.run.lock().unwrap_or_else(|p| p.into_inner());
            run.status
                .tasks
                .iter()
                .filter(|(name, _)| **name != self.task)
                .map(|(_, s)| outputs_bytes(&s.outputs))
                .sum()
        };
        let total = others + outputs_bytes(&outputs);
        if total > MAX_RUN_OUTPUT_BYTES {
            return Err((ErrorReason::Failed, OutputError::RunTooLarge(total).to_string()));
        }
        Ok(outputs)
    }

    /// The steps of one attempt, in order, in a container or as processes.
    async fn steps(
        &self,
        task: &xene_model::Task,
        execution: &str,
        container: Option<&(DockerExecutor, TaskContainer)>,
    ) -> Option<ErrorReason> {
        let task_deadline = task.timeout.map(|d| tokio::time::Instant::now() + d.as_std());
        let dir = match task.working_dir.as_ref().or(self.pipeline.working_dir.as_ref()) {
            Some(sub) => self.workspace.join(sub.trim_start_matches('/')),
            None => self.workspace.clone(),
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, "creating the working directory");
        }
        let run = &self.facts;
        // Held until the attempt ends, then reused by another: declared before `groups`, so
        // that what the steps left in the background is stopped before the file is given back.
        let outputs_file = match container {
            Some(_) => None,
            None => match self.outputs.take() {
                Ok(file) => Some(file),
                Err(e) => {
                    let message = format!("making an outputs file in {}: {e}", self.outputs.dir().display());
                    return self.infrastructure_error(task, &run.name, execution, message);
                }
            },
        };
        // What the steps leave in the background is stopped when this returns.
        let mut groups = self.step_records.task();
        // The outputs of the tasks it depends on, as they ended (DESIGN §10).
        let inputs: Vec<(String, String)> = {
            let status = self.run.lock().unwrap_or_else(|p| p.into_inner());
            task.dependencies
                .iter()
                .filter_map(|dependency| status.status.tasks.get(dependency).map(|status| (dependency, status)))
                .flat_map(|(dependency, status)| {
                    status.outputs.iter().map(move |(key, value)| (input_variable(dependency, key), value.clone()))
                })
                .collect()
        };
        let output_path = match &outputs_file {
            Some(file) => file.path().display().to_string(),
            None => crate::docker::OUTPUT_PATH.to_string(),
        };
        for (index, step) in task.steps.iter().enumerate() {
            let mut env = BTreeMap::new();
            for (key, value) in run.parameters.iter() {
                env.insert(key.clone(), value.clone());
            }
            let mut missing = None;
            for map in [&self.pipeline.env, &task.env, &step.env] {
                for (key, value) in map {
                    match value {
                        EnvValue::Literal(text) => {
                            env.insert(key.clone(), text.clone());
                        }
                        EnvValue::Secret(reference) => {
                            let lookup = format!("{}/{}", reference.secret_ref, reference.key.as_deref().unwrap_or(""));
                            match self.secrets.get(&lookup) {
                                Some(value) => {
                                    env.insert(key.clone(), value.clone());
                                }
                                None => {
                                    let what = match &reference.key {
                                        Some(k) => format!("key {k:?} of secret {:?}", reference.secret_ref),
                                        None => format!(
                                            "secret {:?} (which must hold exactly one key when no key is named)",
                                            reference.secret_ref
                                        ),
                                    };
                                    missing = Some(format!("environment variable {key}: {what} does not exist; create it with xenectl secret set"));
                                }
                            }
                        }
                    }
                }
            }
            env.extend(inputs.iter().cloned());
            env.insert(OUTPUT_VARIABLE.into(), output_path.clone());
            env.insert("XENE_WORKFLOW".into(), run.workflow.clone());
            env.insert("XENE_PIPELINE".into(), run.pipeline.clone());
            env.insert("XENE_RUN_ID".into(), run.name.clone());
            env.insert("XENE_AGENT".into(), run.agent.clone());
            env.insert("XENE_LEASE_EPOCH".into(), self.epoch.to_string());
            env.insert("XENE_TASK".into(), self.task.clone());
            env.insert("XENE_STEP".into(), step.name.clone());
            let workspace = match container {
                Some(_) => crate::docker::WORKSPACE.to_string(),
                None => self.workspace.display().to_string(),
            };
            env.insert("XENE_WORKSPACE".into(), workspace);
            if let Some((file, _)) = &self.event {
                let path = match container {
                    Some(_) => crate::docker::EVENT_PATH.to_string(),
                    None => file.display().to_string(),
                };
                env.insert("XENE_EVENT_PATH".into(), path);
            }
            let started = Utc::now();
            self.update(|s| {
                s.steps[index].status = StepStatus::Running;
                s.steps[index].started = Some(started);
            });
            let target = ChunkTarget { run: &run.name, task: &self.task, execution, step: &step.name };
            let mut shipper = LogShipper::new(&self.outbox, self.epoch, target, &self.secrets, self.log_cap);
            let end = if let Some(message) = missing {
                shipper.note(&message);
                StepEnd::NotStarted
            } else {
                // A step gets its own timeout, cut short by what is left of the task's.
                let left = task_deadline.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
                let timeout = match (step.timeout.map(|d| d.as_std()), left) {
                    (Some(step), Some(left)) => Some(step.min(left)),
                    (step, left) => step.or(left),
                };
                match container {
                    Some((docker, container)) => {
                        let working_dir = task.working_dir.as_deref().or(self.pipeline.working_dir.as_deref());
                        let command = StepCommand { script: &step.run, working_dir, env: &env, timeout };
                        docker.exec_step(container, &command, &self.cancel, &mut shipper).await
                    }
                    None => run_step(&step.run, &dir, &env, timeout, &self.cancel, &mut groups, &mut shipper).await,
                }
            };
            // The step ended when its process did; shipping the kept tail comes after.
            let finished = Utc::now();
            // What it wrote to $XENE_OUTPUT counts even if it failed (for tasks that run
            // `on_failure`); a file that cannot be read fails a step that succeeded.
            let outputs_problem = match end {
                StepEnd::NotStarted => None,
                _ => match self.read_outputs(container, outputs_file.as_ref(), &shipper).await {
                    Ok(outputs) => {
                        self.update(|s| s.outputs = outputs);
                        None
                    }
                    Err((reason, message)) => {
                        shipper.note(&message);
                        Some(reason)
                    }
                },
            };
            shipper.finish();
            let (status, code, reason) = match end {
                StepEnd::Exited(0) => match outputs_problem {
                    None => (StepStatus::Success, Some(0), None),
                    Some(reason) => (StepStatus::Error, Some(0), Some(reason)),
                },
                StepEnd::Exited(code) => (StepStatus::Error, Some(code), Some(ErrorReason::Failed)),
                StepEnd::TimedOut => (StepStatus::Error, None, Some(ErrorReason::TimedOut)),
                StepEnd::Cancelled => (StepStatus::Error, None, Some(ErrorReason::Cancelled)),
                StepEnd::NotStarted => (StepStatus::Error, None, Some(ErrorReason::InfrastructureError)),
            };
            self.update(|s| {
                s.steps[index].status = status;
                s.steps[index].exit_code = code;
                s.steps[index].reason = reason;
                s.steps[index].finished = Some(finished);
                if status == StepStatus::Error {
                    s.status = StepStatus::Error;
                    s.reason = reason;
                }
            });
            if let Some(reason) = reason {
                return Some(reason);
            }
        }
        self.update(|s| s.status = StepStatus::Success);
        None
    }
}

/// Outputs from the text of an outputs file, with secret values masked in the whole text
/// first: a secret holding `=` or making up a key is masked too.
fn outputs_from(text: &[u8], masks: &[String]) -> Result<BTreeMap<String, String>, OutputError> {
    match std::str::from_utf8(text) {
        Ok(text) => parse_outputs(mask_secrets(masks, text).as_bytes()),
        // Not text: parsing says where.
        Err(_) => parse_outputs(text),
    }
}

/// A fresh execution ID ([`TaskRunStatus::execution`]): 64 random bits in hex.
fn new_execution_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whose lines a [`LogShipper`] ships: a step of one execution of a task attempt of a run.
struct ChunkTarget<'a> {
    run: &'a str,
    task: &'a str,
    execution: &'a str,
    step: &'a str,
}

/// The per-step log cap (DESIGN §9.7): a step's first half of either is shipped as it comes,
/// then only its latest half of both is kept, shipped when it ends behind a marker saying how
/// many lines were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCap {
    pub lines: u64,
    pub bytes: u64,
}

impl LogCap {
    pub const DEFAULT: LogCap = LogCap { lines: 200_000, bytes: 32 << 20 };

    fn half_lines(self) -> u64 {
        (self.lines / 2).max(1)
    }

    fn half_bytes(self) -> u64 {
        (self.bytes / 2).max(1)
    }
}

/// Batches a step's lines with sequence numbers and timestamps and ships them (DESIGN §9.7).
struct LogShipper<'a> {
    outbox: &'a Outbox,
    /// Secret values (each line of each), longest first, replaced by `***` before lines leave.
    masks: Vec<String>,
    epoch: u64,
    run: String,
    next_seq: u64,
    /// The lines not yet shipped, as the chunk that will carry them.
    pending: ChunkJson,
    first_seq: u64,
    /// When the oldest line of `pending` came.
    pending_since: Option<tokio::time::Instant>,
    cap: LogCap,
    /// Lines and bytes of text shipped as the head, until the first line that does not fit.
    head_lines: u64,
    head_bytes: u64,
    in_tail: bool,
    /// Past the head, the latest lines, kept until the step ends.
    tail: Tail,
}

impl<'a> LogShipper<'a> {
    /// A chunk leaves when it has this many lines or bytes of JSON, or is this old (the
    /// executor waits for [`StepOutput::due`] beside the step's output). Each chunk is one
    /// Raft entry: big enough that a step printing fast costs the servers few entries (PERF
    /// W9: 256 KiB chunks took a quarter less of the machine's CPU than 64 KiB ones), small
    /// enough that an entry replicates in one AppendEntries message and that a chunk, with
    /// the line that filled it (at most [`crate::lines::MAX_LINE`], six times that escaped),
    /// stays under the store's 1 MiB value limit.
    const BATCH_LINES: usize = 4_000;
    const BATCH_BYTES: usize = 256 * 1024;
    const BATCH_AGE: Duration = Duration::from_millis(200);
    fn new(
        outbox: &'a Outbox,
        epoch: u64,
        target: ChunkTarget<'_>,
        secrets: &BTreeMap<String, String>,
        cap: LogCap,
    ) -> Self {
        LogShipper {
            outbox,
            masks: masks(secrets),
            epoch,
            run: target.run.into(),
            next_seq: 0,
            pending: ChunkJson::new(target.run, target.task, target.step, target.execution),
            first_seq: 0,
            pending_since: None,
            cap,
            head_lines: 0,
            head_bytes: 0,
            in_tail: false,
            tail: Tail::new(cap.half_lines() as usize, cap.half_bytes() as usize),
        }
    }

    /// Ships the kept tail after a marker, at the end of the step.
    fn finish(&mut self) {
        let (dropped, kept) = self.tail.counts();
        if dropped > 0 {
            let marker = format!("[xene: {dropped} lines truncated; the last {kept} follow]");
            self.ship("xene", &marker, now_ms());
        }
        let mut tail = std::mem::replace(&mut self.tail, Tail::new(1, 1));
        tail.drain(|stream, text, ts_ms| self.ship(stream, text, ts_ms));
        self.flush();
    }

    fn ship(&mut self, stream: &str, text: &str, ts_ms: u64) {
        if self.pending.lines() == 0 {
            self.first_seq = self.next_seq;
            self.pending_since = Some(tokio::time::Instant::now());
        }
        let text = mask_secrets(&self.masks, text);
        self.pending.push(self.next_seq, ts_ms, stream, &text);
        self.next_seq += 1;
        if self.pending.lines() >= Self::BATCH_LINES || self.pending.json_bytes() >= Self::BATCH_BYTES {
            self.flush();
        }
    }
}

impl StepOutput for LogShipper<'_> {
    fn unsplittable(&self) -> &[String] {
        &self.masks
    }

    fn line(&mut self, stream: &'static str, text: &str, ts_ms: u64) {
        if !self.in_tail {
            let bytes = self.head_bytes + text.len() as u64;
            if self.head_lines < self.cap.half_lines() && bytes <= self.cap.half_bytes() {
                self.head_lines += 1;
                self.head_bytes = bytes;
                self.ship(stream, text, ts_ms);
                return;
            }
            // Past the head only the latest lines are kept, until the step ends.
            self.in_tail = true;
        }
        self.tail.push(stream, text, ts_ms);
    }

    /// Line by line while in the head; past it, the rest of the run is kept whole.
    fn lines(&mut self, stream: &'static str, run: &str, ts_ms: u64) {
        let mut rest = run;
        while !self.in_tail {
            let Some((text, after)) = rest.split_once('\n') else {
                // A last line without its newline, which executors do not send, still counts.
                if !rest.is_empty() {
                    self.line(stream, rest, ts_ms);
                }
                return;
            };
            self.line(stream, text, ts_ms);
            rest = after;
        }
        if !rest.is_empty() {
            self.tail.push_lines(stream, rest, ts_ms);
        }
    }

    fn due(&self) -> Option<tokio::time::Instant> {
        self.pending_since.map(|since| since + Self::BATCH_AGE)
    }

    fn flush(&mut self) {
        self.pending_since = None;
        if self.pending.lines() == 0 {
            return;
        }
        let batch = pb::LogBatch {
            run: self.run.clone(),
            epoch: self.epoch,
            chunk_json: self.pending.take(),
            first_seq: self.first_seq,
            seq: 0,
        };
        let _ = self.outbox.send(pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) }.into());
    }
}

/// `text` with every one of `masks` in it replaced by `***` (as lines are shipped).
fn mask_secrets<'t>(masks: &[String], text: &'t str) -> Cow<'t, str> {
    let mut text = Cow::Borrowed(text);
    for mask in masks {
        if text.contains(mask.as_str()) {
            text = Cow::Owned(text.replace(mask.as_str(), "***"));
        }
    }
    text
}

/// The strings to mask: every line of every secret value (lines are what the shipper sees, so
/// a value written in several pieces is still masked once its line is complete). Very short
/// pieces are left alone: masking every `a` would make logs unreadable and reveal nothing.
fn masks(secrets: &BTreeMap<String, String>) -> Vec<String> {
    let mut masks: Vec<String> = secrets
        .values()
        .flat_map(|v| v.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|m| m.trim().len() >= 3)
        .collect();
    masks.sort_by_key(|m| std::cmp::Reverse(m.len()));
    masks.dedup();
    masks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxReceiver;
    use xene_model::{LogChunk, LogLine};

    #[test]
    fn only_the_latest_finished_runs_are_kept() {
        let mut finished = Finished::default();
        let run = |name: &str| RunObject::pending(name, xene_model::RunSpec::default());
        for i in 0..Finished::KEPT + 10 {
            finished.insert(format!("r{i}"), 1, run(&format!("r{i}")));
        }
        assert_eq!(finished.by_run.len(), Finished::KEPT);
        assert_eq!(finished.order.len(), Finished::KEPT);
        assert!(finished.get("r9").is_none(), "the oldest went first");
        assert!(finished.get("r10").is_some());
        finished.insert("r10".into(), 2, run("r10"));
        assert_eq!(finished.get("r10").map(|(epoch, _)| *epoch), Some(2), "a run finished again is replaced");
        assert_eq!(finished.order.len(), Finished::KEPT, "not counted twice");
        finished.remove("r10");
        assert!(finished.get("r10").is_none());
        assert_eq!(finished.order.len(), Finished::KEPT - 1);
    }

    #[test]
    fn when_decides_after_the_dependencies_ended() {
        use Decision::*;
        let expression = When::Expression("{{ tasks.a.outputs.x }} > 1".into());
        let cases = [
            (None, false, Run),
            (None, true, SkipAfterFailure),
            (Some(When::OnSuccess), false, Run),
            (Some(When::OnSuccess), true, SkipAfterFailure),
            (Some(When::OnFailure), false, SkipUnmet),
            (Some(When::OnFailure), true, Run),
            (Some(When::Always), false, Run),
            (Some(When::Always), true, Run),
            (Some(expression.clone()), false, Run),
            (Some(expression), true, SkipAfterFailure),
        ];
        for (when, failed, want) in cases {
            assert_eq!(decide(when.as_ref(), failed), want, "{when:?} after a failure: {failed}");
        }
    }

    #[test]
    fn secret_values_are_masked_line_by_line() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let secrets: BTreeMap<String, String> = [
            ("db/password".to_string(), "hunter22".to_string()),
            ("cert/".to_string(), "line-one\nline-two".to_string()),
            ("x/".to_string(), "a".to_string()),
        ]
        .into();
        let target = ChunkTarget { run: "r", task: "t", execution: "e1", step: "s" };
        let mut shipper = LogShipper::new(&tx, 7, target, &secrets, LogCap::DEFAULT);
        shipper.line("stdout", "password=hunter22!", 0);
        shipper.line("stdout", "cert: line-one", 0);
        shipper.line("stdout", "line-two and a", 0);
        shipper.flush();
        let Some(pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) }) =
            rx.try_recv().ok().map(|o| o.message)
        else {
            panic!("a log batch")
        };
        let chunk: LogChunk = serde_json::from_str(&batch.chunk_json).expect("chunk");
        let texts: Vec<&str> = chunk.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["password=***!", "cert: ***", "*** and a"]);
        assert_eq!(chunk.lines.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(batch.epoch, 7);
        assert_eq!(chunk.execution, "e1", "every chunk names its execution");
    }

    /// Every line a shipper with `cap` sends for `texts`, checking each chunk's numbering.
    fn shipped(cap: LogCap, texts: impl IntoIterator<Item = String>) -> Vec<LogLine> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let target = ChunkTarget { run: "r", task: "t", execution: "e1", step: "s" };
        let mut shipper = LogShipper::new(&tx, 1, target, &BTreeMap::new(), cap);
        for (i, text) in texts.into_iter().enumerate() {
            shipper.line("stdout", &text, i as u64);
        }
        shipper.finish();
        received(&mut rx)
    }

    /// Like [`shipped`], with the lines handed over in runs of `run` lines (as executors hand
    /// whole lines read together), each run stamped with the time of its first line.
    fn shipped_in_runs(cap: LogCap, texts: &[String], run: usize) -> Vec<LogLine> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let target = ChunkTarget { run: "r", task: "t", execution: "e1", step: "s" };
        let mut shipper = LogShipper::new(&tx, 1, target, &BTreeMap::new(), cap);
        for (i, lines) in texts.chunks(run).enumerate() {
            let joined: String = lines.iter().map(|l| format!("{l}\n")).collect();
            shipper.lines("stdout", &joined, (i * run) as u64);
        }
        shipper.finish();
        received(&mut rx)
    }

    /// The lines of every chunk sent to `rx`, checking each chunk's numbering.
    fn received(rx: &mut OutboxReceiver) -> Vec<LogLine> {
        let mut lines = Vec::new();
        while let Ok(pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) }) =
            rx.try_recv().map(|o| o.message)
        {
            assert!(batch.chunk_json.len() < 1 << 20, "a chunk must fit the store's 1 MiB value limit");
            let chunk: LogChunk = serde_json::from_str(&batch.chunk_json).expect("chunk");
            assert_eq!(chunk.lines.first().map(|l| l.seq), Some(batch.first_seq));
            lines.extend(chunk.lines);
        }
        assert!(lines.iter().enumerate().all(|(i, l)| l.seq == i as u64), "sequence numbers have no gaps");
        lines
    }

    #[test]
    fn a_step_over_the_line_cap_keeps_head_marker_and_tail() {
        let cap = LogCap::DEFAULT;
        let total = cap.lines + 1_000;
        let lines = shipped(cap, (0..total).map(|i| format!("line {i}")));
        let half = cap.lines / 2;
        assert_eq!(lines.len() as u64, cap.lines + 1, "head, marker, tail");
        assert_eq!(lines[half as usize - 1].text, format!("line {}", half - 1));
        assert_eq!(lines[half as usize].stream, "xene");
        assert_eq!(lines[half as usize].text, format!("[xene: 1000 lines truncated; the last {half} follow]"));
        assert_eq!(lines[half as usize + 1].text, format!("line {}", half + 1_000));
        assert_eq!(lines.last().map(|l| l.text.clone()), Some(format!("line {}", total - 1)));
        assert_eq!(lines.last().map(|l| l.ts_ms), Some(total - 1), "kept lines keep their timestamps");
    }

    #[test]
    fn a_step_over_the_byte_cap_keeps_a_head_and_tail_of_half_the_bytes_each() {
        // 100-byte lines under a 2,000-byte cap: 10 lines of head, 10 of tail.
        let cap = LogCap { lines: 1_000, bytes: 2_000 };
        let lines = shipped(cap, (0..500).map(|i| format!("{i:0100}")));
        assert_eq!(lines.len(), 21, "{:?}", lines.iter().map(|l| &l.text).collect::<Vec<_>>());
        assert_eq!(lines[9].text, format!("{:0100}", 9));
        assert_eq!(lines[10].text, "[xene: 480 lines truncated; the last 10 follow]");
        assert_eq!(lines[11].text, format!("{:0100}", 490));
        // Under both caps nothing is dropped and no marker is written.
        let lines = shipped(cap, (0..15).map(|i| format!("{i:0100}")));
        assert_eq!(lines.len(), 15);
        assert!(lines.iter().all(|l| l.stream == "stdout"));
    }

    #[test]
    fn lines_handed_over_in_runs_are_shipped_and_capped_as_one_by_one() {
        for (cap, count) in [
            (LogCap { lines: 1_000, bytes: 1 << 20 }, 5_003),
            (LogCap { lines: 100_000, bytes: 2_000 }, 777),
            (LogCap { lines: 1_000, bytes: 1 << 20 }, 600),
        ] {
            let texts: Vec<String> = (0..count).map(|i| format!("line {i:04}")).collect();
            let want = shipped(cap, texts.iter().cloned());
            for run in [1, 7, 500, 5_003] {
                let got = shipped_in_runs(cap, &texts, run);
                let text =
                    |lines: &[LogLine]| lines.iter().map(|l| (l.stream.clone(), l.text.clone())).collect::<Vec<_>>();
                assert_eq!(text(&got), text(&want), "{cap:?}, runs of {run}");
                let stamped = got.iter().filter(|l| l.stream == "stdout").all(|l| {
                    let i: u64 = l.text["line ".len()..].parse().expect("number");
                    l.ts_ms == i - i % run as u64
                });
                assert!(stamped, "each line keeps its run's time ({cap:?}, runs of {run})");
            }
        }
    }

    #[test]
    fn the_longest_lines_of_the_worst_text_still_fit_a_stored_chunk() {
        // Control characters take six bytes each in JSON; pieces of MAX_LINE of them, beside a
        // nearly full chunk of short lines, must still make chunks the store accepts.
        // A line of 48 takes about 340 bytes, so some of these runs end a line short of a
        // full chunk, wherever its JSON bound falls.
        let mut texts: Vec<String> = Vec::new();
        for short in 760..790 {
            texts.extend((0..short).map(|_| "\u{1}".repeat(48)));
            texts.push("\u{1}".repeat(crate::lines::MAX_LINE));
        }
        let count = texts.len();
        let lines = shipped(LogCap::DEFAULT, texts);
        assert_eq!(lines.len(), count);
    }

    /// Lines a step prints before it falls silent reach the servers within the batch age, not
    /// when the step prints again or ends (`logs -f` of `echo start; sleep 60`).
    #[tokio::test]
    async fn held_lines_leave_when_due_while_the_step_is_silent() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let target = ChunkTarget { run: "r", task: "t", execution: "e1", step: "s" };
        let work = tempfile::tempdir().expect("temporary directory");
        let dir = work.path().to_path_buf();
        let step = tokio::spawn(async move {
            let mut shipper = LogShipper::new(&tx, 1, target, &BTreeMap::new(), LogCap::DEFAULT);
            let cancel = CancellationToken::new();
            let script = "echo first; echo second >&2; sleep 3; echo third";
            let records = StepRecords::new(dir.join("steps"));
            let end = run_step(script, &dir, &BTreeMap::new(), None, &cancel, &mut records.task(), &mut shipper).await;
            shipper.finish();
            end
        });
        let began = std::time::Instant::now();
        let first = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.map(|o| o.map(|o| o.message));
        let Ok(Some(pb::AgentMessage { body: Some(agent_message::Body::Logs(batch)) })) = first else {
            panic!("no log batch within 2 s of a step that printed and fell silent: {first:?}")
        };
        assert!(!step.is_finished(), "the step sleeps for 3 s; its first lines came after {:?}", began.elapsed());
        let chunk: LogChunk = serde_json::from_str(&batch.chunk_json).expect("chunk");
        let texts: Vec<(&str, &str)> = chunk.lines.iter().map(|l| (l.stream.as_str(), l.text.as_str())).collect();
        assert!(texts.contains(&("stdout", "first")) && texts.contains(&("stderr", "second")), "{texts:?}");
        assert_eq!(step.await.expect("step task"), StepEnd::Exited(0));
        let Some(pb::AgentMessage { body: Some(agent_message::Body::Logs(last)) }) = rx.recv().await.map(|o| o.message)
        else {
            panic!("the last line's batch")
        };
        let chunk: LogChunk = serde_json::from_str(&last.chunk_json).expect("chunk");
        assert_eq!(chunk.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["third"]);
        assert_eq!(last.first_seq, 2);
    }

    #[test]
    fn secrets_are_masked_in_the_whole_outputs_text() {
        let masks = masks(&BTreeMap::from([("db/url".to_string(), "user=pw@db".to_string())]));
        let outputs = outputs_from(b"conn=user=pw@db\nplain=1\n", &masks).expect("outputs");
        assert_eq!(outputs.get("conn").map(String::as_str), Some("***"), "a secret holding '=' is masked");
        assert_eq!(outputs.get("plain").map(String::as_str), Some("1"));
        assert!(outputs_from(b"no pair\n", &masks).is_err());
    }

    /// A task whose worker panics is failed with `InfrastructureError` (so its run cannot end
    /// `Success` and its dependents stay `NotExecuted`), its running step with it, and the
    /// message says the agent's worker panicked.
    #[tokio::test]
    async fn a_task_whose_worker_panics_is_failed() {
        let mut run = RunObject::pending("r", Default::default());
        let mut steps = vec![not_executed("one"), not_executed("two")];
        steps[0].status = StepStatus::Running;
        let status = TaskRunStatus {
            status: StepStatus::Running,
            reason: None,
            attempt: 0,
            execution: "e1".into(),
            steps,
            outputs: BTreeMap::new(),
        };
        run.status.tasks.insert("build".into(), status.clone());
        run.status.tasks.insert("lint".into(), status);
        let run = Mutex::new(run);
        let mut workers = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        names.insert(workers.spawn(async { panic!("boom") }).id(), "build".to_string());
        names.insert(workers.spawn(async { true }).id(), "lint".to_string());
        let mut ended = BTreeMap::new();
        while let Some(joined) = workers.join_next_with_id().await {
            let (task, end) = task_ended(&run, &mut names, joined).expect("a known worker");
            ended.insert(task, end);
        }
        assert!(names.is_empty());
        assert_eq!(ended.get("lint"), Some(&TaskEnd::Succeeded));
        let Some(TaskEnd::Broken(message)) = ended.get("build") else { panic!("build is broken: {ended:?}") };
        assert!(message.contains("\"build\" panicked: boom"), "{message}");
        let run = run.into_inner().expect("lock");
        let build = &run.status.tasks["build"];
        assert_eq!((build.status, build.reason), (StepStatus::Error, Some(ErrorReason::InfrastructureError)));
        assert_eq!(build.steps[0].status, StepStatus::Error);
        assert_eq!(build.steps[0].reason, Some(ErrorReason::InfrastructureError));
        assert_eq!(build.steps[1].status, StepStatus::NotExecuted);
        assert_eq!(run.status.tasks["lint"].status, StepStatus::Running, "a worker's own updates are its own");
    }

    /// The run's reports through `outbox` until one is final.
    async fn final_report(outbox: &mut tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage>) -> RunObject {
        reports_until_final(outbox).await.0
    }

    /// As [`final_report`], with the phase of every report before it.
    async fn reports_until_final(
        outbox: &mut tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage>,
    ) -> (RunObject, Vec<RunPhase>) {
        let mut phases = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), outbox.recv())
                .await
                .expect("a report within 20 s")
                .expect("the outbox is open");
            if let Some(agent_message::Body::RunUpdate(update)) = message.body {
                let run: RunObject = serde_json::from_str(&update.run_json).expect("run json");
                if run.status.phase.is_terminal() {
                    return (run, phases);
                }
                phases.push(run.status.phase);
            }
        }
    }

    /// A runner of `max_tasks` slots with the process executor under `dir`, holding pipeline
    /// `w/p` of `manifest` at epoch 7, and the outbox it reports to.
    fn process_runner(
        dir: &std::path::Path,
        max_tasks: usize,
        manifest: &str,
    ) -> (Arc<Runner>, tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage>) {
        let (runner, outbox) = process_runner_unapplied(dir, max_tasks, manifest);
        (runner, applied_at_once(outbox))
    }

    /// Stands in for the leader: tells every writer at once that its write was applied, and
    /// passes the messages on.
    fn applied_at_once(mut outbox: OutboxReceiver) -> tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Outgoing { message, applied }) = outbox.recv().await {
                if let Some(applied) = applied {
                    let _ = applied.send(());
                }
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// As [`process_runner`], with the outbox itself: nothing is applied unless the test says.
    fn process_runner_unapplied(
        dir: &std::path::Path,
        max_tasks: usize,
        manifest: &str,
    ) -> (Arc<Runner>, OutboxReceiver) {
        let workflow = xene_model::parse_manifest(manifest).expect("manifest");
        let leases = Arc::new(Leases::default());
        let (tx, outbox) = tokio::sync::mpsc::unbounded_channel();
        let options = RunnerOptions {
            max_tasks,
            executor: "process".into(),
            log_cap: LogCap::DEFAULT,
            step_records: Arc::new(StepRecords::new(dir.join("steps"))),
        };
        let runner = Runner::new("a".into(), dir.join("work"), Arc::clone(&leases), tx, None, options);
        let lease = crate::leases::HeldLease {
            epoch: 7,
            workflow_json: serde_json::to_string(&workflow).expect("json"),
            workflow_revision: 3,
            cron_since_ms: BTreeMap::new(),
        };
        leases.grant("w/p", lease);
        (runner, outbox)
    }

    /// Starts run `id` of `w/p` at epoch 7.
    fn start_run(runner: &Arc<Runner>, id: &str) {
        let spec = xene_model::RunSpec { workflow: "w".into(), pipeline: "p".into(), ..Default::default() };
        let json = serde_json::to_string(&RunObject::pending(id, spec)).expect("json");
        runner.start(&json, 7, BTreeMap::new(), Vec::new());
    }

    /// A run stopped because the agent lost its pipeline ends as `AgentLost`, not as cancelled
    /// by a user; one a user cancels ends `Cancelled` (a review found both reported as the
    /// latter, which the server stores when the lease has not moved yet).
    #[tokio::test]
    async fn a_run_stopped_by_a_lost_lease_is_agent_lost_and_a_cancelled_one_cancelled() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let manifest = "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  pipelines:\n    p:\n      tasks:\n        t: {steps: [{name: s, run: 'echo started; sleep 30'}]}\n";
        let (runner, mut outbox) = process_runner(dir.path(), 4, manifest);
        for (run, stop) in [("lost", true), ("cancelled", false)] {
            start_run(&runner, run);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !runner.running_ids().contains(run) {
                assert!(std::time::Instant::now() < deadline, "{run} never started");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stop {
                runner.stop_pipeline("w/p");
            } else {
                runner.stop(run);
            }
            let done = final_report(&mut outbox).await;
            assert_eq!(done.metadata.name, run);
            let want = if stop {
                (RunPhase::Error, Some(ErrorReason::AgentLost))
            } else {
                (RunPhase::Cancelled, Some(ErrorReason::Cancelled))
            };
            assert_eq!((done.status.phase, done.status.reason), want, "{done:#?}");
            while runner.running_ids().contains(run) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// A workflow whose one task touches `marker`, and a runner for it whose writes are applied
    /// only when the test says; the run `id` started, and its first write taken.
    async fn started_unapplied(
        dir: &std::path::Path,
        marker: &std::path::Path,
        id: &str,
    ) -> (Arc<Runner>, OutboxReceiver, RunObject, oneshot::Sender<()>) {
        let manifest = format!(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: w}}\nspec:\n  pipelines:\n    p:\n      tasks:\n        t: {{steps: [{{name: s, run: 'touch {}'}}]}}\n",
            marker.display()
        );
        let (runner, mut outbox) = process_runner_unapplied(dir, 2, &manifest);
        start_run(&runner, id);
        let first = tokio::time::timeout(Duration::from_secs(10), outbox.recv())
            .await
            .expect("the run's first write within 10 s")
            .expect("the outbox is open");
        let Some(agent_message::Body::RunUpdate(update)) = first.message.body else {
            panic!("the run's start first: {:?}", first.message)
        };
        let run: RunObject = serde_json::from_str(&update.run_json).expect("run json");
        let applied = first.applied.expect("the start waits to hear it was applied");
        (runner, outbox, run, applied)
    }

    /// A run's steps wait until the leader has applied its start: a leader cut off from the
    /// others before then may be followed by one that never heard of the run and hands it to
    /// another agent (DESIGN §7.5; a chaos test's failure showed the window).
    #[tokio::test]
    async fn no_step_starts_before_the_leader_applied_the_runs_start() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let marker = dir.path().join("ran");
        let (_runner, mut outbox, run, applied) = started_unapplied(dir.path(), &marker, "waits").await;
        assert_eq!(run.status.phase, RunPhase::StartingUp);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!marker.exists(), "a step ran before its run's start was applied");
        assert!(outbox.try_recv().is_err(), "nothing follows the start until it is applied");
        applied.send(()).expect("the run waits to hear");
        let done = final_report(&mut applied_at_once(outbox)).await;
        assert_eq!(done.status.phase, RunPhase::Success, "{done:#?}");
        assert!(marker.exists(), "the step ran once the start was applied");
    }

    /// A run whose lease goes while it waits for its start to be applied ends before its first
    /// task, as `AgentLost`, having run nothing.
    #[tokio::test]
    async fn a_run_stopped_before_its_start_was_applied_runs_nothing() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let marker = dir.path().join("ran");
        let (runner, outbox, _, _applied) = started_unapplied(dir.path(), &marker, "stopped").await;
        runner.stop_pipeline("w/p");
        let (done, phases) = reports_until_final(&mut applied_at_once(outbox)).await;
        assert!(!phases.contains(&RunPhase::Running), "a run that ran nothing is never reported Running: {phases:?}");
        assert_eq!((done.status.phase, done.status.reason), (RunPhase::Error, Some(ErrorReason::AgentLost)));
        assert_eq!(done.status.tasks["t"].status, StepStatus::NotExecuted, "{done:#?}");
        assert!(!marker.exists(), "a step ran");
    }

    /// The task limit is the agent's, not each run's (DESIGN §9.2): two runs of three
    /// independent tasks on an agent of two slots never have more than two tasks running, and
    /// every task still runs.
    #[tokio::test]
    async fn the_task_limit_holds_across_runs() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal = dir.path().join("journal");
        // Each task notes its start and end, half a second apart: one line per event.
        let step = format!("echo start >> {0}; sleep 0.5; echo end >> {0}", journal.display());
        let manifest = format!(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: w}}\nspec:\n  pipelines:\n    p:\n      tasks:\n{}",
            ["a", "b", "c"].map(|t| format!("        {t}: {{steps: [{{name: s, run: {step:?}}}]}}\n")).concat()
        );
        let (runner, mut outbox) = process_runner(dir.path(), 2, &manifest);
        for run in ["one", "two"] {
            start_run(&runner, run);
        }
        for _ in 0..2 {
            let done = final_report(&mut outbox).await;
            assert_eq!(done.status.phase, RunPhase::Success, "{done:#?}");
        }
        let events = std::fs::read_to_string(&journal).expect("journal");
        let (mut running, mut most) = (0i32, 0i32);
        for event in events.lines() {
            running += if event == "start" { 1 } else { -1 };
            most = most.max(running);
        }
        assert_eq!(events.lines().filter(|e| *e == "start").count(), 6, "every task ran:\n{events}");
        assert_eq!(most, 2, "at most two tasks at once, and two did run together:\n{events}");
    }

    /// A task skipped at once (its `when` unmet) makes its dependents ready in the same pass:
    /// with no other task running, the run went on to them instead of ending `Success` with
    /// them never run (which the runner did while it looked for ready tasks once per pass).
    #[tokio::test]
    async fn the_tasks_after_a_skipped_task_run_even_when_nothing_else_runs() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let manifest = "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: w}\nspec:\n  pipelines:\n    p:\n      tasks:\n        build: {steps: [{name: s, run: 'true'}]}\n        notify: {dependencies: [build], when: on_failure, steps: [{name: s, run: 'true'}]}\n        cleanup: {dependencies: [notify], steps: [{name: s, run: 'true'}]}\n";
        let (runner, mut outbox) = process_runner(dir.path(), 2, manifest);
        start_run(&runner, "skips");
        let done = final_report(&mut outbox).await;
        assert_eq!(done.status.phase, RunPhase::Success, "{done:#?}");
        assert_eq!(done.status.tasks["notify"].status, StepStatus::NotExecuted, "{done:#?}");
        assert_eq!(done.status.tasks["cleanup"].status, StepStatus::Success, "{done:#?}");
    }

    #[test]
    fn execution_ids_are_valid_and_distinct() {
        let ids: BTreeSet<String> = (0..100).map(|_| new_execution_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.iter().all(|id| LogChunk::valid_execution(id)), "{ids:?}");
    }
}
