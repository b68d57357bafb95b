//! Runs end to end with real processes (issue "Runs"; DESIGN §8.1, §9): the DAG runner and
//! the process executor, failure rules, retries, timeouts, cancellation, logs, the REST
//! trigger, and fencing of an agent whose lease epoch is stale (§7.5).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use xene_chaos_tests::agent_proc::AgentProc;
use xene_chaos_tests::harness::{bin_dir, ClusterOptions, TestCluster};
use xene_model::status::{ErrorReason, RunPhase, StepStatus};
use xene_model::RunObject;
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;

fn xenectl(cluster: &TestCluster, args: &[&str]) -> Output {
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.grpc.clone()).collect();
    Command::new(bin_dir().join("xenectl"))
        .args(["--servers", &servers.join(",")])
        .args(args)
        .env("XENE_TOKEN", &cluster.token)
        .output()
        .expect("run xenectl")
}

const WORKFLOW: &str = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata: {name: demo}
spec:
  pipelines:
    dag:
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
            - {name: count, run: 'wc -l < numbers > right; echo "to stderr" >&2'}
        join:
          dependencies: [left, right]
          steps:
            - {name: total, run: 'echo "total $(cat left) lines $(cat right) param $WHO"'}
    failing:
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
    flaky:
      tasks:
        retried:
          retries: {limit: 2, backoff: 100ms}
          steps:
            - {name: try, run: 'n=$(cat /tmp/xene-flaky-$XENE_RUN_ID 2>/dev/null || echo 0); echo $((n+1)) > /tmp/xene-flaky-$XENE_RUN_ID; [ $n -ge 1 ]'}
    slow:
      tasks:
        sleepy:
          steps:
            - {name: nap, run: 'sleep 30', timeout: 1s}
    secretive:
      tasks:
        use:
          env: {TOKEN: {secretRef: api-token}}
          steps:
            - {name: check, run: '[ "$TOKEN" = "s3cret-value" ] && echo "token is $TOKEN"'}
        missing:
          dependencies: [use]
          steps:
            - {name: nope, run: 'true', env: {X: {secretRef: not-there}}}
    long:
      tasks:
        forever:
          steps:
            - {name: wait, run: 'trap "echo got TERM; exit 143" TERM; while true; do sleep 0.1; done'}
"#;

async fn setup() -> (TestCluster, AgentProc) {
    std::env::set_var("XENE_AGENT_TTL_MS", "2000");
    std::env::set_var("XENE_RUN_HISTORY", "3");
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token =
        String::from_utf8_lossy(&xenectl(&cluster, &["token", "create", "--kind", "agent"]).stdout).trim().to_string();
    let agent = cluster.start_agent("runner", "os=linux", &token);
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: WORKFLOW.into() }))
        .await
        .expect("apply");
    // Wait until every pipeline is placed on the agent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = String::from_utf8_lossy(&xenectl(&cluster, &["get", "pipelines"]).stdout).into_owned();
        if table.lines().skip(1).filter(|l| l.contains("Scheduled") && !l.contains("NotScheduled")).count() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "pipelines not placed: {table}\n{}\n{}", cluster.logs(), agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, agent)
}

