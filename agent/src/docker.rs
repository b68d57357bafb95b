//! The container executor (DESIGN §9.3, §9.6), through bollard: one workspace volume per run
//! mounted at `/workspace`, one container per task attempt kept alive by a sleeping shell, and
//! each step a `/bin/sh -c` exec in that container, with the same contract as the process
//! executor (`process::run_step`): output line by line, the exit code, and on a timeout or a
//! cancellation SIGTERM to the step's process group, a grace period, then SIGKILL.
//!
//! Every container and volume carries the labels `xene.agent`, `xene.workflow`,
//! `xene.pipeline` and `xene.run` (containers also `xene.task` and `xene.attempt`), so an
//! agent can find and remove what it left behind (`DockerExecutor::remove_orphans`) without
//! touching what belongs to another agent on the same Docker host.
//!
//! The step's process group: Docker (runc) starts every exec in a new session, so the exec's
//! first process is a process-group leader. A small wrapper prints its PID on stderr (the
//! first line there, which the executor consumes) and then `exec`s the step's shell, so that
//! PID is the group to signal; signals are sent by another exec, `kill -TERM -PID`, which
//! works with busybox and every other `/bin/sh`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xene_model::{Cpu, Memory};

use crate::lines::{now_ms, until_due, LineBuffer, StepOutput};
pub use crate::process::StepEnd;
use crate::process::GRACE;

/// Where every task container mounts its run's workspace volume.
pub const WORKSPACE: &str = "/workspace";

/// Label keys on every container and volume the executor creates.
pub mod labels {
    pub const AGENT: &str = "xene.agent";
    pub const WORKFLOW: &str = "xene.workflow";
    pub const PIPELINE: &str = "xene.pipeline";
    pub const RUN: &str = "xene.run";
    pub const TASK: &str = "xene.task";
    pub const ATTEMPT: &str = "xene.attempt";
}

/// bollard's default socket (not exported by it), used unless `DOCKER_HOST` names another.
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// How long one request may wait for the engine's answer (bollard's default; a streamed body,
/// such as a step's output or a pull's progress, is not limited by it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `connect` and `ping` wait for the engine before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the output of a step may go on after SIGKILL before the executor stops reading it
/// (a process that left the step's process group can hold its stdout open).
const AFTER_KILL: Duration = Duration::from_secs(5);
/// While a step's output is open, how often the engine is asked whether its shell has exited:
/// something the step left in the background may hold the output open for as long as it runs.
const EXIT_PROBE: Duration = Duration::from_millis(500);
/// How long output is still read once the shell has exited and the output has not closed.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
/// The first stderr line of every step: the wrapper's PID, consumed by the executor.
const PID_MARKER: &str = "xene-step-pid ";
/// Runs the step's script (`$1`) in its working directory (`$2`, created if missing) after
/// telling the executor its PID, which `exec` keeps for the step's shell.
const STEP_WRAPPER: &str = r#"echo "xene-step-pid $$" >&2; mkdir -p "$2" && cd "$2" || exit 1; exec /bin/sh -c "$1""#;
/// The task container's main process: sleeps until the container is removed. `init: true`
/// puts Docker's init in front of it to reap the orphans that steps leave behind.
const KEEP_ALIVE: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600; done";

/// Why the executor could not do what it was asked; the runner reports both as
/// `InfrastructureError`.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The Docker engine did not answer; worth retrying later.
    #[error("Docker is not reachable at {endpoint}: {reason}; is dockerd running, and may this user use its socket?")]
    Unavailable { endpoint: String, reason: String },
    /// The engine answered but refused (an image that is neither present nor pullable, a
    /// container that cannot be created or started...).
    #[error("{0}")]
    Infrastructure(String),
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

/// Registry credentials for pulling a task's image (from a secret, DESIGN §9.3).
#[derive(Clone, Default)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
    /// The registry, e.g. `registry.example.com` ([`registry_of`]); Docker Hub when absent.
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"***")
            .field("server", &self.server)
            .finish()
    }
}

/// What one task attempt's container is made from.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub task: String,
    pub attempt: u32,
    pub image: String,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub credentials: Option<RegistryCredentials>,
    /// The webhook payload of the run, put at [`EVENT_PATH`] before any step runs.
    pub event: Option<Arc<Vec<u8>>>,
}

