//! Runs end to end with real processes (issue "Runs"; DESIGN §8.1, §9): the DAG runner and
//! the process executor, failure rules, retries, timeouts, cancellation, logs, the REST
//! trigger, and fencing of an agent whose lease epoch is stale (§7.5).

use std::process::Command;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use xene_chaos_tests::agent_proc::{unique_agent_name, AgentProc};
use xene_chaos_tests::harness::{bin_dir, ClusterOptions, TestCluster};
use xene_chaos_tests::images::busybox_image;
use xene_chaos_tests::registry::FakeRegistry;
use xene_model::status::{ErrorReason, RunPhase, StepStatus};
use xene_model::{LogChunk, LogLine, RunObject};
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;

const WORKFLOW: &str = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata: {name: demo}
spec:
  pipelines:
    dag:
      executor: {type: container, image: "xene/busybox:latest"}
      env: {GREETING: hello}
      tasks:
        prepare:
          steps:
            - {name: write, run: 'echo "$GREETING from $XENE_TASK/$XENE_STEP of $XENE_RUN_ID" && seq 1 5 > numbers'}
        left:
          dependencies: [prepare]
          steps:
            - {name: sum, run: 'awk "{s+=\$1} END {print s}" numbers > left'}
        right:
          dependencies: [prepare]
          steps:
            - {name: count, run: 'wc -l < numbers | tr -d " " > right; echo "to stderr" >&2'}
        join:
          dependencies: [left, right]
          steps:
            - {name: total, run: 'echo "total $(cat left) lines $(cat right) param $WHO"'}
    failing:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        first:
          steps:
            - {name: ok, run: 'true'}
            - {name: boom, run: 'echo about to fail; exit 3'}
            - {name: never, run: 'echo never'}
        after:
          dependencies: [first]
          steps:
            - {name: skipped, run: 'true'}
        independent:
          steps:
            - {name: fine, run: 'sleep 0.5; echo independent ran'}
        report:
          dependencies: [first]
          when: on_failure
          steps:
            - {name: notify, run: 'echo first failed'}
        cleanup:
          dependencies: [after]
          when: always
          steps:
            - {name: tidy, run: 'true'}
        celebrate:
          dependencies: [independent]
          when: on_failure
          steps:
            - {name: cheer, run: 'true'}
    flaky:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        retried:
          retries: {limit: 2, backoff: 100ms}
          steps:
            - {name: try, run: 'f=$XENE_WORKSPACE/attempts; n=$(cat $f 2>/dev/null || echo 0); echo $((n+1)) > $f; echo "attempt_$n=yes" >> "$XENE_OUTPUT"; [ $n -ge 2 ]'}
    slow:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        sleepy:
          steps:
            - {name: nap, run: 'sleep 30', timeout: 1s}
    context:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        one:
          steps:
            - {name: write, run: 'echo kept > /tmp/xene-context-$XENE_RUN_ID && echo shared > $XENE_WORKSPACE/shared'}
            - {name: read, run: 'cat /tmp/xene-context-$XENE_RUN_ID'}
        two:
          dependencies: [one]
          steps:
            - {name: read, run: 'cat $XENE_WORKSPACE/shared'}
    chatty:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        talk:
          steps:
            - {name: lines, run: 'seq 1 100000'}
            - {name: wide, run: 'head -c 1200000 /dev/zero | tr "\\0" x; echo'}
    noimage:
      executor: {type: container, image: "xene/does-not-exist:1"}
      tasks:
        only:
          steps:
            - {name: never, run: 'true'}
    secretive:
      tasks:
        use:
          env: {TOKEN: {secretRef: api-token}}
          steps:
            - {name: check, run: '[ "$TOKEN" = "s3cret-value" ] && echo "token is $TOKEN" && echo "leak=$TOKEN!" >> "$XENE_OUTPUT"'}
        missing:
          dependencies: [use]
          steps:
            - {name: nope, run: 'true', env: {X: {secretRef: not-there}}}
    outputs:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        produce:
          steps:
            - {name: first, run: 'echo "coverage=87" >> "$XENE_OUTPUT"; echo "note=a=b c" >> "$XENE_OUTPUT"'}
            - {name: second, run: 'echo "report=out.html" >> "$XENE_OUTPUT"; echo "coverage=91" >> "$XENE_OUTPUT"'}
        consume:
          dependencies: [produce]
          steps:
            - {name: read, run: 'echo "got $XENE_INPUT_PRODUCE_COVERAGE $XENE_INPUT_PRODUCE_REPORT [$XENE_INPUT_PRODUCE_NOTE]"'}
        malformed:
          steps:
            - {name: write, run: 'echo "no pair here" >> "$XENE_OUTPUT"'}
            - {name: never, run: 'true'}
        gate-open:
          dependencies: [produce]
          when: "{{ tasks.produce.outputs.coverage }} > 90 && {{ tasks.produce.outputs.report }} == 'out.html'"
          steps:
            - {name: go, run: 'echo "gate open at $XENE_INPUT_PRODUCE_COVERAGE"'}
        gate-shut:
          dependencies: [produce]
          when: "{{ tasks.produce.outputs.coverage }} > 95"
          steps:
            - {name: go, run: 'echo never'}
        after-shut:
          dependencies: [gate-shut]
          steps:
            - {name: go, run: 'true'}
        gate-broken:
          dependencies: [produce]
          when: "{{ tasks.produce.outputs.report }} > 1"
          steps:
            - {name: go, run: 'echo never'}
    long:
      executor: {type: container, image: "xene/busybox:latest"}
      tasks:
        forever:
          steps:
            - {name: wait, run: 'echo "pid $$"; trap "echo got TERM; exit 143" TERM; while true; do sleep 0.1; done'}
"#;

/// The agents' TTL in these tests (`XENE_AGENT_TTL_MS`). A new leader also waits one TTL for
/// agents to open their sessions before it counts a missing one (the scheduler's grace).
const AGENT_TTL: Duration = Duration::from_secs(2);

async fn setup() -> (TestCluster, AgentProc) {
    setup_with("process").await
}

/// A cluster, one agent with `executor`, and the demo workflow placed on it.
async fn setup_with(executor: &str) -> (TestCluster, AgentProc) {
    if executor == "docker" {
        busybox_image();
    }
    std::env::set_var("XENE_AGENT_TTL_MS", AGENT_TTL.as_millis().to_string());
    std::env::set_var("XENE_RUN_HISTORY", "3");
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token =
        String::from_utf8_lossy(&cluster.xenectl(&["token", "create", "--kind", "agent"]).stdout).trim().to_string();
    let name = unique_agent_name("runner");
    let agent = cluster.start_agent_with(&name, "os=linux", &token, executor);
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: WORKFLOW.into() }))
        .await
        .expect("apply");
    // Wait until every pipeline is placed on the agent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines"]).stdout).into_owned();
        if table.lines().skip(1).filter(|l| l.contains("Scheduled") && !l.contains("NotScheduled")).count() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "pipelines not placed: {table}\n{}\n{}", cluster.logs(), agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, agent)
}

async fn start(cluster: &TestCluster, pipeline: &str, params: &[(&str, &str)]) -> String {
    start_in(cluster, "demo", pipeline, params).await
}

