//! A leader cut off from the other servers, still reached by its agents, must not keep them
//! working for it (DESIGN §7.5, ARCHITECTURE, the server's invariants): it cannot confirm its
//! leadership, so it stops acknowledging their heartbeats. Agents that reach other servers
//! find the new leader before their TTL ends, and the run in progress keeps going on the same
//! agent, once, and succeeds; an agent that reaches only the cut-off leader stops its run
//! within a TTL, before the new leader gives its pipeline away. Before this held, the cut-off
//! leader kept acknowledging: its agents never reached the new leader, which counted them
//! silent after the TTL and took their pipelines while they kept running.

use std::path::Path;
use std::time::{Duration, Instant};

use xene_chaos_tests::agent_proc::AgentProc;
use xene_chaos_tests::harness::{ClusterOptions, TestCluster};
use xene_chaos_tests::network::{Cut, Network};
use xene_model::status::RunPhase;
use xene_model::RunObject;
use xene_proto as pb;
use xene_proto::object_service_client::ObjectServiceClient;
use xene_proto::run_service_client::RunServiceClient;

const SERVERS: usize = 3;
/// The servers' agent TTL. An agent keeps its leases through a leader's isolation only if it
/// reaches the new leader within a TTL of its last acknowledged heartbeat, so the TTL must
/// outlast an election (about 0.9–1.2 s with the timing below: a leader lease of twice the
/// election timeout, then a random timeout) with room to reconnect; 2 s was too tight.
const AGENT_TTL: Duration = Duration::from_millis(3000);
/// How long the leader stays cut off: two TTLs, so the new leader's grace for agents (a TTL
/// from its election) ends well inside it.
const ISOLATION: Duration = Duration::from_millis(6000);
/// Ledger records the step writes, one every 100 ms or so: longer than the isolation.
const TICKS: usize = 100;

fn manifest(ledger: &Path) -> String {
    format!(
        r#"apiVersion: xene.dev/v1
kind: Workflow
metadata: {{name: iso}}
spec:
  pipelines:
    long:
      executor: {{type: process}}
      tasks:
        work:
          steps:
            - name: ticks
              run: |
                t() {{ read up rest < /proc/uptime; echo "$XENE_AGENT $$ $1 $up" >> '{ledger}'; }}
                t start
                i=1
                while [ "$i" -le {TICKS} ]; do t tick; sleep 0.1; i=$((i + 1)); done
                t end
"#,
        ledger = ledger.display()
    )
}

/// One execution of the step as the ledger shows it: agent, shell PID, first and last record
/// (seconds of uptime), and whether it wrote its `end`.
#[derive(Debug)]
struct Execution {
    agent: String,
    pid: String,
    first: f64,
    last: f64,
    ended: bool,
}

fn executions(ledger: &Path) -> Vec<Execution> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut found: Vec<Execution> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [agent, pid, what, up] = fields[..] else { panic!("ledger line {line:?} is not `agent pid what uptime`") };
        let up: f64 = up.parse().unwrap_or_else(|_| panic!("ledger line {line:?}: uptime is not a number"));
        match found.iter_mut().find(|e| e.agent == agent && e.pid == pid) {
            Some(execution) => {
                execution.last = up;
                execution.ended |= what == "end";
            }
            None => found.push(Execution {
                agent: agent.into(),
                pid: pid.into(),
                first: up,
                last: up,
                ended: what == "end",
            }),
        }
    }
    found
}

async fn get_run(cluster: &TestCluster, server: usize, id: &str) -> Result<RunObject, String> {
    let reply = RunServiceClient::new(cluster.channel(server))
        .get(cluster.request(pb::GetRunRequest { id: id.into() }))
        .await
        .map_err(|status| format!("get run from server {server}: {status}"))?;
    serde_json::from_str(&reply.into_inner().json).map_err(|e| format!("run json: {e}"))
}