/// Where a task container finds the webhook payload of its run.
pub const EVENT_PATH: &str = "/xene/event.json";
/// Where a task container's steps write their outputs (`$XENE_OUTPUT`, DESIGN §10): made
/// empty and writable by any user when the container starts, read after each step.
pub const OUTPUT_PATH: &str = "/xene/output";

/// One step to run in a task container.
#[derive(Clone, Copy, Debug)]
pub struct StepCommand<'a> {
    /// Run with `/bin/sh -c`.
    pub script: &'a str,
    /// Where the step runs, created if missing: an absolute path in the container, or one
    /// relative to [`WORKSPACE`]; [`WORKSPACE`] itself when `None`.
    pub working_dir: Option<&'a str>,
    /// Added to the image's environment (a key here wins).
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

/// A run's Docker resources: its workspace volume. Give it back with
/// [`DockerExecutor::finish_run`].
#[derive(Debug)]
pub struct RunResources {
    run: String,
    workflow: String,
    pipeline: String,
    volume: String,
}

impl RunResources {
    /// The workspace volume's name.
    pub fn volume(&self) -> &str {
        &self.volume
    }
}

/// A running container for one task attempt. Give it back with [`DockerExecutor::stop_task`];
/// one that is dropped instead is removed by `finish_run` or the orphan sweep.
#[derive(Debug)]
pub struct TaskContainer {
    id: String,
    name: String,
}

impl TaskContainer {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The agent's connection to Docker; cheap to clone.
#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
    endpoint: String,
    agent: String,
    /// Runs between `prepare_run` and `finish_run`: the orphan sweep never touches them, even
    /// when the caller's list of live runs was taken before they started.
    live: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor").field("endpoint", &self.endpoint).field("agent", &self.agent).finish()
    }
}