async fn start_in(cluster: &TestCluster, workflow: &str, pipeline: &str, params: &[(&str, &str)]) -> String {
    let request = pb::CreateRunRequest {
        workflow: workflow.into(),
        pipeline: pipeline.into(),
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    RunServiceClient::new(cluster.channel(1))
        .create(cluster.request(request))
        .await
        .expect("create run")
        .into_inner()
        .id
}

async fn wait_run(cluster: &TestCluster, agent: &AgentProc, id: &str, done: impl Fn(&RunObject) -> bool) -> RunObject {
    wait_run_for(cluster, agent, id, Duration::from_secs(30), done).await
}

/// Polls the run until `done`; a call that fails (a busy server) is retried until the deadline.
async fn wait_run_for(
    cluster: &TestCluster,
    agent: &AgentProc,
    id: &str,
    timeout: Duration,
    done: impl Fn(&RunObject) -> bool,
) -> RunObject {
    let deadline = Instant::now() + timeout;
    loop {
        let reply =
            RunServiceClient::new(cluster.channel(2)).get(cluster.request(pb::GetRunRequest { id: id.into() })).await;
        let last = match reply {
            Ok(reply) => {
                let run: RunObject = serde_json::from_str(&reply.into_inner().json).expect("run json");
                if done(&run) {
                    return run;
                }
                format!("{run:#?}")
            }
            Err(status) => format!("get run failed: {status}"),
        };
        assert!(Instant::now() < deadline, "run {id} stuck: {last}\n{}\n{}", cluster.logs(), agent.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn logs(cluster: &TestCluster, id: &str) -> Vec<pb::LogEntry> {
    let mut stream = RunServiceClient::new(cluster.channel(0))
        .logs(cluster.request(pb::LogsRequest {
            run: id.into(),
            task: String::new(),
            step: String::new(),
            follow: false,
            resume: vec![],
        }))
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(batch) = stream.next().await {
        lines.extend(batch.expect("batch").lines);
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_runs_to_success_with_logs_env_and_parameters() {
    let (cluster, _agent) = setup().await;
    let watched = cluster.xenectl(&["run", "demo/dag", "--param", "WHO=tester", "--watch"]);
    let id = String::from_utf8_lossy(&watched.stdout).trim().to_string();
    assert!(watched.status.success(), "xenectl run --watch: {}", String::from_utf8_lossy(&watched.stderr));
    let run = wait_run(&cluster, &_agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success);
    assert!(run.status.agent.as_deref().is_some_and(|a| a.starts_with("runner-")));
    assert!(run.status.lease_epoch.is_some());
    // Set by the server at creation and kept through the agent's reports (DESIGN §6.3).
    assert!(run.metadata.uid.as_deref().is_some_and(|uid| uid.len() == 36), "{:?}", run.metadata);
    assert!(run.metadata.creation_timestamp.is_some_and(|t| Some(t) <= run.status.started), "{:?}", run.metadata);
    for task in ["prepare", "left", "right", "join"] {
        assert_eq!(run.status.tasks[task].status, StepStatus::Success, "{task}");
    }
    let lines = logs(&cluster, &id).await;
    let text: Vec<String> = lines.iter().map(|l| format!("{}/{} {} {}", l.task, l.step, l.stream, l.text)).collect();
    assert!(text.contains(&format!("prepare/write stdout hello from prepare/write of {id}")), "{text:#?}");
    assert!(text.contains(&"join/total stdout total 15 lines 5 param tester".to_string()), "{text:#?}");
    assert!(text.contains(&"right/count stderr to stderr".to_string()), "{text:#?}");
    // xenectl logs prints the same lines.
    let printed = String::from_utf8_lossy(&cluster.xenectl(&["logs", &id]).stdout).into_owned();
    assert!(printed.contains("[join/total] total 15 lines 5 param tester"), "{printed}");
    // A misspelt task or step is an error, not an empty (or, with -f, endless) listing.
    let wrong = cluster.xenectl(&["logs", &id, "--task", "prepar", "-f"]);
    let said = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(!wrong.status.success(), "{said}");
    assert!(said.contains("has no task \"prepar\"; its tasks: join, left, prepare, right"), "{said}");
    let wrong = cluster.xenectl(&["logs", &id, "--task", "join", "--step", "sum"]);
    let said = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(said.contains("has no step \"sum\" in task \"join\"; its steps: total"), "{said}");

    // The REST trigger: a bearer token is required.
    let rest = &cluster.servers[2].http;
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/dag/runs", Some(&cluster.token), "").await;
    assert_eq!(status, 202, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rest_id = value["runs"][0].as_str().expect("run id").to_string();
    wait_run(&cluster, &_agent, &rest_id, |r| r.status.phase == RunPhase::Success).await;
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/dag/runs", None, "").await;
    assert_eq!(status, 401, "{body}");

    // An idempotency key makes a retried start answer the run the first one made (DESIGN
    // §4.4), through REST and gRPC and on any server; another pipeline's key space is its own.
    let bearer = format!("Bearer {}", cluster.token);
    let keyed = [("Authorization", bearer.as_str()), ("Idempotency-Key", "deploy-2026-11-28")];
    let mut made = Vec::new();
    for server in [0, 2] {
        let path = "/api/v1/workflows/demo/pipelines/dag/runs";
        let (status, body) = http_post_with(&cluster.servers[server].http, path, &keyed, "").await;
        assert_eq!(status, 202, "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).expect("json");
        made.push(value["runs"][0].as_str().expect("run id").to_string());
    }
    let grpc = |pipeline: &str| pb::CreateRunRequest {
        workflow: "demo".into(),
        pipeline: pipeline.into(),
        idempotency_key: "deploy-2026-11-28".into(),
        ..Default::default()
    };
    let again = RunServiceClient::new(cluster.channel(1)).create(cluster.request(grpc("dag"))).await.expect("create");
    made.push(again.into_inner().id);
    assert!(made.iter().all(|id| *id == made[0]), "one run for one key: {made:?}");
    let other =
        RunServiceClient::new(cluster.channel(1)).create(cluster.request(grpc("failing"))).await.expect("create");
    assert_ne!(other.into_inner().id, made[0], "the same key on another pipeline is another request");
    let mut changed = grpc("dag");
    changed.parameters.insert("WHO".into(), "someone else".into());
    let refused = RunServiceClient::new(cluster.channel(0))
        .create(cluster.request(changed))
        .await
        .expect_err("the same key with other parameters");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(&format!("already started run {} with other parameters", made[0])),
        "{refused:?}"
    );
    let bad = [("Authorization", bearer.as_str()), ("Idempotency-Key", "")];
    let (status, body) = http_post_with(rest, "/api/v1/workflows/demo/pipelines/dag/runs", &bad, "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("idempotency key \\\"\\\": use 1 to 200 printable ASCII characters"), "{body}");
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/nope/runs", Some(&cluster.token), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no pipeline \\\"nope\\\""), "{body}");

    // DESIGN §13: the leader counts agents, leases, runs by phase, step durations and log bytes.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let names = [
        "xene_agents_connected",
        "xene_leases",
        "xene_runs{phase=\"Success\"}",
        "xene_raft_committed_index",
        "xene_step_duration_seconds_count",
        "xene_log_bytes_total",
    ];
    wait_metrics(&cluster, leader, &names, |f| {
        f[0] == 1.0 && f[1] >= 10.0 && f[2] >= 2.0 && f[3..].iter().all(|f| *f > 0.0)
    })
    .await;

    // When the leader changes, the new one counts what the scheduler sees (the agent, once it
    // has a session with it; the leases and runs from the store) and the old one, still up,
    // no longer reports them. Step durations and log bytes count what each server applied as
    // leader, so the new leader's start from nothing.
    cluster.servers[leader].pause();
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = loop {
        let mut found = None;
        for other in (0..cluster.servers.len()).filter(|i| *i != leader) {
            if cluster.status(other).await.is_some_and(|s| s.state == "leader") {
                found = Some(other);
            }
        }
        if let Some(next) = found {
            break next;
        }
        assert!(Instant::now() < deadline, "no new leader with server {leader} paused:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_metrics(&cluster, next, &names[..4], |f| f[0] == 1.0 && f[1] >= 10.0 && f[2] >= 2.0 && f[3] > 0.0).await;
    cluster.servers[leader].resume();
    wait_metrics(&cluster, leader, &["xene_raft_is_leader", names[0], names[1], names[2], names[3]], |f| {
        f.iter().all(|f| *f == 0.0)
    })
    .await;
}

/// Waits up to 20 s until server `index`'s figures named `names` (`-1` for one it lacks) pass
/// `good`.
async fn wait_metrics(cluster: &TestCluster, index: usize, names: &[&str], good: impl Fn(&[f64]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http_get(&cluster.servers[index].http, "/metrics").await;
        let figures: Vec<f64> = names
            .iter()
            .map(|name| {
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                    .unwrap_or(-1.0)
            })
            .collect();
        if good(&figures) {
            return;
        }
        assert!(Instant::now() < deadline, "server {index}: {names:?} = {figures:?}:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A minimal HTTP/1.1 GET; the body.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// A workflow applied again reaches the agent holding its pipelines without moving their
/// leases: a run started after the apply runs the new spec (a review found the agent kept the
/// spec of the grant until the lease moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_applied_again_reaches_its_agent_under_the_same_lease() {
    let (cluster, agent) = setup().await;
    let before = start(&cluster, "dag", &[("WHO", "first")]).await;
    let first = wait_run(&cluster, &agent, &before, |r| r.status.phase.is_terminal()).await;
    assert_eq!(first.status.phase, RunPhase::Success, "{first:#?}");
    let changed = WORKFLOW.replace("env: {GREETING: hello}", "env: {GREETING: bonjour}");
    assert_ne!(changed, WORKFLOW);
    let applied = ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: changed }))
        .await
        .expect("apply again")
        .into_inner();
    assert_eq!(applied.result, "configured");
    let after = start(&cluster, "dag", &[("WHO", "second")]).await;
    let second = wait_run(&cluster, &agent, &after, |r| r.status.phase.is_terminal()).await;
    assert_eq!(second.status.phase, RunPhase::Success, "{second:#?}");
    assert_eq!(second.status.lease_epoch, first.status.lease_epoch, "the lease did not move");
    assert!(second.spec.workflow_revision > first.spec.workflow_revision, "{second:#?}");
    let text: Vec<String> =
        logs(&cluster, &after).await.into_iter().map(|l| format!("{}/{} {}", l.task, l.step, l.text)).collect();
    assert!(
        text.contains(&format!("prepare/write bonjour from prepare/write of {after}")),
        "{text:#?}\n{}",
        agent.log_tail(20)
    );
}

/// A run cancelled while still `Pending` may already be on its way to the agent: when the
/// agent reports it running, it is told to stop (a review found it ran on, unseen, beside
/// the runs after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_before_its_agent_reported_stops_on_the_agent() {
    let (cluster, agent) = setup().await;
    let pid = nix::unistd::Pid::from_raw(agent.pid().expect("agent pid") as i32);
    // Hold the agent still (well within its TTL) while the run is handed over and cancelled.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let id = start(&cluster, "long", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = RunServiceClient::new(cluster.channel(0))
        .cancel(cluster.request(pb::CancelRunRequest { id: id.clone() }))
        .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    cancelled.expect("cancel");
    let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Cancelled, "{run:#?}");
    // The agent got the start before the cancel, reported the run running and was told to
    // stop it; the step must not run on.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let told = agent.log_tail(400).lines().any(|l| l.contains("a write was fenced off") && l.contains(&id));
        let left = leftovers(&id);
        if told && left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "told to stop: {told}; still running: {left:?}\n{}", agent.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = wait_run(&cluster, &agent, &id, |_| true).await;
    assert_eq!(after.status.phase, RunPhase::Cancelled, "the agent's reports changed nothing: {after:#?}");
}

/// DESIGN §7.4: a run whose agent dies mid-run reads `Unknown` while the agent is out of
/// touch, and once its lease moves it starts again from the beginning, as the pipeline's retry
/// policy allows (here once), on the pipeline's next holder: the same agent, back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_run_is_unknown_then_started_again_as_the_pipeline_retries_say() {
    let (cluster, mut agent) = setup().await;
    // The leader has led since before `setup` returned; one TTL after that, its grace for
    // agents' sessions is over, and a session that closes is counted at once.
    let grace_over = Instant::now() + AGENT_TTL;
    let marker = tempfile::tempdir().expect("temp dir");
    let mark = marker.path().join("first-attempt");
    // The first attempt marks the host and hangs; the second finds the mark and ends.
    let manifest = format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: again}}\nspec:\n  pipelines:\n    flaky:\n      retries: {{limit: 1}}\n      tasks:\n        work:\n          steps:\n            - {{name: go, run: 'if [ -e {0} ]; then echo second; else touch {0}; echo first; sleep 60; fi'}}\n",
        mark.display()
    );
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest }))
        .await
        .expect("apply");
    let id = start_in(&cluster, "again", "flaky", &[]).await;
    let first = wait_run(&cluster, &agent, &id, |r| r.status.phase == RunPhase::Running && mark.exists()).await;
    assert_eq!(first.spec.agent_retries, 0);

    // Killed before the grace is over, the run would be `Unknown` only once it is, which can
    // be later than the TTL checked below (a CI run lost this test to that).
    tokio::time::sleep_until(grace_over.into()).await;
    agent.kill();
    // Out of touch, not yet past its TTL: Unknown.
    let unknown = wait_run_for(&cluster, &agent, &id, AGENT_TTL, |r| r.status.phase == RunPhase::Unknown).await;
    assert!(unknown.status.message.as_deref().is_some_and(|m| m.contains("out of touch")), "{unknown:#?}");
    // Past it, the lease is revoked (no other agent): the run stays Unknown while the lost
    // agent's steps may still be stopping, then waits to start again.
    let waiting = wait_run(&cluster, &agent, &id, |r| r.status.agent_lost_at.is_some()).await;
    assert_eq!((waiting.status.phase, waiting.spec.agent_retries), (RunPhase::Unknown, 0), "{waiting:#?}");
    let again = wait_run(&cluster, &agent, &id, |r| r.spec.agent_retries == 1).await;
    let lost_at = waiting.status.agent_lost_at.expect("lost at");
    assert!(chrono::Utc::now() - lost_at >= chrono::TimeDelta::seconds(10), "started again too soon after {lost_at}");
    assert_eq!(again.status.phase, RunPhase::Pending, "{again:#?}");
    assert!(again.status.tasks.is_empty() && again.status.agent.is_none(), "a fresh start: {again:#?}");
    assert!(again.status.message.as_deref().is_some_and(|m| m.contains("started again (1 of 1)")), "{again:#?}");

    agent.restart();
    let done = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(done.status.phase, RunPhase::Success, "{done:#?}");
    assert_eq!(done.spec.agent_retries, 1);
    let lines = logs(&cluster, &id).await;
    assert!(lines.iter().any(|l| l.text == "second"), "the second attempt ran: {lines:?}");
}