/// Three servers behind proxies (advertising their client proxies) and an agent join token.
async fn cluster() -> (TestCluster, Network, String) {
    let (network, mut plans) = Network::plan_advertising_client_proxies(SERVERS).await.expect("start the proxies");
    for plan in &mut plans {
        plan.env.push(("XENE_AGENT_TTL_MS".into(), AGENT_TTL.as_millis().to_string()));
    }
    let options =
        ClusterOptions { servers: SERVERS, heartbeat_ms: 100, election_timeout_ms: 300, ..ClusterOptions::default() };
    let cluster = TestCluster::start_planned(options, plans).await;
    let created = cluster.xenectl(&["token", "create", "--kind", "agent"]);
    assert!(created.status.success(), "token create: {}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    (cluster, network, token)
}

async fn apply(cluster: &TestCluster, ledger: &Path) {
    ObjectServiceClient::new(cluster.channel(0))
        .apply(cluster.request(pb::ApplyRequest { manifest: manifest(ledger) }))
        .await
        .expect("apply the workflow");
}

fn tails(agents: &[&AgentProc]) -> String {
    agents.iter().map(|a| format!("--- {} ---\n{}", a.name, a.log_tail(30))).collect::<Vec<_>>().join("\n")
}

/// Starts the run once its pipeline is placed, waits for its step to begin and for the
/// cluster to have recorded it `Running` on an agent; returns its ID.
///
/// An agent starts a run's steps once its `StartingUp` is applied, and reports `Running` as
/// they start (ARCHITECTURE, the server's invariants). The tests here are about a run the
/// cluster knows is running, so they cut the leader only once a server has applied
/// `Running`.
async fn start_run(cluster: &TestCluster, ledger: &Path, agents: &[&AgentProc]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let started = cluster.xenectl(&["run", "iso/long"]);
        if started.status.success() {
            break String::from_utf8_lossy(&started.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "xenectl run iso/long: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            tails(agents)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while executions(ledger).is_empty() {
        assert!(Instant::now() < deadline, "the step did not start\n{}\n{}", cluster.logs(), tails(agents));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A server applies only committed entries, so `Running` read from any of them is recorded.
    loop {
        let run = get_run(cluster, 0, &id).await;
        if run.as_ref().is_ok_and(|r| r.status.phase == RunPhase::Running && r.status.agent.is_some()) {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} was not recorded Running: {run:?}\n{}\n{}",
            cluster.logs(),
            tails(agents)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until one of `others` leads, and returns it.
async fn new_leader(cluster: &TestCluster, others: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for &i in others {
            if cluster.status(i).await.is_some_and(|s| s.state == "leader") {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no new leader among {others:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the run to end, asking server `at`.
async fn wait_ended(cluster: &TestCluster, at: usize, id: &str, agents: &[&AgentProc]) -> RunObject {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let run = get_run(cluster, at, id).await;
        if let Ok(run) = &run {
            if run.status.phase.is_terminal() {
                return run.clone();
            }
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run:?}\n{}\n{}", cluster.logs(), tails(agents));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds since boot, the ledger's clock.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    text.split_whitespace().next().and_then(|s| s.parse().ok()).expect("/proc/uptime starts with a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_leave_a_leader_cut_off_from_the_others_and_their_run_runs_once() {
    let (cluster, network, token) = cluster().await;
    let ledger = cluster.dir.join("ledger");
    let proxies: Vec<String> = (0..SERVERS).map(|i| network.client_addr(i).to_string()).collect();
    let a = cluster.start_agent_via("iso-a", "os=linux", &token, "process", &proxies);
    let b = cluster.start_agent_via("iso-b", "os=linux", &token, "process", &proxies);
    let agents = [&a, &b];
    apply(&cluster, &ledger).await;
    let id = start_run(&cluster, &ledger, &agents).await;

    // Cut the leader off from the other servers; agents still reach every server.
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    network.isolate(old, Cut::Blackhole);
    let cut_at = Instant::now();
    let others: Vec<usize> = (0..SERVERS).filter(|i| *i != old).collect();
    // The others elect a leader of their own; the cut-off one still believes it leads.
    let new = new_leader(&cluster, &others).await;
    tokio::time::sleep(ISOLATION.saturating_sub(cut_at.elapsed())).await;
    // Mid-isolation, past the new leader's grace: the run is still the first agent's.
    let during = get_run(&cluster, new, &id).await;
    network.heal();

    let run = wait_ended(&cluster, new, &id, &agents).await;
    let ran = executions(&ledger);
    let context = format!(
        "leader {old} cut off, {new} elected; run mid-isolation: {during:#?}\nrun at the end: {run:#?}\nexecutions: {ran:#?}\n{}\n{}",
        cluster.logs(),
        tails(&agents)
    );
    println!(
        "leader {old} cut off for {:.1} s, {new} elected; executions: {ran:?}; run {id} ended {:?}",
        ISOLATION.as_secs_f64(),
        run.status.phase
    );
    assert_eq!(run.status.phase, RunPhase::Success, "{context}");
    assert_eq!(ran.len(), 1, "the step ran more than once: {context}");
    assert!(ran[0].ended, "{context}");
    assert!(ran[0].last - ran[0].first >= ISOLATION.as_secs_f64(), "the step outlived the isolation: {context}");
    let during = during.unwrap_or_else(|e| panic!("{e}\n{context}"));
    assert_eq!(during.status.agent.as_deref(), Some(ran[0].agent.as_str()), "{context}");
    assert_eq!(during.status.phase, RunPhase::Running, "{context}");
}

/// The other side of the same guarantee: an agent that reaches only the cut-off leader cannot
/// hear from the new one, so it must stop its run on its own, within a TTL, before the new
/// leader (a TTL after its election) counts it lost and gives its pipeline to another agent.
/// Before the fix the cut-off leader kept acknowledging, and the run went on to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_reaches_only_a_cut_off_leader_stops_its_run_within_a_ttl() {
    let (cluster, network, token) = cluster().await;
    let ledger = cluster.dir.join("ledger");
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    // The first agent knows only the leader; the pipeline is placed on it, as the only agent.
    let a = cluster.start_agent_via("iso-a", "os=linux", &token, "process", &[network.client_addr(old).to_string()]);
    apply(&cluster, &ledger).await;
    let id = start_run(&cluster, &ledger, &[&a]).await;
    // A second agent, reaching every server, for the pipeline to move to.
    let proxies: Vec<String> = (0..SERVERS).map(|i| network.client_addr(i).to_string()).collect();
    let b = cluster.start_agent_via("iso-b", "os=linux", &token, "process", &proxies);
    let agents = [&a, &b];
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)).await, old, "the leader changed before the cut");

    network.isolate(old, Cut::Blackhole);
    let (cut_at, cut_up) = (Instant::now(), uptime());
    let others: Vec<usize> = (0..SERVERS).filter(|i| *i != old).collect();
    let new = new_leader(&cluster, &others).await;
    let elected = cut_at.elapsed();
    tokio::time::sleep(ISOLATION.saturating_sub(cut_at.elapsed())).await;
    let ran = executions(&ledger);
    let during = get_run(&cluster, new, &id).await;
    network.heal();
    let run = wait_ended(&cluster, new, &id, &agents).await;

    // The last heartbeat the cut-off leader acknowledged left at most a heartbeat interval
    // (TTL / 4) before the cut or up to an election timeout (300 ms) after it; the agent's
    // fence fires a TTL after that, then the step is stopped. Half a second of slack.
    let bound = AGENT_TTL.as_secs_f64() + 0.3 + 0.5;
    let context = format!(
        "leader {old} cut off at uptime {cut_up:.2}, {new} elected {:.2} s later; run mid-isolation: {during:#?}\nrun at the end: {run:#?}\nexecutions: {ran:#?}\n{}\n{}",
        elected.as_secs_f64(),
        cluster.logs(),
        tails(&agents)
    );
    println!(
        "leader {old} cut off, {new} elected after {:.2} s; executions (uptime, cut at {cut_up:.2}): {ran:?}; run {id} ended {:?}",
        elected.as_secs_f64(),
        run.status.phase
    );
    assert_eq!(ran.len(), 1, "{context}");
    assert_eq!(ran[0].agent, "iso-a", "{context}");
    assert!(!ran[0].ended, "the step ran to its end: {context}");
    assert!(
        ran[0].last - cut_up <= bound,
        "the agent kept running {:.2} s after the cut (bound {bound:.2} s): {context}",
        ran[0].last - cut_up
    );
    assert_ne!(run.status.phase, RunPhase::Success, "{context}");
}