impl DockerExecutor {
    /// Connects to the local engine (`DOCKER_HOST`, else `unix:///var/run/docker.sock`) and
    /// agrees on an API version with it.
    pub async fn connect(agent: &str) -> Result<Self> {
        let endpoint = std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty());
        Self::connect_to(agent, endpoint.as_deref().unwrap_or(DEFAULT_SOCKET)).await
    }

    /// Connects to the engine listening on the Unix socket `endpoint` (`unix:///path`).
    pub async fn connect_to(agent: &str, endpoint: &str) -> Result<Self> {
        let unavailable = |reason: String| ExecError::Unavailable { endpoint: endpoint.to_string(), reason };
        if !endpoint.starts_with("unix://") {
            return Err(unavailable("only unix:// endpoints are supported".into()));
        }
        let docker = Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
            .map_err(|e| unavailable(e.to_string()))?;
        // bollard speaks a newer API than many engines; without this every call to an older
        // engine would be refused.
        let docker = match tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(e)) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable(format!("no answer within {PING_TIMEOUT:?}"))),
        };
        Ok(DockerExecutor { docker, endpoint: endpoint.to_string(), agent: agent.to_string(), live: Arc::default() })
    }

    /// Whether the engine answers.
    pub async fn ping(&self) -> Result<()> {
        match tokio::time::timeout(PING_TIMEOUT, self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.unavailable(e.to_string())),
            Err(_) => Err(self.unavailable(format!("no answer within {PING_TIMEOUT:?}"))),
        }
    }

    /// Creates the run's workspace volume `xene_<agent>_<run>` (or takes the one already there).
    /// Names carry the agent so that two agents (or test processes) on one engine never share
    /// or replace each other's volumes and containers.
    pub async fn prepare_run(&self, run: &str, workflow: &str, pipeline: &str) -> Result<RunResources> {
        // Registered before the volume exists, so a concurrent sweep cannot take it.
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(run.to_string());
        let resources = RunResources {
            run: run.to_string(),
            workflow: workflow.to_string(),
            pipeline: pipeline.to_string(),
            volume: format!("xene_{}_{}", sanitize(&self.agent), sanitize(run)),
        };
        let request = VolumeCreateRequest {
            name: Some(resources.volume.clone()),
            labels: Some(self.labels(&resources)),
            ..Default::default()
        };
        if let Err(e) = self.docker.create_volume(request).await {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(run);
            return Err(self.error(format!("creating the workspace volume {} for run {run}", resources.volume), e));
        }
        tracing::debug!(run, volume = %resources.volume, "workspace volume ready");
        Ok(resources)
    }

    /// Starts the container for one task attempt: the image (pulled if absent), the run's
    /// volume at `/workspace`, the cpu and memory limits and the labels.
    ///
    /// A caller may drop this future to cancel (a pull can take minutes): a container it had
    /// already created is removed by `finish_run` or the orphan sweep.
    #[tracing::instrument(skip_all, fields(run = %run.run, task = %spec.task, attempt = spec.attempt, image = %spec.image))]
    pub async fn start_task(&self, run: &RunResources, spec: &TaskSpec) -> Result<TaskContainer> {
        self.ensure_image(&spec.image, spec.credentials.as_ref()).await?;
        let name =
            format!("xene_{}_{}_{}_{}", sanitize(&self.agent), sanitize(&run.run), sanitize(&spec.task), spec.attempt);
        let mut labels = self.labels(run);
        labels.insert(labels::TASK.into(), spec.task.clone());
        labels.insert(labels::ATTEMPT.into(), spec.attempt.to_string());
        let host_config = HostConfig {
            mounts: Some(vec![Mount {
                target: Some(WORKSPACE.into()),
                source: Some(run.volume.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            nano_cpus: spec
                .cpu
                .map(|cpu| i64::try_from(cpu.millicores().saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            memory: spec.memory.map(|memory| i64::try_from(memory.bytes()).unwrap_or(i64::MAX)),
            init: Some(true),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![KEEP_ALIVE.into()]),
            working_dir: Some(WORKSPACE.into()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = || Some(CreateContainerOptionsBuilder::default().name(&name).build());
        let created = match self.docker.create_container(options(), body.clone()).await {
            // A container of the same attempt left by an earlier life of this agent.
            Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => {
                self.remove_container(&name).await?;
                self.docker.create_container(options(), body).await
            }
            other => other,
        };
        let id = created
            .map_err(|e| {
                self.error(format!("creating the container for task {} from image {}", spec.task, spec.image), e)
            })?
            .id;
        let container = TaskContainer { id, name };
        if let Err(e) = self.docker.start_container(&container.id, None).await {
            let error =
                self.error(format!("starting the container for task {} from image {}", spec.task, spec.image), e);
            let _ = self.remove_container(&container.id).await;
            return Err(error);
        }
        if let Err(error) = self.put_xene_files(&container, spec.event.as_deref().map(Vec::as_slice)).await {
            let _ = self.remove_container(&container.id).await;
            return Err(error);
        }
        tracing::info!(container = %container.name, "task container started");
        Ok(container)
    }

    /// Puts the empty outputs file at [`OUTPUT_PATH`] in the container, and the run's webhook
    /// payload at [`EVENT_PATH`] when there is one.
    async fn put_xene_files(&self, container: &TaskContainer, event: Option<&[u8]>) -> Result<()> {
        let archive = xene_archive(event)
            .map_err(|e| ExecError::Infrastructure(format!("packing /xene for the container: {e}")))?;
        let options = bollard::query_parameters::UploadToContainerOptionsBuilder::new().path("/").build();
        self.docker
            .upload_to_container(&container.id, Some(options), bollard::body_full(bytes::Bytes::from(archive)))
            .await
            .map_err(|e| self.error(format!("copying /xene into container {}", container.name), e))
    }

    /// The outputs file of the task's container ([`OUTPUT_PATH`]), read through the engine:
    /// at most `limit + 1` bytes of it (more is seen as too much), empty when a step removed
    /// it. The inner `Err` is the step's doing (it put something other than a file there);
    /// the outer one the engine's.
    pub async fn read_output(
        &self,
        container: &TaskContainer,
        limit: usize,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new().path(OUTPUT_PATH).build();
        let mut stream = self.docker.download_from_container(&container.id, Some(options));
        // A tar archive of one file: its header and padding beside at most `limit` bytes.
        let mut archive = Vec::new();
        while let Some(part) = stream.next().await {
            match part {
                Ok(part) => archive.extend_from_slice(&part),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                    return Ok(Ok(Vec::new()));
                }
                Err(e) => return Err(self.error(format!("reading {OUTPUT_PATH} of container {}", container.name), e)),
            }
            if archive.len() > limit + 64 * 1024 {
                break;
            }
        }
        output_from_archive(&archive, limit).map_err(|e| {
            ExecError::Infrastructure(format!("unpacking {OUTPUT_PATH} of container {}: {e}", container.name))
        })
    }

    /// Runs one step in the task's container, sending every line of its output to `sink`
    /// (stamped with the time its frame was read).
    pub async fn exec_step(
        &self,
        container: &TaskContainer,
        step: &StepCommand<'_>,
        cancel: &CancellationToken,
        sink: &mut impl StepOutput,
    ) -> StepEnd {
        if cancel.is_cancelled() {
            return StepEnd::Cancelled;
        }
        let env: Vec<String> = step.env.iter().map(|(key, value)| format!("{key}={value}")).collect();
        let dir = match step.working_dir {
            Some(dir) if dir.starts_with('/') => dir.to_string(),
            Some(dir) => format!("{WORKSPACE}/{dir}"),
            None => WORKSPACE.to_string(),
        };
        let options = CreateExecOptions::<String> {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            attach_stdin: Some(false),
            tty: Some(false),
            env: Some(env),
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                STEP_WRAPPER.into(),
                "xene-step".into(),
                step.script.into(),
                dir,
            ]),
            ..Default::default()
        };
        let exec = match self.docker.create_exec(&container.id, options).await {
            Ok(exec) => exec.id,
            Err(e) => {
                sink.note(&format!("could not start the step in container {}: {e}", container.name));
                return StepEnd::NotStarted;
            }
        };
        let start = StartExecOptions { detach: false, tty: false, output_capacity: None };
        // The input half is held until the end: dropping it could close the connection early.
        let (mut output, _input) = match self.docker.start_exec(&exec, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => (output, input),
            Ok(StartExecResults::Detached) => {
                sink.note(&format!("the step in container {} started detached", container.name));
                return StepEnd::NotStarted;
            }
            Err(e) => {
                sink.note(&format!("could not start the step in container {}: {e}", container.name));
                return StepEnd::NotStarted;
            }
        };

        let mut stdout = LineBuffer::for_sink(sink);
        let mut stderr = LineBuffer::for_sink(sink);
        let mut pid: Option<u32> = None;
        let mut marker_pending = true;
        let mut ended: Option<StepEnd> = None;
        let mut term_pending = false;
        let mut kill_at: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        let deadline = step.timeout.map(|t| Instant::now() + t);
        // The step ends when its shell does (as with the process executor), not when its output
        // closes; what it left in the background runs on until the task's container goes.
        let mut probe_at = Some(Instant::now() + EXIT_PROBE);
        let mut exited: Option<i32> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            tokio::select! {
                frame = output.next() => match frame {
                    Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                        let ts = now_ms();
                        stdout.push_to(&message, "stdout", ts, sink);
                    }
                    Some(Ok(LogOutput::StdErr { message })) => {
                        let ts = now_ms();
                        stderr.push(&message, |text| {
                            if std::mem::take(&mut marker_pending) {
                                if let Some(number) = text.strip_prefix(PID_MARKER) {
                                    pid = number.trim().parse().ok();
                                    return;
                                }
                            }
                            sink.line("stderr", text, ts);
                        })
                    }
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        sink.note(&format!("reading the step's output failed: {e}"));
                        break;
                    }
                    None => break,
                },
                _ = until_due(sink.due()) => sink.flush(),
                _ = sleep_until(deadline), if ended.is_none() => {
                    ended = Some(StepEnd::TimedOut);
                    term_pending = true;
                    kill_at = Some(Instant::now() + GRACE);
                }
                _ = cancel.cancelled(), if ended.is_none() => {
                    ended = Some(StepEnd::Cancelled);
                    term_pending = true;
                    kill_at = Some(Instant::now() + GRACE);
                }
                _ = sleep_until(kill_at), if give_up_at.is_none() => {
                    match pid {
                        Some(pid) => self.signal(container, pid, "KILL").await,
                        None => tracing::warn!(container = %container.name, "the step never reported its PID; it cannot be killed"),
                    }
                    give_up_at = Some(Instant::now() + AFTER_KILL);
                }
                _ = sleep_until(give_up_at) => {
                    sink.note(&format!("the step's output was still open {AFTER_KILL:?} after SIGKILL; no longer reading it"));
                    break;
                }
                _ = sleep_until(probe_at), if ended.is_none() => {
                    probe_at = None;
                    match self.docker.inspect_exec(&exec).await {
                        Ok(inspect) if inspect.running == Some(false) => {
                            exited = inspect.exit_code.map(|code| i32::try_from(code).unwrap_or(-1));
                            drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                        }
                        _ => probe_at = Some(Instant::now() + EXIT_PROBE),
                    }
                }
                _ = sleep_until(drain_until), if ended.is_none() => break,
            }
            // The PID may arrive after the timeout fired: signal as soon as it is known.
            if term_pending {
                if let Some(pid) = pid {
                    term_pending = false;
                    self.signal(container, pid, "TERM").await;
                }
            }
        }
        let ts = now_ms();
        stdout.finish(|text| sink.line("stdout", text, ts));
        stderr.finish(|text| sink.line("stderr", text, ts));
        if let Some(end) = ended {
            return end;
        }
        if let Some(code) = exited {
            return StepEnd::Exited(code);
        }
        match self.exit_code(&exec).await {
            Ok(code) => StepEnd::Exited(code),
            Err(e) => {
                sink.note(&format!("could not read the step's exit code in container {}: {e}", container.name));
                StepEnd::NotStarted
            }
        }
    }

    /// Removes a task attempt's container, and whatever is still running in it.
    pub async fn stop_task(&self, container: TaskContainer) -> Result<()> {
        self.remove_container(&container.id).await?;
        tracing::info!(container = %container.name, "task container removed");
        Ok(())
    }

    /// Removes what is left of a run: its containers, then its workspace volume.
    pub async fn finish_run(&self, run: RunResources) -> Result<()> {
        let result = self.remove_run(&run).await;
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.run);
        result
    }

    /// Removes this agent's containers and volumes of every run that is neither in
    /// `keep_runs` nor between `prepare_run` and `finish_run`, and returns how many it removed.
    /// Containers and volumes of other agents are left alone.
    pub async fn remove_orphans(&self, keep_runs: &BTreeSet<String>) -> Result<usize> {
        let keep = |labels: Option<&HashMap<String, String>>| {
            let run = labels.and_then(|l| l.get(labels::RUN));
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            run.is_some_and(|run| keep_runs.contains(run) || live.contains(run))
        };
        let filters = self.filters(None);
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("listing this agent's containers".into(), e))?;
        let mut removed = 0;
        for container in containers {
            let Some(id) = container.id.as_deref() else { continue };
            if keep(container.labels.as_ref()) {
                continue;
            }
            match self.remove_container(id).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(container = id, error = %e, "removing an orphaned container"),
            }
        }
        let options = ListVolumesOptionsBuilder::default().filters(&filters).build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.error("listing this agent's volumes".into(), e))?;
        for volume in volumes.volumes.unwrap_or_default() {
            if keep(Some(&volume.labels)) {
                continue;
            }
            match self.remove_volume(&volume.name).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(volume = %volume.name, error = %e, "removing an orphaned volume"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed orphaned containers and volumes");
        }
        Ok(removed)
    }

    async fn ensure_image(&self, image: &str, credentials: Option<&RegistryCredentials>) -> Result<()> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(self.error(format!("looking up image {image}"), e)),
        }
        tracing::info!(image, "pulling the image");
        let (from_image, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(from_image);
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let credentials = credentials.map(|c| bollard::auth::DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: c.server.clone(),
            ..Default::default()
        });
        let mut progress = self.docker.create_image(Some(options.build()), None, credentials);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(match e {
                    e if is_unavailable(&e) => self.unavailable(e.to_string()),
                    e => ExecError::Infrastructure(format!("image {image} not present and pull failed: {e}")),
                });
            }
        }
        // Some engines end a failed pull without an error message; make sure it is there.
        self.docker.inspect_image(image).await.map_err(|e| {
            ExecError::Infrastructure(format!(
                "image {image} not present and pull failed: the image is still missing ({e})"
            ))
        })?;
        Ok(())
    }

    /// Sends `signal` to the step's process group from another exec in the same container.
    async fn signal(&self, container: &TaskContainer, pid: u32, signal: &str) {
        let script = format!("kill -{signal} -{pid} 2>/dev/null || kill -{signal} {pid} 2>/dev/null; true");
        let options = CreateExecOptions::<String> {
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            ..Default::default()
        };
        let started = match self.docker.create_exec(&container.id, options).await {
            Ok(exec) => {
                let detach = StartExecOptions { detach: true, tty: false, output_capacity: None };
                self.docker.start_exec(&exec.id, Some(detach)).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => tracing::debug!(container = %container.name, pid, signal, "signalled the step"),
            Err(e) => tracing::warn!(container = %container.name, pid, signal, error = %e, "could not signal the step"),
        }
    }

    /// The exit code of a finished exec. The output can end a moment before Docker records the
    /// exit, so this waits for it briefly.
    async fn exit_code(&self, exec: &str) -> Result<i32, DockerError> {
        let mut waited = Duration::ZERO;
        loop {
            let inspect = self.docker.inspect_exec(exec).await?;
            if inspect.running != Some(true) || waited >= Duration::from_secs(5) {
                let code = inspect.exit_code.unwrap_or(-1);
                return Ok(i32::try_from(code).unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
    }

    async fn remove_run(&self, run: &RunResources) -> Result<()> {
        let filters = self.filters(Some(&run.run));
        let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(format!("listing the containers of run {}", run.run), e))?;
        for id in containers.iter().filter_map(|c| c.id.as_deref()) {
            self.remove_container(id).await?;
        }
        self.remove_volume(&run.volume).await?;
        tracing::debug!(run = %run.run, volume = %run.volume, "run resources removed");
        Ok(())
    }

    /// Force-removes a container and its anonymous volumes; one already gone is fine.
    async fn remove_container(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(self.error(format!("removing container {id}"), e)),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<()> {
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(name, Some(options)).await {
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(self.error(format!("removing volume {name}"), e)),
        }
    }

    fn labels(&self, run: &RunResources) -> HashMap<String, String> {
        HashMap::from([
            (labels::AGENT.to_string(), self.agent.clone()),
            (labels::WORKFLOW.to_string(), run.workflow.clone()),
            (labels::PIPELINE.to_string(), run.pipeline.clone()),
            (labels::RUN.to_string(), run.run.clone()),
        ])
    }

    /// A label filter for this agent's objects, of one run when given.
    fn filters(&self, run: Option<&str>) -> HashMap<&'static str, Vec<String>> {
        let mut wanted = vec![format!("{}={}", labels::AGENT, self.agent)];
        if let Some(run) = run {
            wanted.push(format!("{}={run}", labels::RUN));
        }
        HashMap::from([("label", wanted)])
    }

    fn unavailable(&self, reason: String) -> ExecError {
        ExecError::Unavailable { endpoint: self.endpoint.clone(), reason }
    }

    /// Classifies a bollard error: the engine not answering, or refusing what `doing` asked.
    fn error(&self, doing: String, e: DockerError) -> ExecError {
        if is_unavailable(&e) {
            self.unavailable(format!("{doing}: {e}"))
        } else {
            ExecError::Infrastructure(format!("{doing}: {e}"))
        }
    }
}

/// The outputs file from the engine's tar archive of [`OUTPUT_PATH`] (at most `limit + 1`
/// bytes); the inner `Err` when a step put a directory, a link or another non-file there.
fn output_from_archive(archive: &[u8], limit: usize) -> std::io::Result<std::result::Result<Vec<u8>, String>> {
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries()?;
    let Some(entry) = entries.next() else { return Ok(Ok(Vec::new())) };
    let entry = entry?;
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        return Ok(Err(format!(
            "$XENE_OUTPUT ({OUTPUT_PATH}): a step replaced it with something other than a file ({kind:?}); append to the file instead"
        )));
    }
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(entry, limit as u64 + 1), &mut text)?;
    Ok(Ok(text))
}