/// DESIGN §7.5 for a run started again: when the lease moves away from an agent that is alive
/// and connected (its pipeline's selector no longer matches it), the run starts on the new
/// holder only after the old holder's execution ended, never beside it. Every execution notes
/// its start and end, with the agent's name and the time, in a ledger on the host; the old one
/// takes 2 s to end after SIGTERM (within the agent's 5 s grace), so a run started again at
/// once would overlap it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_moved_off_a_live_agent_starts_again_only_after_its_old_execution_ended() {
    let (cluster, runner) = setup().await;
    let token = |cluster: &TestCluster| {
        String::from_utf8_lossy(&cluster.xenectl(&["token", "create", "--kind", "agent"]).stdout).trim().to_string()
    };
    let (b_name, c_name) = (unique_agent_name("pool-b"), unique_agent_name("pool-c"));
    let _b = cluster.start_agent_with(&b_name, "os=linux,pool=b", &token(&cluster), "process");
    let _c = cluster.start_agent_with(&c_name, "os=linux,pool=c", &token(&cluster), "process");
    let ledger_dir = tempfile::tempdir().expect("temp dir");
    let ledger = ledger_dir.path().join("ledger");
    let manifest = |pool: &str| {
        format!(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: moving}}\nspec:\n  pipelines:\n    p:\n      agentSelector: {{pool: {pool}}}\n      retries: {{limit: 1}}\n      tasks:\n        work:\n          steps:\n            - {{name: go, run: 'note() {{ echo \"$1 $XENE_AGENT $(date +%s%N)\" >> {0}; }}; note start; trap \"sleep 2; note end; exit 143\" TERM; i=0; while [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; note end'}}\n",
            ledger.display()
        )
    };
    let apply = |manifest: String| {
        let channel = cluster.channel(0);
        let request = cluster.request(pb::ApplyRequest { manifest });
        async move { ObjectServiceClient::new(channel).apply(request).await.expect("apply") }
    };
    apply(manifest("b")).await;
    let id = start_in(&cluster, "moving", "p", &[]).await;
    let first = wait_run(&cluster, &runner, &id, |r| r.status.phase == RunPhase::Running).await;
    assert_eq!(first.status.agent.as_deref(), Some(b_name.as_str()), "{first:#?}");
    // The selector no longer matches the holder: the lease moves to the other agent.
    apply(manifest("c")).await;
    let done = wait_run_for(&cluster, &runner, &id, Duration::from_secs(60), |r| r.status.phase.is_terminal()).await;
    assert_eq!(done.status.phase, RunPhase::Success, "{done:#?}");
    assert_eq!((done.spec.agent_retries, done.status.agent.as_deref()), (1, Some(c_name.as_str())), "{done:#?}");

    let text = std::fs::read_to_string(&ledger).expect("ledger");
    let events: Vec<(&str, &str, u128)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            Some((parts.next()?, parts.next()?, parts.next()?.parse().ok()?))
        })
        .collect();
    let at = |what: &str, agent: &str| events.iter().find(|(w, a, _)| *w == what && *a == agent).map(|(_, _, t)| *t);
    let (Some(b_end), Some(c_start)) = (at("end", &b_name), at("start", &c_name)) else {
        panic!("the ledger lacks the old execution's end or the new one's start:\n{text}");
    };
    assert!(c_start > b_end, "the new execution started before the old one ended:\n{text}");
    assert_eq!(events.iter().filter(|(w, _, _)| *w == "start").count(), 2, "two executions:\n{text}");
}

