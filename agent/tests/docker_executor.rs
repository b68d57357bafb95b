//! The container executor against a real Docker engine (DESIGN §9.3, §9.6), with the local
//! image `xene/busybox:latest` that `scripts/busybox-image.sh` builds: nothing is pulled.
//!
//! Docker is required: when the engine is unreachable these tests fail and say so, rather than
//! pass without having run. Each test uses its own agent name, so tests running at once never
//! sweep each other's containers, and checks that it leaves no container or volume behind.

// The agent is a binary crate; its executor modules are compiled into this test directly.
#[allow(dead_code)]
#[path = "../src/docker.rs"]
mod docker;
#[path = "../src/lines.rs"]
mod lines;
#[allow(dead_code)]
#[path = "../src/process.rs"]
mod process;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use bollard::Docker;
use tokio_util::sync::CancellationToken;

use docker::{DockerExecutor, ExecError, RunResources, StepCommand, StepEnd, TaskContainer, TaskSpec};

const IMAGE: &str = "xene/busybox:latest";
/// Slack for Docker's own latency on a busy two-core machine.
const SLACK: Duration = Duration::from_secs(3);

/// Builds the test image once per test process.
fn build_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .arg(IMAGE)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): {}",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    });
    if let Err(e) = built {
        panic!("these tests need Docker and the image {IMAGE}: {e}");
    }
}

/// Removes everything of one test agent when the test ends, even when it panicked.
struct Sweep {
    agent: String,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let agent = self.agent.clone();
        // A fresh executor, whose list of live runs is empty, removes everything of the agent.
        let swept = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let executor = DockerExecutor::connect(&agent).await.ok()?;
                executor.remove_orphans(&BTreeSet::new()).await.ok()
            })
        })
        .join();
        if !matches!(swept, Ok(Some(_))) {
            eprintln!("could not sweep the containers and volumes of agent {}", self.agent);
        }
    }
}

/// An executor for one test, with its own agent name.
async fn executor(test: &str) -> (DockerExecutor, Sweep) {
    build_image();
    let agent = format!("test-{}-{test}", std::process::id());
    let executor = match DockerExecutor::connect(&agent).await {
        Ok(executor) => executor,
        Err(e) => panic!("these tests need a reachable Docker engine: {e}"),
    };
    if let Err(e) = executor.ping().await {
        panic!("these tests need a reachable Docker engine: {e}");
    }
    (executor, Sweep { agent })
}

async fn docker() -> Docker {
    let docker = Docker::connect_with_local_defaults().expect("invariant: the executor connected already");
    docker.negotiate_version().await.expect("the Docker engine answers")
}

/// Counts the containers and volumes labelled with `agent` (and `run`, when given).
async fn count(agent: &str, run: Option<&str>) -> (usize, usize) {
    let docker = docker().await;
    let mut wanted = vec![format!("xene.agent={agent}")];
    if let Some(run) = run {
        wanted.push(format!("xene.run={run}"));
    }
    let filters = HashMap::from([("label", wanted)]);
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .expect("listing containers");
    let volumes = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
        .await
        .expect("listing volumes");
    (containers.len(), volumes.volumes.unwrap_or_default().len())
}

fn spec(task: &str, attempt: u32) -> TaskSpec {
    TaskSpec {
        task: task.into(),
        attempt,
        image: IMAGE.into(),
        cpu: None,
        memory: None,
        credentials: None,
        event: None,
    }
}

/// What a step printed and how it ended.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    xene: Vec<String>,
}

async fn run_step(
    executor: &DockerExecutor,
    container: &TaskContainer,
    script: &str,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> (StepEnd, Output, Duration) {
    let env = BTreeMap::new();
    let step = StepCommand { script, working_dir: None, env: &env, timeout };
    run_command(executor, container, &step, cancel).await
}

async fn run_command(
    executor: &DockerExecutor,
    container: &TaskContainer,
    step: &StepCommand<'_>,
    cancel: &CancellationToken,
) -> (StepEnd, Output, Duration) {
    let mut output = Output::default();
    let started = Instant::now();
    let mut sink = |stream: &'static str, text: &str, _ts_ms: u64| match stream {
        "stdout" => output.stdout.push(text.to_string()),
        "stderr" => output.stderr.push(text.to_string()),
        _ => output.xene.push(text.to_string()),
    };
    let end = executor.exec_step(container, step, cancel, &mut sink).await;
    (end, output, started.elapsed())
}