/// A tar archive of `/xene` for the engine to unpack at `/`: the empty outputs file
/// ([`OUTPUT_PATH`], writable by any user, since an image may run its steps as one) and the
/// webhook payload ([`EVENT_PATH`]) when there is one.
fn xene_archive(event: Option<&[u8]>) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    let output = OUTPUT_PATH.trim_start_matches('/');
    builder.append_data(&mut dir, output.rsplit_once('/').map_or("", |(d, _)| d), std::io::empty())?;
    let mut file = |mode: u32, path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append_data(&mut header, path, data)
    };
    file(0o666, output, &[])?;
    if let Some(event) = event {
        file(0o644, EVENT_PATH.trim_start_matches('/'), event)?;
    }
    builder.into_inner()
}

/// Errors that mean the engine did not answer at all, rather than answered with a refusal.
fn is_unavailable(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HttpClientError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::RequestTimeoutError
            | DockerError::SocketNotFoundError(_)
    )
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A name part for Docker, which allows `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: Xene's names and run IDs
/// already fit; anything else becomes `-`, and so does `_`, which separates the parts.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '-' }).collect()
}

/// Splits an image reference into the name and tag to pull: the engine pulls every tag of a
/// name given without one, so `busybox` means `busybox:latest`. A digest stays in the name.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(colon) => (&image[..last + colon], Some(&image[last + colon + 1..])),
        None => (image, Some("latest")),
    }
}

/// The registry an image reference names, as `docker login` would be given it: the part
/// before the first `/` when Docker reads it as a host (it has a `.` or a `:`, is `localhost`,
/// or has an uppercase letter, which a repository name cannot); `None` for Docker Hub
/// (`busybox`, `library/busybox`, `xene/busybox`).
pub fn registry_of(image: &str) -> Option<String> {
    let (first, _) = image.split_once('/')?;
    let host = first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase());
    host.then(|| first.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_named_by_a_host_before_the_first_slash() {
        assert_eq!(registry_of("busybox"), None);
        assert_eq!(registry_of("xene/busybox:1"), None);
        assert_eq!(registry_of("registry.example.com/ci/rust:1"), Some("registry.example.com".into()));
        assert_eq!(registry_of("localhost:5000/a@sha256:00"), Some("localhost:5000".into()));
        assert_eq!(registry_of("localhost/a"), Some("localhost".into()));
        assert_eq!(registry_of("[::1]:5000/a"), Some("[::1]:5000".into()));
        assert_eq!(registry_of("Registry/a"), Some("Registry".into()));
    }

    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").expect("link name");
            }
            header.set_cksum();
            builder.append_data(&mut header, path, *data).expect("append");
        }
        builder.into_inner().expect("archive")
    }

    #[test]
    fn the_outputs_file_is_read_from_the_engines_archive_and_only_a_file_counts() {
        let file = archive(&[("output", tar::EntryType::Regular, b"a=1\n")]);
        assert_eq!(output_from_archive(&file, 64).expect("archive"), Ok(b"a=1\n".to_vec()));
        let large = archive(&[("output", tar::EntryType::Regular, &[b'x'; 100])]);
        assert_eq!(output_from_archive(&large, 10).expect("archive").map(|t| t.len()), Ok(11), "limit + 1 bytes");
        assert_eq!(output_from_archive(&archive(&[]), 64).expect("archive"), Ok(Vec::new()));
        for kind in [tar::EntryType::Directory, tar::EntryType::Symlink] {
            let message =
                output_from_archive(&archive(&[("output", kind, b"")]), 64).expect("archive").expect_err("not a file");
            assert!(
                message.contains("something other than a file") && message.contains("append to the file"),
                "{message}"
            );
        }
    }

    #[test]
    fn references_get_a_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", Some("latest")));
        assert_eq!(split_reference("xene/busybox:1"), ("xene/busybox", Some("1")));
        assert_eq!(split_reference("localhost:5000/a/b"), ("localhost:5000/a/b", Some("latest")));
        assert_eq!(split_reference("localhost:5000/a:2"), ("localhost:5000/a", Some("2")));
        assert_eq!(split_reference("a@sha256:00"), ("a@sha256:00", None));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("hello.build.20240101abc"), "hello.build.20240101abc");
        assert_eq!(sanitize("a b/c_d"), "a-b-c-d");
    }
}