/// A finished run shows no task or step still running (DESIGN §9.1: a task's status follows
/// its steps), however it ended.
fn assert_nothing_running(run: &RunObject) {
    for (name, task) in &run.status.tasks {
        assert_ne!(task.status, StepStatus::Running, "task {name} of a finished run: {run:#?}");
        for step in &task.steps {
            assert_ne!(step.status, StepStatus::Running, "step {name}/{} of a finished run: {run:#?}", step.name);
        }
    }
}

/// Deleting a workflow cancels its unfinished runs (DESIGN §6.3): a running one stops on its
/// agent (a review found it ended as `AgentLost`, and a `Pending` one stayed so for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_workflow_cancels_its_runs() {
    let (cluster, agent) = setup().await;
    let running = start(&cluster, "long", &[]).await;
    wait_run(&cluster, &agent, &running, |r| r.status.phase == RunPhase::Running).await;
    let deleted = ObjectServiceClient::new(cluster.channel(1))
        .delete(cluster.request(pb::DeleteObjectRequest {
            kind: "workflow".into(),
            name: "demo".into(),
            resource_version: 0,
        }))
        .await;
    assert!(deleted.is_ok(), "delete: {deleted:?}");
    let run = wait_run(&cluster, &agent, &running, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Cancelled, "{run:#?}");
    assert_eq!(run.status.message.as_deref(), Some("workflow \"demo\" was deleted"));
    assert_nothing_running(&run);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = leftovers(&running);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted workflow's step still runs: {left}\n{}", agent.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = wait_run(&cluster, &agent, &running, |_| true).await;
    assert_eq!(after.status.phase, RunPhase::Cancelled, "the agent's last reports changed nothing: {after:#?}");
}