async fn start(cluster: &TestCluster, pipeline: &str, params: &[(&str, &str)]) -> String {
    let request = pb::CreateRunRequest {
        workflow: "demo".into(),
        pipeline: pipeline.into(),
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    RunServiceClient::new(cluster.channel(1))
        .create(cluster.request(request))
        .await
        .expect("create run")
        .into_inner()
        .id
}

async fn wait_run(cluster: &TestCluster, agent: &AgentProc, id: &str, done: impl Fn(&RunObject) -> bool) -> RunObject {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = RunServiceClient::new(cluster.channel(2))
            .get(cluster.request(pb::GetRunRequest { id: id.into() }))
            .await
            .expect("get run")
            .into_inner();
        let run: RunObject = serde_json::from_str(&reply.json).expect("run json");
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} stuck: {run:#?}\n{}\n{}", cluster.logs(), agent.log_tail(30));
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
    let watched = xenectl(&cluster, &["run", "demo/dag", "--param", "WHO=tester", "--watch"]);
    let id = String::from_utf8_lossy(&watched.stdout).trim().to_string();
    assert!(watched.status.success(), "xenectl run --watch: {}", String::from_utf8_lossy(&watched.stderr));
    let run = wait_run(&cluster, &_agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success);
    assert_eq!(run.status.agent.as_deref(), Some("runner"));
    assert!(run.status.lease_epoch.is_some());
    for task in ["prepare", "left", "right", "join"] {
        assert_eq!(run.status.tasks[task].status, StepStatus::Success, "{task}");
    }
    let lines = logs(&cluster, &id).await;
    let text: Vec<String> = lines.iter().map(|l| format!("{}/{} {} {}", l.task, l.step, l.stream, l.text)).collect();
    assert!(text.contains(&format!("prepare/write stdout hello from prepare/write of {id}")), "{text:#?}");
    assert!(text.contains(&"join/total stdout total 15 lines 5 param tester".to_string()), "{text:#?}");
    assert!(text.contains(&"right/count stderr to stderr".to_string()), "{text:#?}");
    // xenectl logs prints the same lines.
    let printed = String::from_utf8_lossy(&xenectl(&cluster, &["logs", &id]).stdout).into_owned();
    assert!(printed.contains("[join/total] total 15 lines 5 param tester"), "{printed}");

    // The REST trigger: a bearer token is required.
    let rest = &cluster.servers[2].http;
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/dag/runs", Some(&cluster.token), "").await;
    assert_eq!(status, 202, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).expect("json");
    let rest_id = value["runs"][0].as_str().expect("run id").to_string();
    wait_run(&cluster, &_agent, &rest_id, |r| r.status.phase == RunPhase::Success).await;
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/dag/runs", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_post(rest, "/api/v1/workflows/demo/pipelines/nope/runs", Some(&cluster.token), "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no pipeline \\\"nope\\\""), "{body}");
}

async fn logs_missing(cluster: &TestCluster, id: &str) -> bool {
    let range =
        pb::RangeRequest { key: format!("/xene/logs/{id}/").into_bytes(), prefix: true, limit: 0, serializable: false };
    cluster.kv(0).range(cluster.request(range)).await.expect("range").into_inner().kvs.is_empty()
}

