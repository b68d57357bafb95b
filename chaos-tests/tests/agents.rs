//! Agents as real processes (issue "Agents"; DESIGN §7): join tokens, spreading, selectors,
//! failover of leases when an agent dies, and the agent role's limits.

use std::time::{Duration, Instant};

use tonic::Code;
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_model::PipelineObject;
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;

/// Agents are marked down after this much silence in these tests.
const AGENT_TTL_MS: u64 = 2_000;

async fn cluster() -> TestCluster {
    // The servers inherit this from the test process (one process per test under nextest).
    std::env::set_var("XENE_AGENT_TTL_MS", AGENT_TTL_MS.to_string());
    TestCluster::start(ClusterOptions::default()).await
}

fn join_token(cluster: &TestCluster, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--kind", "agent"];
    args.extend_from_slice(extra);
    let output = cluster.xenectl(&args);
    assert!(output.status.success(), "token create: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

async fn pipelines(cluster: &TestCluster) -> Vec<PipelineObject> {
    let request =
        pb::ListObjectsRequest { kind: "pipelines".into(), label_selector: String::new(), workflow: String::new() };
    let reply =
        ObjectServiceClient::new(cluster.channel(0)).list(cluster.request(request)).await.expect("list").into_inner();
    reply.objects.iter().map(|o| serde_json::from_str(&o.json).expect("pipeline json")).collect()
}

/// Waits until `check` holds for the pipeline objects, returning them.
async fn wait_pipelines(
    cluster: &TestCluster,
    what: &str,
    timeout: Duration,
    check: impl Fn(&[PipelineObject]) -> bool,
) -> Vec<PipelineObject> {
    let deadline = Instant::now() + timeout;
    loop {
        let current = pipelines(cluster).await;
        if check(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}; pipelines: {current:#?}\n{}\n{}",
            cluster.logs(),
            agent_logs(cluster)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn agent_logs(cluster: &TestCluster) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(&cluster.dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("agent-") && name.ends_with(".log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name} ---\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n")));
        }
    }
    out
}

fn workflow(name: &str, pipelines: &[(&str, &str)]) -> String {
    let mut text =
        format!("apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: {name}}}\nspec:\n  pipelines:\n");
    for (pipeline, selector) in pipelines {
        text.push_str(&format!("    {pipeline}:\n"));
        if !selector.is_empty() {
            text.push_str(&format!("      agentSelector: {{{selector}}}\n"));
        }
        text.push_str("      executor: {type: process}\n      tasks:\n        t: {steps: [{name: s, run: 'true'}]}\n");
    }
    text
}

async fn apply(cluster: &TestCluster, manifest: &str) {
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: manifest.into() }))
        .await
        .expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_checked_and_used_once() {
    let cluster = cluster().await;
    // A good token: the agent joins and keeps its credential; a restart needs no token.
    let token = join_token(&cluster, &["--uses", "1"]);
    let mut first = cluster.start_agent("first", "os=linux", &token);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !first.data_dir.join("agent.json").exists() {
        assert!(Instant::now() < deadline, "no credential:\n{}", first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(first.data_dir.join("agent.json")).expect("stat").permissions().mode() & 0o777, 0o600);
    // What a crashed agent would leave in its work directory: gone once it starts again.
    let work = first.data_dir.join("work");
    let old = "gone.main.20261128000000abcdef";
    std::fs::create_dir_all(work.join(old).join("src")).expect("plant a workspace");
    std::fs::create_dir_all(work.join(format!("{old}.outputs"))).expect("plant an outputs directory");
    std::fs::write(work.join(format!("{old}.event.json")), "{}").expect("plant a payload");
    std::fs::write(work.join("notes.txt"), "not a run's").expect("plant something else");
    first.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = || -> Vec<String> {
        let entries = std::fs::read_dir(&work).expect("read the work directory");
        let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
        names.retain(|name| name != ".steps");
        names.sort();
        names
    };
    while left() != ["notes.txt"] {
        assert!(Instant::now() < deadline, "the restarted agent left {:?}:\n{}", left(), first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second agent on the same data directory stops at once and touches nothing.
    let live = "live.main.20261128000001abcdef";
    std::fs::create_dir_all(work.join(live)).expect("a workspace in use");
    let mut twin = first.second_instance();
    wait_refused(&mut twin, "another xene-agent").await;
    let refusal = twin.log_tail(5);
    assert!(refusal.contains(&first.data_dir.display().to_string()), "{refusal}");
    assert!(refusal.contains(&format!("(pid {})", first.pid().expect("the first agent runs"))), "{refusal}");
    assert!(work.join(live).exists(), "the refused agent swept the running one's workspace");
    std::fs::remove_dir(work.join(live)).expect("remove the stand-in workspace");

    // The same token a second time: used up.
    let mut second = cluster.start_agent("second", "", &token);
    wait_refused(&mut second, "used up").await;

    // Revoked, expired and unknown tokens.
    let revoked = join_token(&cluster, &[]);
    let list = String::from_utf8_lossy(&cluster.xenectl(&["token", "list"]).stdout).into_owned();
    let id = revoked.split('_').nth(1).expect("token id");
    assert!(list.contains(id), "{list}");
    let output = cluster.xenectl(&["token", "revoke", id]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut third = cluster.start_agent("third", "", &revoked);
    wait_refused(&mut third, "revoked").await;

    let expiring = join_token(&cluster, &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut fourth = cluster.start_agent("fourth", "", &expiring);
    wait_refused(&mut fourth, "expired").await;

    let mut fifth = cluster.start_agent("fifth", "", "xene_000000000000_unknown");
    wait_refused(&mut fifth, "invalid token").await;

    // The first agent, restarted without a token, is connected.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = String::from_utf8_lossy(&cluster.xenectl(&["agents"]).stdout).into_owned();
        if agents.lines().any(|l| l.starts_with("first") && l.contains(" Up ")) {
            assert!(!agents.contains("second"), "refused agents are not recorded: {agents}");
            break;
        }
        assert!(Instant::now() < deadline, "the restarted agent is not up: {agents}\n{}", first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An agent's credential can use the agent API and nothing else.
    let credential: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.data_dir.join("agent.json")).expect("read")).expect("json");
    let mut request =
        tonic::Request::new(pb::RangeRequest { key: b"/".to_vec(), prefix: true, limit: 0, serializable: true });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", credential["credential"].as_str().expect("credential")).parse().expect("ascii"),
    );
    let denied = cluster.kv(0).range(request).await.expect_err("agent credential on the KV API");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
}

/// A join whose answer was lost (a timeout during an election) is repeated by the agent: the
/// same token may repeat it, though its only use is spent, and the first credential (which
/// never arrived) stops working; another token cannot take the name (a review found the agent
/// refused for ever as "already joined").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_answer_was_lost_can_be_repeated_with_its_token() {
    let cluster = cluster().await;
    let token = join_token(&cluster, &["--uses", "1"]);
    let join = |token: &str| pb::JoinAgentRequest {
        join_token: token.into(),
        name: "again".into(),
        labels: Default::default(),
        capacity: 0,
    };
    let mut client = pb::agent_service_client::AgentServiceClient::new(cluster.channel(0));
    let first = client.join(join(&token)).await.expect("the first join").into_inner();
    let second = client.join(join(&token)).await.expect("the join repeated").into_inner();
    assert_ne!(first.credential, second.credential);
    let kv_with = |credential: &str| {
        let mut request =
            tonic::Request::new(pb::RangeRequest { key: b"/".to_vec(), prefix: true, limit: 0, serializable: true });
        request.metadata_mut().insert("authorization", format!("Bearer {credential}").parse().expect("ascii"));
        request
    };
    let denied = cluster.kv(1).range(kv_with(&second.credential)).await.expect_err("agent credential on the KV API");
    assert_eq!(denied.code(), Code::PermissionDenied, "the new credential is an agent's: {denied}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let old = cluster.kv(1).range(kv_with(&first.credential)).await.expect_err("the old credential");
        if old.code() == Code::Unauthenticated {
            break;
        }
        assert!(Instant::now() < deadline, "the first credential still works: {old}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = join_token(&cluster, &[]);
    let taken = client.join(join(&other)).await.expect_err("another token, the same name");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken}");
}

async fn wait_refused(agent: &mut xene_chaos_tests::agent_proc::AgentProc, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = agent.exited() {
            assert!(!status.success(), "a refused agent exits non-zero");
            let log = agent.log_tail(5);
            assert!(log.contains(reason), "agent {} should say {reason:?}: {log}", agent.name);
            return;
        }
        assert!(Instant::now() < deadline, "agent {} was not refused: {}", agent.name, agent.log_tail(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// DESIGN §7.6: heartbeats are not Raft writes. With two agents heartbeating (every 500 ms at
/// a TTL of 2 s) and nothing else happening, the leader's log does not grow: a window of 3 s
/// (about 12 heartbeats) passes without a new entry. A few windows are allowed for the
/// agents' joins and state changes to settle first; were heartbeats written, every window
/// would grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_not_raft_writes() {
    let cluster = cluster().await;
    let token = join_token(&cluster, &[]);
    let _one = cluster.start_agent("beat-one", "os=linux", &token);
    let _two = cluster.start_agent("beat-two", "os=linux", &token);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = String::from_utf8_lossy(&cluster.xenectl(&["agents"]).stdout).into_owned();
        if agents.lines().filter(|l| l.contains(" Up ")).count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both agents up: {agents}\n{}", agent_logs(&cluster));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let last_index = || async { cluster.status(leader).await.expect("leader status").last_log_index };
    let mut windows = Vec::new();
    for _ in 0..4 {
        let before = last_index().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = last_index().await;
        windows.push((before, after));
        if before == after {
            return;
        }
    }
    panic!("the leader's log grew in every 3 s window while agents only heartbeat: {windows:?}\n{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_spread_follow_selectors_and_move_when_an_agent_dies() {
    let cluster = cluster().await;
    let token = join_token(&cluster, &[]);
    apply(&cluster, &workflow("early", &[("only", "")])).await;
    wait_pipelines(&cluster, "NotScheduled with no agents", Duration::from_secs(10), |p| {
        p.len() == 1 && p[0].status.reason.as_deref() == Some("no agents")
    })
    .await;

    let _one = cluster.start_agent("one", "os=linux", &token);
    let mut two = cluster.start_agent("two", "os=linux", &token);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = String::from_utf8_lossy(&cluster.xenectl(&["agents"]).stdout).into_owned();
        if agents.lines().filter(|l| l.contains(" Up ")).count() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both agents up: {agents}\n{}\n{}", cluster.logs(), agent_logs(&cluster));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Placed as soon as an agent can take it. Leases are not moved to rebalance later: moving one
    // would interrupt the pipeline's runs.
    wait_pipelines(&cluster, "the early pipeline placed", Duration::from_secs(10), |p| p[0].status.agent.is_some())
        .await;

    apply(&cluster, &workflow("many", &[("a", ""), ("b", ""), ("c", ""), ("d", ""), ("gpu", "gpu: \"true\"")])).await;
    let placed = wait_pipelines(&cluster, "five pipelines spread over two agents", Duration::from_secs(20), |p| {
        let on = |agent: &str| p.iter().filter(|p| p.status.agent.as_deref() == Some(agent)).count();
        // The gpu pipeline's status is written in the same pass, after the others': wait for it
        // to leave the "no agents" it was created with.
        let gpu_seen = p.iter().any(|p| p.spec.pipeline == "gpu" && p.status.reason.as_deref() != Some("no agents"));
        on("one") + on("two") == 5 && on("one").abs_diff(on("two")) <= 1 && gpu_seen
    })
    .await;
    let gpu = placed.iter().find(|p| p.spec.pipeline == "gpu").expect("gpu pipeline");
    assert_eq!(gpu.status.phase.as_str(), "NotScheduled");
    assert_eq!(gpu.status.reason.as_deref(), Some("no agent matches agentSelector {gpu=true}"));
    for p in placed.iter().filter(|p| p.spec.pipeline != "gpu") {
        assert_eq!(p.status.phase.as_str(), "Scheduled");
        assert!(p.status.lease_epoch.is_some_and(|e| e > 0), "{p:?}");
    }

    // A matching agent joins: the pipeline is placed on it.
    let _gpu = cluster.start_agent("gpu-box", "os=linux,gpu=true", &token);
    wait_pipelines(&cluster, "the gpu pipeline placed", Duration::from_secs(20), |p| {
        p.iter().any(|p| p.spec.pipeline == "gpu" && p.status.agent.as_deref() == Some("gpu-box"))
    })
    .await;

    // SIGKILL agent two: its pipelines move with new epochs within the TTL and a few seconds.
    let before: Vec<(String, u64)> = pipelines(&cluster)
        .await
        .into_iter()
        .filter(|p| p.status.agent.as_deref() == Some("two"))
        .map(|p| (p.metadata.name.clone(), p.status.lease_epoch.unwrap_or(0)))
        .collect();
    assert!(before.len() >= 2, "{before:?}");
    let killed = Instant::now();
    two.kill();
    let moved = wait_pipelines(
        &cluster,
        "agent two's pipelines moved",
        Duration::from_millis(AGENT_TTL_MS) + Duration::from_secs(8),
        |p| {
            before.iter().all(|(name, _)| {
                p.iter().any(|p| {
                    &p.metadata.name == name && p.status.agent.is_some() && p.status.agent.as_deref() != Some("two")
                })
            })
        },
    )
    .await;
    println!(
        "pipelines moved {} ms after SIGKILL of their agent (agent TTL {AGENT_TTL_MS} ms)",
        killed.elapsed().as_millis()
    );
    for (name, old_epoch) in &before {
        let now = moved.iter().find(|p| &p.metadata.name == name).expect("pipeline");
        assert!(now.status.lease_epoch.unwrap_or(0) > *old_epoch, "a moved lease has a new epoch: {now:?}");
    }
    let agents = String::from_utf8_lossy(&cluster.xenectl(&["agents"]).stdout).into_owned();
    assert!(agents.lines().any(|l| l.starts_with("two") && l.contains("Down")), "{agents}");
}