/// `xenectl logs -f` goes on through another server when the one it follows dies: every line
/// once, in order, and it ends with the run (a review found it ended quietly, as if the run
/// had, when its server stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_logs_survives_the_death_of_the_server_followed() {
    let (mut cluster, agent) = setup().await;
    let ticker = "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {name: ticker}\nspec:\n  pipelines:\n    tick:\n      tasks:\n        count: {steps: [{name: out, run: 'for i in $(seq 1 40); do echo \"tick $i\"; sleep 0.1; done'}]}\n";
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: ticker.into() }))
        .await
        .expect("apply");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines", "ticker/tick"]).stdout).contains(" Scheduled")
    {
        assert!(Instant::now() < deadline, "ticker/tick not placed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = RunServiceClient::new(cluster.channel(1))
        .create(cluster.request(pb::CreateRunRequest {
            workflow: "ticker".into(),
            pipeline: "tick".into(),
            ..Default::default()
        }))
        .await
        .expect("create run")
        .into_inner()
        .id;
    // Follow through a follower first in the list, and kill it mid-run.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let followed = (leader + 1) % cluster.servers.len();
    let mut order = vec![cluster.servers[followed].grpc.clone()];
    order.extend(cluster.servers.iter().enumerate().filter(|(i, _)| *i != followed).map(|(_, s)| s.grpc.clone()));
    let follower = Command::new(bin_dir().join("xenectl"))
        .args(["--servers", &order.join(","), "logs", &id, "-f"])
        .env("XENE_TOKEN", &cluster.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xenectl logs -f");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.servers[followed].kill();
    let output = tokio::task::spawn_blocking(move || follower.wait_with_output()).await.expect("join").expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "xenectl logs -f failed: {stderr}\n{stdout}");
    assert!(stderr.contains("going on through another server"), "the stream did not break: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let want: Vec<String> = (1..=40).map(|i| format!("[count/out] tick {i}")).collect();
    assert_eq!(lines, want, "every line once, in order; stderr: {stderr}\n{}", agent.log_tail(20));
}

async fn logs_missing(cluster: &TestCluster, id: &str) -> bool {
    stored_chunks(cluster, id).await.is_empty()
}

/// The log chunks stored for run `id`, read raw from the store.
async fn stored_chunks(cluster: &TestCluster, id: &str) -> Vec<LogChunk> {
    let range =
        pb::RangeRequest { key: format!("/xene/logs/{id}/").into_bytes(), prefix: true, limit: 0, serializable: false };
    let kvs = cluster.kv(0).range(cluster.request(range)).await.expect("range").into_inner().kvs;
    kvs.iter().map(|kv| serde_json::from_slice(&kv.value).expect("a stored log chunk is JSON")).collect()
}

/// An agent's write of `chunk` under lease `epoch`, as the first write of its session.
fn logs_write(chunk: &LogChunk, epoch: u64, first_seq: u64) -> pb::AgentMessage {
    let chunk_json = serde_json::to_string(chunk).expect("json");
    let batch = pb::LogBatch { run: chunk.run.clone(), epoch, chunk_json, first_seq, seq: 1 };
    pb::AgentMessage { body: Some(pb::agent_message::Body::Logs(batch)) }
}

async fn http_post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_post_with(addr, path, &headers, body).await
}

async fn http_post_with(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let headers: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Whether anything of run `id` is left: its containers or volume (Docker), or processes.
fn leftovers(id: &str) -> String {
    let label = format!("label=xene.run={id}");
    let mut found = String::new();
    if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output() {
        found.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    if let Ok(out) = Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]).output() {
        found.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    if let Ok(out) = Command::new("pgrep").args(["-f", "got TERM"]).output() {
        // Processes of a process-executor step carry their script on the command line.
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        for pid in ours {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).contains(&format!("XENE_RUN_ID={id}")) {
                found.push_str(&format!("process {pid}\n"));
            }
        }
    }
    found.trim().to_string()
}

/// The behaviour every executor must have (issue "Runs", Tests).
async fn executor_behaviour(executor: &str) {
    let (cluster, agent) = setup_with(executor).await;

    // One task's steps share one context (/tmp); a run's tasks share /workspace.
    let context = start(&cluster, "context", &[]).await;
    let run = wait_run(&cluster, &agent, &context, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success, "{run:#?}\n{}", agent.log_tail(20));
    let texts: Vec<String> =
        logs(&cluster, &context).await.into_iter().map(|l| format!("{}/{} {}", l.task, l.step, l.text)).collect();
    assert!(
        texts.contains(&"one/read kept".to_string()) && texts.contains(&"two/read shared".to_string()),
        "{texts:?}"
    );

    // A failing step: its task fails with the exit code, the rest waits, independent work runs.
    let failing = start(&cluster, "failing", &[]).await;
    let run = wait_run(&cluster, &agent, &failing, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Error);
    assert_eq!(run.status.reason, Some(ErrorReason::Failed));
    let first = &run.status.tasks["first"];
    assert_eq!(first.status, StepStatus::Error);
    let steps: Vec<(&str, StepStatus, Option<i32>)> =
        first.steps.iter().map(|s| (s.name.as_str(), s.status, s.exit_code)).collect();
    assert_eq!(
        steps,
        vec![
            ("ok", StepStatus::Success, Some(0)),
            ("boom", StepStatus::Error, Some(3)),
            ("never", StepStatus::NotExecuted, None)
        ]
    );
    assert_eq!(first.steps[1].reason, Some(ErrorReason::Failed));
    assert_eq!(run.status.tasks["after"].status, StepStatus::NotExecuted, "a task after a failed one never runs");
    assert_eq!(run.status.tasks["independent"].status, StepStatus::Success, "an independent branch still runs");
    // `when`: on_failure runs after a failure and only then; always runs whatever came before.
    assert_eq!(run.status.tasks["report"].status, StepStatus::Success, "on_failure after a failure: {run:#?}");
    assert_eq!(run.status.tasks["cleanup"].status, StepStatus::Success, "always, after a skipped task: {run:#?}");
    assert_eq!(run.status.tasks["celebrate"].status, StepStatus::NotExecuted, "on_failure after a success: {run:#?}");
    assert_eq!(run.status.message.as_deref(), Some("failed tasks: first"), "a failure handled stays a failure");

    // Outputs (DESIGN §10): KEY=VALUE lines in $XENE_OUTPUT, the last value of a key wins,
    // kept in the task's status and read by the tasks after it as XENE_INPUT_<TASK>_<KEY>; a
    // malformed line fails the step that wrote it, saying which line and how to write one.
    let outputs = start(&cluster, "outputs", &[]).await;
    let run = wait_run(&cluster, &agent, &outputs, |r| r.status.phase.is_terminal()).await;
    let produced: Vec<(&str, &str)> =
        run.status.tasks["produce"].outputs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(produced, vec![("coverage", "91"), ("note", "a=b c"), ("report", "out.html")], "{run:#?}");
    assert_eq!(run.status.tasks["consume"].status, StepStatus::Success, "{run:#?}");
    let malformed = &run.status.tasks["malformed"];
    assert_eq!(
        (malformed.status, malformed.steps[0].reason, malformed.steps[0].exit_code, malformed.steps[1].status),
        (StepStatus::Error, Some(ErrorReason::Failed), Some(0), StepStatus::NotExecuted),
        "{run:#?}"
    );
    // `when` over outputs (CEL): holds, runs; does not hold, skipped as a success for the
    // task after it; cannot be evaluated, fails with the reason in its log.
    let status = |task: &str| (run.status.tasks[task].status, run.status.tasks[task].reason);
    assert_eq!(status("gate-open"), (StepStatus::Success, None), "{run:#?}");
    assert_eq!(status("gate-shut"), (StepStatus::NotExecuted, None), "{run:#?}");
    assert_eq!(status("after-shut"), (StepStatus::Success, None), "{run:#?}");
    assert_eq!(status("gate-broken"), (StepStatus::Error, Some(ErrorReason::Failed)), "{run:#?}");
    assert_eq!(run.status.phase, RunPhase::Error, "{run:#?}");
    let texts: Vec<String> =
        logs(&cluster, &outputs).await.into_iter().map(|l| format!("{}/{} {}", l.task, l.step, l.text)).collect();
    assert!(texts.contains(&"consume/read got 91 out.html [a=b c]".to_string()), "{texts:?}");
    assert!(texts.contains(&"gate-open/go gate open at 91".to_string()), "{texts:?}");
    assert!(
        texts.contains(
            &"gate-shut/go skipped: the condition \"{{ tasks.produce.outputs.coverage }} > 95\" does not hold"
                .to_string()
        ),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("gate-broken/go the condition") && t.contains("cannot be evaluated")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.starts_with("malformed/write $XENE_OUTPUT line 1: \"no pair here\" has no '='")),
        "{texts:?}"
    );

    // Fails twice, passes on the third attempt.
    let flaky = start(&cluster, "flaky", &[]).await;
    let run = wait_run(&cluster, &agent, &flaky, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success, "{run:#?}");
    assert_eq!(run.status.tasks["retried"].attempt, 2, "three attempts: 0, 1, 2");
    let kept: Vec<&str> = run.status.tasks["retried"].outputs.keys().map(String::as_str).collect();
    assert_eq!(kept, vec!["attempt_2"], "each attempt starts with no outputs: {run:#?}");

    // A step over its timeout.
    let slow = start(&cluster, "slow", &[]).await;
    let started = Instant::now();
    let run = wait_run(&cluster, &agent, &slow, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Error);
    assert_eq!(run.status.tasks["sleepy"].steps[0].reason, Some(ErrorReason::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(15), "the step was stopped at its timeout");

    // Cancel a running run: SIGTERM reaches the step, and nothing is left behind.
    let long = start(&cluster, "long", &[]).await;
    // The step itself must be running (a container can take a while to start under load), and
    // have had time to set its trap.
    let step_running =
        |r: &RunObject| r.status.tasks.get("forever").is_some_and(|t| t.steps[0].status == StepStatus::Running);
    wait_run(&cluster, &agent, &long, step_running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = cluster.xenectl(&["cancel", &long]);
    assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
    let run = wait_run(&cluster, &agent, &long, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Cancelled);
    let lines = logs(&cluster, &long).await;
    assert!(lines.iter().any(|l| l.text == "got TERM"), "the step got SIGTERM first: {lines:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(&long);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind after cancel: {left}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A container image that is neither present nor pullable: InfrastructureError, clearly.
    if executor == "docker" {
        let id = start(&cluster, "noimage", &[]).await;
        let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
        assert_eq!(run.status.phase, RunPhase::Error);
        assert_eq!(run.status.tasks["only"].reason, Some(ErrorReason::InfrastructureError), "{run:#?}");
        let lines = logs(&cluster, &id).await;
        assert!(
            lines.iter().any(|l| l.text.contains("xene/does-not-exist:1") && l.text.contains("pull failed")),
            "the log says which image and why: {lines:?}"
        );
    }

    // Only the last three finished runs of a pipeline are kept (XENE_RUN_HISTORY=3 here).
    for _ in 0..3 {
        let id = start(&cluster, "failing", &[]).await;
        wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kept = String::from_utf8_lossy(&cluster.xenectl(&["runs", "demo/failing"]).stdout).lines().count() - 1;
        if kept == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{kept} runs kept, expected 3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let oldest =
        RunServiceClient::new(cluster.channel(0)).get(cluster.request(pb::GetRunRequest { id: failing.clone() })).await;
    assert_eq!(oldest.expect_err("the oldest run is gone").code(), tonic::Code::NotFound);
    assert!(logs_missing(&cluster, &failing).await, "its logs went with it");
    let listed = String::from_utf8_lossy(&cluster.xenectl(&["runs", "demo"]).stdout).into_owned();
    assert!(listed.contains("Error") && listed.contains("Cancelled") && listed.contains("Success"), "{listed}");
    let errors = String::from_utf8_lossy(&cluster.xenectl(&["runs", "demo", "--phase", "error"]).stdout).into_owned();
    assert!(errors.contains("Error") && !errors.contains("Success"), "a phase in any case filters:\n{errors}");

    // A typo is an error, not an empty table.
    for (args, expected) in [
        (&["runs", "--phase", "Sucess"][..], "unknown run phase \"Sucess\"; did you mean Success?"),
        (&["runs", "dmeo"][..], "workflow \"dmeo\" not found, and no runs of it are kept"),
        (&["runs", "demo/failng"][..], "workflow \"demo\" has no pipeline \"failng\""),
    ] {
        let refused = cluster.xenectl(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// 100,000 lines: `logs -f` during the run and `logs` after both give every line once, in order;
/// then one line of 1.2 MB, stored in 64 KiB pieces (as one piece it could not be stored).
async fn many_lines(executor: &str) {
    let (cluster, agent) = setup_with(executor).await;
    let id = start(&cluster, "chatty", &[]).await;
    let follow = {
        let servers: Vec<String> = cluster.servers.iter().map(|s| s.grpc.clone()).collect();
        Command::new(bin_dir().join("xenectl"))
            .args(["--servers", &servers.join(","), "logs", &id, "--task", "talk", "--step", "lines", "-f"])
            .env("XENE_TOKEN", &cluster.token)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xenectl logs -f")
    };
    let run = wait_run_for(&cluster, &agent, &id, Duration::from_secs(120), |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success);
    let followed = tokio::task::spawn_blocking(move || follow.wait_with_output()).await.expect("join").expect("output");
    let after = cluster.xenectl(&["logs", &id, "--task", "talk", "--step", "lines"]);
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let describe = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let lines: Vec<&str> = text.lines().collect();
        format!("{} lines, first {:?}, last {:?}", lines.len(), lines.first(), lines.last())
    };
    assert!(
        String::from_utf8_lossy(&followed.stdout) == expected,
        "logs -f gave every line once, in order: {}",
        describe(&followed.stdout)
    );
    assert!(
        String::from_utf8_lossy(&after.stdout) == expected,
        "logs after the run gave every line once, in order: {} {}",
        describe(&after.stdout),
        String::from_utf8_lossy(&after.stderr)
    );
    let wide = cluster.xenectl(&["logs", &id, "--task", "talk", "--step", "wide"]);
    let text = String::from_utf8_lossy(&wide.stdout);
    let pieces: Vec<&str> = text.lines().collect();
    let lengths: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    assert_eq!(
        pieces.len(),
        1_200_000usize.div_ceil(64 * 1024),
        "piece lengths {lengths:?}; {}",
        String::from_utf8_lossy(&wide.stderr)
    );
    assert!(pieces.iter().all(|p| p.len() <= 64 * 1024 && p.bytes().all(|b| b == b'x')));
    assert_eq!(pieces.concat().len(), 1_200_000, "the long line's pieces hold all of it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_executor_behaviour() {
    executor_behaviour("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_executor_behaviour() {
    executor_behaviour("docker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_executor_logs_every_line() {
    many_lines("process").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_executor_logs_every_line() {
    many_lines("docker").await;
}

/// Sends `message` in a session of its own with `agent`'s credential, and returns the first
/// answer `pick` takes within 10 s.
async fn session_answer<T>(
    cluster: &TestCluster,
    agent: &AgentProc,
    message: pb::AgentMessage,
    pick: impl Fn(pb::server_message::Body) -> Option<T>,
) -> Option<T> {
    // The agent's own session, reconnecting, may replace this one before the answer comes
    // (the leader then ends this stream): ask again on a new session, at most three times.
    // Every message these tests send is answered the same however often it is sent.
    for _ in 0..3 {
        let (tx, mut session) = cluster.agent_session(agent, vec![message.clone()]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ended = false;
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), session.next()).await {
                Ok(Some(Ok(reply))) => {
                    if let Some(answer) = reply.body.and_then(&pick) {
                        return Some(answer);
                    }
                }
                Ok(None | Some(Err(_))) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        drop(tx);
        if !ended {
            return None;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_epoch_is_fenced_off() {
    let (cluster, mut agent) = setup().await;
    let long = start(&cluster, "long", &[]).await;
    let running = wait_run(&cluster, &agent, &long, |r| r.status.phase == RunPhase::Running).await;
    let epoch = running.status.lease_epoch.expect("epoch");
    // The step prints its PID and falls silent: the line still reaches the servers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let lines = logs(&cluster, &long).await;
        if let Some(pid) = lines.iter().find_map(|l| l.text.strip_prefix("pid ").and_then(|p| p.parse::<u32>().ok())) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the step's first line was not shipped while it ran silent: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A step running for a while is noted on disk, for the agent's next start.
    let record = agent.data_dir.join("work").join(".steps").join(pid.to_string());
    while !record.exists() {
        assert!(
            Instant::now() < deadline + Duration::from_secs(5),
            "no record of the running step at {}",
            record.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent dies mid-run; the lease moves away (no other agent: it is revoked), and the run
    // fails with AgentLost instead of hanging.
    agent.kill();
    let lost = wait_run(&cluster, &agent, &long, |r| r.status.phase.is_terminal()).await;
    assert_eq!(lost.status.phase, RunPhase::Error);
    assert_eq!(lost.status.reason, Some(ErrorReason::AgentLost));
    assert_nothing_running(&lost);
    assert_eq!(lost.status.tasks["forever"].reason, Some(ErrorReason::AgentLost), "{lost:#?}");

    // The agent's credential replays a write under its old epoch: refused.
    let mut stale = running.clone();
    stale.status.phase = RunPhase::Success;
    let update =
        pb::RunUpdate { run: long.clone(), epoch, run_json: serde_json::to_string(&stale).expect("json"), seq: 1 };
    let message = pb::AgentMessage { body: Some(pb::agent_message::Body::RunUpdate(update)) };
    let fenced = session_answer(&cluster, &agent, message, |body| match body {
        pb::server_message::Body::Fenced(f) => Some(f),
        _ => None,
    })
    .await
    .expect("the server answers a stale-epoch write with Fenced");
    assert_eq!(fenced.run, long);
    assert_eq!(fenced.epoch, epoch);
    let after = wait_run(&cluster, &agent, &long, |_| true).await;
    assert_eq!(after.status.phase, RunPhase::Error, "the stale write changed nothing");
    assert_eq!(after.status.reason, Some(ErrorReason::AgentLost));

    // The step never writes, so nothing told it its agent died; the agent started again
    // stops it before it does anything else.
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    };
    assert!(alive(pid), "the step outlived its SIGKILLed agent");
    agent.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the restarted agent left the dead one's step (pid {pid}) running: {}",
            agent.log_tail(10)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent restarted mid-run executes the task attempt again under the same lease epoch, and
/// the dead execution's writes can still land after the new one's (chaos_runs found a Success
/// run whose logs stopped after the dead execution's first chunk). A late chunk of another
/// execution, from the same agent and epoch, is stored under its own key and never shows in
/// the run's logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_executions_late_log_chunk_does_not_replace_the_live_ones() {
    let (cluster, agent) = setup().await;
    let id = start(&cluster, "failing", &[]).await;
    let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    let epoch = run.status.lease_epoch.expect("the run records its lease epoch");
    let live = run.status.tasks["first"].execution.clone();
    assert!(!live.is_empty(), "the status names the attempt's execution: {run:#?}");
    let boom = |lines: Vec<pb::LogEntry>| -> Vec<String> {
        lines.into_iter().filter(|l| l.task == "first" && l.step == "boom").map(|l| l.text).collect()
    };
    assert_eq!(boom(logs(&cluster, &id).await), vec!["about to fail"]);

    // The same agent under the same epoch sends a chunk of another execution of that step,
    // from its first line, after the run ended.
    let dead = "0123dead";
    let chunk = LogChunk {
        run: id.clone(),
        task: "first".into(),
        step: "boom".into(),
        execution: dead.into(),
        lines: vec![LogLine { seq: 0, ts_ms: 1, stream: "stdout".into(), text: "from a dead execution".into() }],
    };
    let answer = session_answer(&cluster, &agent, logs_write(&chunk, epoch, 0), |body| match body {
        pb::server_message::Body::Written(ack) if ack.seq >= 1 => Some(Ok(())),
        pb::server_message::Body::Fenced(f) => Some(Err(f)),
        _ => None,
    })
    .await;
    assert_eq!(answer, Some(Ok(())), "the leader acknowledges the chunk of the current epoch");

    // It is stored, under its execution's key...
    let stored = stored_chunks(&cluster, &id).await;
    let executions: Vec<&str> = stored.iter().filter(|c| c.step == "boom").map(|c| c.execution.as_str()).collect();
    assert!(executions.contains(&dead) && executions.contains(&live.as_str()), "{executions:?}");
    // ... and the run's logs are still the live execution's.
    assert_eq!(boom(logs(&cluster, &id).await), vec!["about to fail"]);

    // Bad chunks are refused (the agent is told its write is done, as for any refused write)
    // and change nothing: one of another run than its batch names, whose epoch would fence the
    // wrong pipeline, one whose execution is not a name, and one whose lines are not lines
    // (the server stores a chunk's bytes as the agent sent them, so it must check them all).
    let other = "demo.other.20260101000000aaaa";
    let mut not_lines = serde_json::to_value(&chunk).expect("chunk as a value");
    not_lines["lines"][0]["seq"] = serde_json::json!("first");
    let bad = [
        (LogChunk { run: other.into(), ..chunk.clone() }, None),
        (LogChunk { execution: "../up".into(), ..chunk.clone() }, None),
        (chunk.clone(), Some(not_lines.to_string())),
    ];
    for (bad, raw) in bad {
        // The batch names this run, whatever the chunk says.
        let mut message = logs_write(&bad, epoch, 7);
        if let Some(pb::agent_message::Body::Logs(batch)) = &mut message.body {
            batch.run = id.clone();
            if let Some(raw) = raw {
                batch.chunk_json = raw;
            }
        }
        let answer = session_answer(&cluster, &agent, message, |body| match body {
            pb::server_message::Body::Written(ack) if ack.seq >= 1 => Some(()),
            _ => None,
        })
        .await;
        assert_eq!(answer, Some(()), "the refused chunk {bad:?} is answered");
    }
    assert!(stored_chunks(&cluster, other).await.is_empty(), "nothing stored for the other run");
    assert_eq!(stored_chunks(&cluster, &id).await, stored, "nothing more stored for this run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_steps_masked_and_never_come_back() {
    let (cluster, agent) = setup().await;
    let set = cluster.xenectl(&["secret", "set", "api-token", "--from-literal", "value=s3cret-value"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let listed = String::from_utf8_lossy(&cluster.xenectl(&["secret", "list"]).stdout).into_owned();
    assert!(listed.contains("api-token") && listed.contains("value"), "{listed}");
    assert!(!listed.contains("s3cret-value"), "values are never returned: {listed}");
    // Nor through the raw store's API, which an admin token may use: the key is there, its
    // value reads as empty, and comparing the value with guesses is refused.
    let raw = cluster.xenectl(&["kv", "get", "/xene/secrets/", "--prefix"]);
    let raw_out = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.status.success() && raw_out.contains("/xene/secrets/api-token"), "{raw_out}");
    assert!(!raw_out.contains("s3cret-value"), "the raw store returned a secret's value: {raw_out}");
    let guess = pb::Compare {
        key: b"/xene/secrets/api-token".to_vec(),
        result: pb::compare::Result::Greater as i32,
        target: Some(pb::compare::Target::Value(b"{\"value\":\"s".to_vec())),
    };
    let guessed = xene_proto::kv_service_client::KvServiceClient::new(cluster.channel(0))
        .txn(cluster.request(pb::TxnRequest { compare: vec![guess], ..Default::default() }))
        .await
        .expect_err("a secret's value cannot be compared");
    assert_eq!(guessed.code(), tonic::Code::InvalidArgument, "{guessed:?}");
    assert!(guessed.message().contains("secret values are never read back"), "{guessed:?}");

    let id = start(&cluster, "secretive", &[]).await;
    let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.tasks["use"].status, StepStatus::Success, "the step saw the secret's value: {run:#?}");
    let leak = run.status.tasks["use"].outputs.get("leak").map(String::as_str);
    assert_eq!(leak, Some("***!"), "masked in the outputs: {run:#?}");
    assert_eq!(run.status.tasks["missing"].steps[0].reason, Some(ErrorReason::InfrastructureError));
    let lines = logs(&cluster, &id).await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"token is ***"), "masked in the logs: {texts:?}");
    assert!(!texts.iter().any(|t| t.contains("s3cret-value")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("secret \"not-there\"") && t.contains("xenectl secret set")), "{texts:?}");

    let deleted = cluster.xenectl(&["secret", "delete", "api-token"]);
    assert!(deleted.status.success());
    let again = cluster.xenectl(&["secret", "delete", "api-token"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"));
}

/// Builds the local busybox image the examples use (no registry is reachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_runs_in_containers_sharing_the_run_workspace() {
    busybox_image();
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token =
        String::from_utf8_lossy(&cluster.xenectl(&["token", "create", "--kind", "agent"]).stdout).trim().to_string();
    let agent_name = unique_agent_name("docker");
    let agent = cluster.start_agent_with(&agent_name, "os=linux", &token, "docker");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fan-out-fan-in.yaml");
    let applied = cluster.xenectl(&["apply", "-f", &examples.display().to_string()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines", "fan-out-fan-in/shards"]).stdout)
        .contains(" Scheduled")
    {
        assert!(Instant::now() < deadline, "not placed: {}", agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request =
        pb::CreateRunRequest { workflow: "fan-out-fan-in".into(), pipeline: "shards".into(), ..Default::default() };
    let id = RunServiceClient::new(cluster.channel(0))
        .create(cluster.request(request))
        .await
        .expect("create")
        .into_inner()
        .id;
    let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success, "{run:#?}\n{}", agent.log_tail(30));
    let lines = logs(&cluster, &id).await;
    assert!(
        lines.iter().any(|l| l.task == "report" && l.text == "465"),
        "the fan-in read every shard's file: {lines:?}"
    );
    // Containers and the run's volume are gone once the run ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let label = format!("label=xene.agent={agent_name}");
        let containers = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output().expect("docker ps");
        let volumes =
            Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]).output().expect("docker volume ls");
        if containers.stdout.is_empty() && volumes.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {:?} {:?}",
            String::from_utf8_lossy(&containers.stdout),
            String::from_utf8_lossy(&volumes.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pull secret's credentials reach the registry, through the server's hand-over and the
/// agent's pull; a pipeline without one sends none; a missing one fails the task at once,
/// saying how to create it (DESIGN §9.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_secret_reaches_the_registry() {
    let registry = FakeRegistry::start().await.expect("start the fake registry");
    let (cluster, agent) = setup_with("docker").await;
    let image = registry.image("team/private:1");
    let manifest = format!(
        "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: pulling}}\nspec:\n  pipelines:\n\
         \x20   anonymous:\n      executor: {{type: container, image: \"{image}\"}}\n      tasks: {{t: {{steps: [{{name: s, run: 'true'}}]}}}}\n\
         \x20   private:\n      executor: {{type: container, image: \"{image}\", pullSecret: registry-login}}\n      tasks: {{t: {{steps: [{{name: s, run: 'true'}}]}}}}\n\
         \x20   unset:\n      executor: {{type: container, image: \"{image}\", pullSecret: nobody}}\n      tasks: {{t: {{steps: [{{name: s, run: 'true'}}]}}}}\n"
    );
    let set = cluster.xenectl(&[
        "secret",
        "set",
        "registry-login",
        "--from-literal",
        "username=xene-user",
        "--from-literal",
        "password=s3cret",
    ]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest }))
        .await
        .expect("apply");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = String::from_utf8_lossy(&cluster.xenectl(&["get", "pipelines"]).stdout).into_owned();
        if table.lines().filter(|l| l.starts_with("pulling/") && l.contains(" Scheduled")).count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "pipelines not placed: {table}\n{}", agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pulled = |pipeline: &'static str| {
        let (cluster, agent) = (&cluster, &agent);
        async move {
            let id = start_in(cluster, "pulling", pipeline, &[]).await;
            let run = wait_run(cluster, agent, &id, |r| r.status.phase.is_terminal()).await;
            assert_eq!(run.status.phase, RunPhase::Error, "the registry holds no image: {run:#?}");
            assert_eq!(run.status.tasks["t"].steps[0].reason, Some(ErrorReason::InfrastructureError), "{run:#?}");
            logs(cluster, &id).await.into_iter().map(|l| l.text).collect::<Vec<_>>()
        }
    };

    let anonymous = pulled("anonymous").await;
    assert!(!registry.authorizations().is_empty(), "the engine never asked the registry: {anonymous:?}");
    assert!(registry.authorizations().iter().all(Option::is_none), "{:?}", registry.authorizations());

    let private = pulled("private").await;
    let basic = FakeRegistry::basic("xene-user", "s3cret");
    assert!(
        registry.authorizations().contains(&Some(basic.clone())),
        "no request carried {basic:?}: {:?}; logs: {private:?}",
        registry.authorizations()
    );
    assert!(private.iter().any(|t| t.contains(&format!("image {image} not present and pull failed"))), "{private:?}");
    assert!(!private.iter().any(|t| t.contains("s3cret")), "{private:?}");

    let asked = registry.authorizations().len();
    let unset = pulled("unset").await;
    assert!(
        unset.iter().any(|t| t.contains("pull secret \"nobody\"") && t.contains("xenectl secret set nobody")),
        "{unset:?}"
    );
    assert_eq!(registry.authorizations().len(), asked, "no pull without the named secret");
}