async fn http_post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retries_timeouts_and_cancellation() {
    let (cluster, agent) = setup().await;

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
    assert_eq!(run.status.tasks["after"].status, StepStatus::NotExecuted, "a task after a failed one never runs");
    let watched = xenectl(&cluster, &["run", "demo/failing", "--watch"]);
    assert!(!watched.status.success(), "--watch exits non-zero for a failed run");

    let flaky = start(&cluster, "flaky", &[]).await;
    let run = wait_run(&cluster, &agent, &flaky, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Success, "{run:#?}");
    assert_eq!(run.status.tasks["retried"].attempt, 1, "succeeded on the second attempt");

    let slow = start(&cluster, "slow", &[]).await;
    let started = Instant::now();
    let run = wait_run(&cluster, &agent, &slow, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Error);
    assert_eq!(run.status.tasks["sleepy"].steps[0].reason, Some(ErrorReason::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(15), "the step was stopped at its timeout");

    let long = start(&cluster, "long", &[]).await;
    wait_run(&cluster, &agent, &long, |r| r.status.phase == RunPhase::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = xenectl(&cluster, &["cancel", &long]);
    assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
    let run = wait_run(&cluster, &agent, &long, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.phase, RunPhase::Cancelled);
    let lines = logs(&cluster, &long).await;
    assert!(lines.iter().any(|l| l.text == "got TERM"), "the step got SIGTERM first: {lines:?}");

    // Only the last three finished runs of a pipeline are kept (XENE_RUN_HISTORY=3 here).
    for _ in 0..2 {
        let id = start(&cluster, "failing", &[]).await;
        wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kept = String::from_utf8_lossy(&xenectl(&cluster, &["runs", "demo/failing"]).stdout).lines().count() - 1;
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

    // Every run is listed with its phase.
    let listed = String::from_utf8_lossy(&xenectl(&cluster, &["runs", "demo"]).stdout).into_owned();
    assert!(listed.contains("Error") && listed.contains("Cancelled") && listed.contains("Success"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lease_epoch_is_fenced_off() {
    let (cluster, mut agent) = setup().await;
    let long = start(&cluster, "long", &[]).await;
    let running = wait_run(&cluster, &agent, &long, |r| r.status.phase == RunPhase::Running).await;
    let epoch = running.status.lease_epoch.expect("epoch");
    // The agent dies mid-run; the lease moves away (no other agent: it is revoked), and the run
    // fails with AgentLost instead of hanging.
    agent.kill();
    let lost = wait_run(&cluster, &agent, &long, |r| r.status.phase.is_terminal()).await;
    assert_eq!(lost.status.phase, RunPhase::Error);
    assert_eq!(lost.status.reason, Some(ErrorReason::AgentLost));

    // The agent's credential replays a write under its old epoch: refused.
    let credential: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.data_dir.join("agent.json")).expect("credential"))
            .expect("json");
    let credential = credential["credential"].as_str().expect("credential").to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = pb::Hello { labels: Default::default(), capacity: 1, held: vec![], version: "test".into() };
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.expect("hello");
    let mut stale = running.clone();
    stale.status.phase = RunPhase::Success;
    let update = pb::RunUpdate { run: long.clone(), epoch, run_json: serde_json::to_string(&stale).expect("json") };
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::RunUpdate(update)) }).await.expect("update");
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().expect("ascii"));
    let mut session = xene_proto::agent_service_client::AgentServiceClient::new(cluster.channel(leader))
        .session(request)
        .await
        .expect("session")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fenced = false;
    while Instant::now() < deadline && !fenced {
        let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), session.next()).await else { break };
        if let Some(pb::server_message::Body::Fenced(f)) = message.body {
            assert_eq!(f.run, long);
            assert_eq!(f.epoch, epoch);
            fenced = true;
        }
    }
    drop(tx);
    assert!(fenced, "the server answers a stale-epoch write with Fenced");
    let after = wait_run(&cluster, &agent, &long, |_| true).await;
    assert_eq!(after.status.phase, RunPhase::Error, "the stale write changed nothing");
    assert_eq!(after.status.reason, Some(ErrorReason::AgentLost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_steps_masked_and_never_come_back() {
    let (cluster, agent) = setup().await;
    let set = xenectl(&cluster, &["secret", "set", "api-token", "--from-literal", "value=s3cret-value"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let listed = String::from_utf8_lossy(&xenectl(&cluster, &["secret", "list"]).stdout).into_owned();
    assert!(listed.contains("api-token") && listed.contains("value"), "{listed}");
    assert!(!listed.contains("s3cret-value"), "values are never returned: {listed}");

    let id = start(&cluster, "secretive", &[]).await;
    let run = wait_run(&cluster, &agent, &id, |r| r.status.phase.is_terminal()).await;
    assert_eq!(run.status.tasks["use"].status, StepStatus::Success, "the step saw the secret's value: {run:#?}");
    assert_eq!(run.status.tasks["missing"].steps[0].reason, Some(ErrorReason::InfrastructureError));
    let lines = logs(&cluster, &id).await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"token is ***"), "masked in the logs: {texts:?}");
    assert!(!texts.iter().any(|t| t.contains("s3cret-value")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("secret \"not-there\"") && t.contains("xenectl secret set")), "{texts:?}");

    let deleted = xenectl(&cluster, &["secret", "delete", "api-token"]);
    assert!(deleted.status.success());
    let again = xenectl(&cluster, &["secret", "delete", "api-token"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"));
}

/// Builds the local busybox image the examples use (no registry is reachable).
fn busybox_image() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.sh");
    let status = Command::new("bash").arg(script).status().expect("run busybox-image.sh");
    assert!(status.success(), "scripts/busybox-image.sh failed: these tests need Docker and a local image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_runs_in_containers_sharing_the_run_workspace() {
    busybox_image();
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let token =
        String::from_utf8_lossy(&xenectl(&cluster, &["token", "create", "--kind", "agent"]).stdout).trim().to_string();
    let agent_name = format!("docker-{}", std::process::id());
    let agent = cluster.start_agent_with(&agent_name, "os=linux", &token, "docker");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fan-out-fan-in.yaml");
    let applied = xenectl(&cluster, &["apply", "-f", &examples.display().to_string()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&xenectl(&cluster, &["get", "pipelines", "fan-out-fan-in/shards"]).stdout)
        .contains(" Scheduled")
    {
        assert!(Instant::now() < deadline, "not placed: {}", agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = pb::CreateRunRequest {
        workflow: "fan-out-fan-in".into(),
        pipeline: "shards".into(),
        parameters: Default::default(),
    };
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