async fn finish(executor: &DockerExecutor, agent_run: RunResources, container: Option<TaskContainer>) {
    if let Some(container) = container {
        executor.stop_task(container).await.expect("removing the task container");
    }
    executor.finish_run(agent_run).await.expect("removing the run's volume");
}

#[tokio::test]
async fn an_unreachable_engine_is_unavailable_with_a_clear_message() {
    let endpoint = "unix:///nonexistent/xene-test/docker.sock";
    match DockerExecutor::connect_to("test-unreachable", endpoint).await {
        Err(e @ ExecError::Unavailable { .. }) => {
            let message = e.to_string();
            assert!(message.starts_with(&format!("Docker is not reachable at {endpoint}: ")), "{message}");
            assert!(message.ends_with("is dockerd running, and may this user use its socket?"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_step_reports_its_lines_and_exit_code() {
    let (executor, sweep) = executor("lines").await;
    let run = executor.prepare_run("wf.build.lines", "wf", "build").await.expect("prepare_run");
    let container = executor.start_task(&run, &spec("compile", 0)).await.expect("start_task");
    let cancel = CancellationToken::new();

    // Partial lines are held until complete; the last one without a newline still comes.
    let script =
        "echo one; printf 'two-'; sleep 0.2; echo parts; echo oops >&2; printf 'tail\\r\\n'; printf last; exit 3";
    let (end, output, _) = run_step(&executor, &container, script, None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(3), "{output:?}");
    assert_eq!(output.stdout, ["one", "two-parts", "tail", "last"]);
    assert_eq!(output.stderr, ["oops"], "the executor's PID line must not reach the log");
    assert!(output.xene.is_empty(), "{output:?}");

    // The environment and the working directory (created when missing) reach the step.
    let env = BTreeMap::from([("GREETING".to_string(), "hello from xene".to_string())]);
    let step = StepCommand {
        script: "echo \"$GREETING\"; pwd; echo \"$PATH\"",
        working_dir: Some("/workspace/sub/dir"),
        env: &env,
        timeout: None,
    };
    let (end, output, _) = run_command(&executor, &container, &step, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0), "{output:?}");
    assert_eq!(output.stdout[..2], ["hello from xene", "/workspace/sub/dir"]);
    assert!(output.stdout[2].contains("/bin"), "the image's PATH is kept: {output:?}");

    // Many lines: every one, once, in order.
    let (end, output, _) = run_step(&executor, &container, "seq 1 100000", None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0));
    assert_eq!(output.stdout.len(), 100_000);
    assert!(output.stdout.iter().enumerate().all(|(i, line)| *line == (i + 1).to_string()));

    finish(&executor, run, Some(container)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

/// A step ends when its shell exits, even while something it left in the background holds
/// its output open; what it left runs on for the task's later steps.
#[tokio::test]
async fn a_step_ends_with_its_shell_while_a_background_process_holds_its_output() {
    let (executor, sweep) = executor("background").await;
    let run = executor.prepare_run("wf.build.background", "wf", "build").await.expect("prepare_run");
    let container = executor.start_task(&run, &spec("serve", 0)).await.expect("start_task");
    let cancel = CancellationToken::new();
    let script = "(while echo tick; do sleep 0.1; done) & echo $! > /tmp/ticker; echo started";
    let (end, output, took) = run_step(&executor, &container, script, None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0), "{output:?}");
    assert!(output.stdout.iter().any(|line| line == "started"), "{output:?}");
    assert!(took < Duration::from_secs(5), "the step took {took:?}: it waited for its background process");
    let (end, output, _) =
        run_step(&executor, &container, "kill -0 $(cat /tmp/ticker) && echo alive", None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0), "{output:?}");
    assert_eq!(output.stdout, ["alive"], "the background process runs on for later steps");
    finish(&executor, run, Some(container)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn steps_share_their_container_and_tasks_share_the_run_volume() {
    let (executor, sweep) = executor("share").await;
    let run = executor.prepare_run("wf.build.share", "wf", "build").await.expect("prepare_run");
    let cancel = CancellationToken::new();

    let first = executor.start_task(&run, &spec("produce", 0)).await.expect("start_task");
    let (end, _, _) = run_step(&executor, &first, "echo scratch > /tmp/note", None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0));
    let (end, output, _) =
        run_step(&executor, &first, "cat /tmp/note && echo artifact > /workspace/out.txt", None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0), "{output:?}");
    assert_eq!(output.stdout, ["scratch"], "steps of one task share /tmp");
    executor.stop_task(first).await.expect("stop_task");

    let second = executor.start_task(&run, &spec("consume", 0)).await.expect("start_task");
    let (end, output, _) =
        run_step(&executor, &second, "cat /workspace/out.txt; test ! -e /tmp/note", None, &cancel).await;
    assert_eq!(end, StepEnd::Exited(0), "{output:?}");
    assert_eq!(output.stdout, ["artifact"], "tasks of one run share /workspace");

    finish(&executor, run, Some(second)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn a_missing_image_that_cannot_be_pulled_is_an_infrastructure_error() {
    let (executor, sweep) = executor("missing").await;
    let run = executor.prepare_run("wf.build.missing", "wf", "build").await.expect("prepare_run");
    let started = Instant::now();
    let mut missing = spec("compile", 0);
    missing.image = "xene/does-not-exist:1".into();
    match executor.start_task(&run, &missing).await {
        Err(ExecError::Infrastructure(message)) => {
            assert!(
                message.starts_with("image xene/does-not-exist:1 not present and pull failed: "),
                "unclear message: {message}"
            );
        }
        other => panic!("expected an infrastructure error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    finish(&executor, run, None).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn a_step_over_its_timeout_is_stopped() {
    let (executor, sweep) = executor("timeout").await;
    let run = executor.prepare_run("wf.build.timeout", "wf", "build").await.expect("prepare_run");
    let container = executor.start_task(&run, &spec("slow", 0)).await.expect("start_task");
    let cancel = CancellationToken::new();
    let timeout = Duration::from_secs(1);

    // A step that handles SIGTERM stops at once.
    let script = "trap 'echo got TERM; exit 143' TERM; echo started; while true; do sleep 0.1; done";
    let (end, output, took) = run_step(&executor, &container, script, Some(timeout), &cancel).await;
    assert_eq!(end, StepEnd::TimedOut, "{output:?}");
    assert_eq!(output.stdout, ["started", "got TERM"], "{output:?}");
    assert!(took < timeout + SLACK, "took {took:?}");

    // A step that ignores SIGTERM is killed after the grace period, children included.
    let script = "trap '' TERM; echo started; while true; do sleep 0.1; done";
    let (end, output, took) = run_step(&executor, &container, script, Some(timeout), &cancel).await;
    assert_eq!(end, StepEnd::TimedOut, "{output:?}");
    assert!(took >= timeout + process::GRACE - Duration::from_millis(500), "killed before the grace period: {took:?}");
    assert!(took < timeout + process::GRACE + SLACK, "took {took:?}");
    let (_, output, _) = run_step(&executor, &container, "ps", None, &cancel).await;
    assert!(!output.stdout.iter().any(|l| l.contains("sleep 0.1")), "a process survived: {output:?}");

    finish(&executor, run, Some(container)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn cancelling_stops_a_step_with_sigterm() {
    let (executor, sweep) = executor("cancel").await;
    let run = executor.prepare_run("wf.build.cancel", "wf", "build").await.expect("prepare_run");
    let container = executor.start_task(&run, &spec("long", 0)).await.expect("start_task");
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let cancel_after = Duration::from_millis(700);
    let timer = tokio::spawn(async move {
        tokio::time::sleep(cancel_after).await;
        canceller.cancel();
    });

    let script = "trap 'echo got TERM; exit 143' TERM; while true; do sleep 0.1; done";
    let (end, output, took) = run_step(&executor, &container, script, None, &cancel).await;
    timer.await.expect("the cancel timer ends");
    assert_eq!(end, StepEnd::Cancelled, "{output:?}");
    assert_eq!(output.stdout, ["got TERM"], "the step's TERM trap ran: {output:?}");
    assert!(took < cancel_after + SLACK, "took {took:?}");

    finish(&executor, run, Some(container)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn limits_and_labels_are_applied() {
    let (executor, sweep) = executor("limits").await;
    let run = executor.prepare_run("wf.build.limits", "wf", "build").await.expect("prepare_run");
    let mut limited = spec("heavy", 2);
    limited.cpu = Some("500m".parse().expect("a cpu"));
    limited.memory = Some("64Mi".parse().expect("a memory"));
    let container = executor.start_task(&run, &limited).await.expect("start_task");

    let docker = docker().await;
    let inspect = docker.inspect_container(container.id(), None).await.expect("inspect_container");
    let host = inspect.host_config.expect("a host config");
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    let labels = inspect.config.and_then(|c| c.labels).expect("labels");
    for (key, value) in [
        ("xene.agent", sweep.agent.as_str()),
        ("xene.workflow", "wf"),
        ("xene.pipeline", "build"),
        ("xene.run", "wf.build.limits"),
        ("xene.task", "heavy"),
        ("xene.attempt", "2"),
    ] {
        assert_eq!(labels.get(key).map(String::as_str), Some(value), "label {key}");
    }
    let volume = docker.inspect_volume(run.volume()).await.expect("inspect_volume");
    assert_eq!(volume.labels.get("xene.run").map(String::as_str), Some("wf.build.limits"));
    assert_eq!(volume.labels.get("xene.agent"), Some(&sweep.agent));

    // The limit holds inside the container too (cgroup v1 or v2).
    let cancel = CancellationToken::new();
    let script = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
    let (_, output, _) = run_step(&executor, &container, script, None, &cancel).await;
    assert_eq!(output.stdout, [(64 * 1024 * 1024).to_string()]);

    finish(&executor, run, Some(container)).await;
    assert_eq!(count(&sweep.agent, None).await, (0, 0), "nothing is left behind");
}

#[tokio::test]
async fn orphans_of_this_agent_are_removed_and_others_kept() {
    let (mine, my_sweep) = executor("orphans-mine").await;
    let (theirs, their_sweep) = executor("orphans-theirs").await;

    // Before a restart: two runs of this agent and one of another agent on the same engine.
    let kept = mine.prepare_run("wf.build.kept", "wf", "build").await.expect("prepare_run");
    let dead = mine.prepare_run("wf.build.dead", "wf", "build").await.expect("prepare_run");
    let other = theirs.prepare_run("wf.build.other", "wf", "build").await.expect("prepare_run");
    let kept_task = mine.start_task(&kept, &spec("a", 0)).await.expect("start_task");
    let _dead_task = mine.start_task(&dead, &spec("a", 0)).await.expect("start_task");
    let other_task = theirs.start_task(&other, &spec("a", 0)).await.expect("start_task");

    // The executor never sweeps runs it is running, whatever the caller's list says.
    assert_eq!(mine.remove_orphans(&BTreeSet::new()).await.expect("remove_orphans"), 0);

    // After a restart, only what the new life knows to keep is kept.
    let restarted = DockerExecutor::connect(&my_sweep.agent).await.expect("connect");
    let keep = BTreeSet::from(["wf.build.kept".to_string()]);
    let removed = restarted.remove_orphans(&keep).await.expect("remove_orphans");
    assert_eq!(removed, 2, "the dead run's container and volume");
    assert_eq!(count(&my_sweep.agent, Some("wf.build.dead")).await, (0, 0));
    assert_eq!(count(&my_sweep.agent, Some("wf.build.kept")).await, (1, 1));
    assert_eq!(count(&their_sweep.agent, None).await, (1, 1), "another agent's run is not touched");

    // finish_run removes a run's containers too, and is fine with what is already gone.
    mine.finish_run(kept).await.expect("finish_run");
    drop(kept_task);
    mine.finish_run(dead).await.expect("finish_run of a swept run");
    finish(&theirs, other, Some(other_task)).await;
    assert_eq!(count(&my_sweep.agent, None).await, (0, 0), "nothing is left behind");
    assert_eq!(count(&their_sweep.agent, None).await, (0, 0), "nothing is left behind");
}
