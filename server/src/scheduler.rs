//! The leader's scheduler (DESIGN §7.3–§7.5): a level-triggered reconciler that compares the
//! stored pipelines, agents and leases with the live sessions, and acts to close the gap:
//! marks silent agents down (after one TTL of grace for a new leader), moves their leases
//! with new epochs, places unplaced pipelines on the least loaded matching agent, records why
//! a pipeline cannot be placed, and tells each agent what it holds.
//!
//! It runs only while this server leads; [`run`] starts it on becoming leader and stops it,
//! dropping every agent session, on losing leadership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use tokio_util::sync::CancellationToken;
use xene_model::status::{PipelinePhase, RunPhase};
use xene_model::{PipelineObject, Workflow, REASON_NO_AGENTS};
use xene_proto::{server_message, LeaseGrant, LeaseRevoke, ServerMessage};
use xene_raft_store::{Compare, NodeId, NodeInfo, Op, Txn, Watcher};

use crate::agents::{AgentHub, AgentRecord, AgentState, LeaseRecord, SessionView, Told};
use crate::batch::{self, GuardedWrite};
use crate::error::Result;
use crate::keys;
use crate::node::ClusterNode;

/// Owns the scheduler for the life of the server: runs it during each term this server leads.
pub async fn run(node: Arc<ClusterNode>, hub: Arc<AgentHub>, run_history: usize, stop: CancellationToken) {
    let mut metrics = node.raft.metrics();
    loop {
        while !node.is_leader() {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
        // Leading a term, not leading: a server that loses its leadership and wins the next
        // election between two looks at its role (a deposed leader cut off from the others
        // does, when it comes back) starts over, with a fresh grace period for agents to
        // reconnect and with the sessions of the old term closed.
        let term = metrics.borrow().current_term;
        tracing::info!(node = node.id, term, "leading: the scheduler starts");
        let leader_since = Instant::now();
        let mut last_sweep = Instant::now();
        let mut changes = watch_store(&node);
        loop {
            if let Err(e) = reconcile(&node, &hub, leader_since, run_history).await {
                tracing::warn!(error = %e, "scheduling pass failed; retrying");
            }
            if last_sweep.elapsed() > Duration::from_secs(60) {
                last_sweep = Instant::now();
                match crate::triggers::webhook::forget_old_deliveries(&node).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "forgot webhook deliveries older than 7 days"),
                    Err(e) => tracing::warn!(error = %e, "forgetting old webhook deliveries failed"),
                }
            }
            // A pass runs when something it acts on changed: this server's role, a stored
            // object, agent, lease or run, or a session; else twice a second (liveness). Not on
            // every applied entry: a busy store would keep the scheduler (and its read
            // barriers) running flat out (PERF W1).
            let role = role_of(&metrics.borrow());
            tokio::select! {
                _ = stop.cancelled() => { hub.clear(); return; }
                _ = metrics.wait_for(|m| role_of(m) != role) => {}
                _ = store_changed(&node, &mut changes) => {}
                _ = hub.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if !node.is_leader() || metrics.borrow().current_term != term {
                break;
            }
        }
        let now = metrics.borrow().current_term;
        if node.is_leader() {
            tracing::info!(
                node = node.id,
                term,
                now,
                "leading a new term: the scheduler starts over and agents reconnect"
            );
        } else {
            tracing::info!(node = node.id, term, "no longer leading: the scheduler stops and agents reconnect");
            node.metrics.clear_scheduler();
        }
        hub.clear();
    }
}

/// What the scheduler's running depends on: whether this server leads, in which term, and
/// whom it follows.
fn role_of(metrics: &RaftMetrics<NodeId, NodeInfo>) -> (ServerState, u64, Option<NodeId>) {
    (metrics.state, metrics.current_term, metrics.current_leader)
}

/// The prefixes whose writes the scheduler acts on.
const WATCHED: [&str; 5] = [keys::WORKFLOWS, keys::PIPELINES, keys::AGENTS, keys::LEASES, keys::RUNS];

/// A watch of every write under `/xene/` from now on (`None` if the store is closing).
fn watch_store(node: &ClusterNode) -> Option<Watcher> {
    node.reader.watch(0, b"/xene/".to_vec()).ok()
}

/// Returns once a write under one of [`WATCHED`] was applied. A watch that fell behind its
/// window counts as such a write (the pass that follows reads everything anyway) and starts
/// again from now.
async fn store_changed(node: &ClusterNode, changes: &mut Option<Watcher>) {
    loop {
        let Some(watcher) = changes.as_mut() else { return std::future::pending().await };
        match watcher.next().await {
            Ok(events) => {
                if events.iter().any(|e| WATCHED.iter().any(|prefix| e.kv.key.starts_with(prefix.as_bytes()))) {
                    return;
                }
            }
            Err(_) => {
                *changes = watch_store(node);
                return;
            }
        }
    }
}

/// A stored value and the revision it was last written at.
struct Versioned<T> {
    value: T,
    revision: u64,
}

async fn read_all<T: serde::de::DeserializeOwned>(
    node: &ClusterNode,
    prefix: &str,
) -> Result<BTreeMap<String, Versioned<T>>> {
    let result = node.reader.range(prefix.as_bytes().to_vec(), true, 0).await?;
    let mut out = BTreeMap::new();
    for kv in result.kvs {
        let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
        match serde_json::from_slice::<T>(&kv.value) {
            Ok(value) => {
                out.insert(name, Versioned { value, revision: kv.mod_revision });
            }
            Err(e) => tracing::warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "unreadable record skipped"),
        }
    }
    Ok(out)
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("invariant: plain records serialize to JSON")
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One pass of the scheduler.
#[tracing::instrument(skip_all, fields(node = node.id))]
pub async fn reconcile(node: &ClusterNode, hub: &AgentHub, leader_since: Instant, run_history: usize) -> Result<()> {
    node.read_barrier().await?;
    let mut agents: BTreeMap<String, Versioned<AgentRecord>> = read_all(node, keys::AGENTS).await?;
    let mut leases: BTreeMap<String, Versioned<LeaseRecord>> = read_all(node, keys::LEASES).await?;
    let pipelines: BTreeMap<String, Versioned<PipelineObject>> = read_all(node, keys::PIPELINES).await?;
    let workflows: BTreeMap<String, Versioned<Workflow>> = read_all(node, keys::WORKFLOWS).await?;
    let sessions: BTreeMap<String, SessionView> = hub.views().into_iter().map(|s| (s.name.clone(), s)).collect();
    let grace_over = leader_since.elapsed() > hub.ttl;

    // 1. Liveness: heartbeats live here; only changes of state are written.
    let mut changed = Vec::new();
    for (name, agent) in &agents {
        let session = sessions.get(name);
        let alive = session.is_some_and(|s| s.alive);
        let mut record = agent.value.clone();
        if alive {
            record.state = AgentState::Up;
            if let Some(session) = session {
                record.labels = session.labels.clone();
                record.capacity = session.capacity;
            }
        } else if grace_over {
            record.state = AgentState::Down;
        }
        if record != agent.value {
            tracing::info!(agent = %name, state = record.state.as_str(), "agent state changes");
            changed.push((name.clone(), record));
        }
    }
    let writes = changed
        .iter()
        .map(|(name, record)| {
            let key = keys::agent(name);
            GuardedWrite {
                compare: vec![Compare::mod_revision(key.clone(), agents[name].revision)],
                ops: vec![Op::Put { key: key.into_bytes(), value: to_json(record) }],
            }
        })
        .collect();
    for ((name, record), outcome) in changed.into_iter().zip(batch::leader_writes(node, writes).await?) {
        if let Some(revision) = outcome {
            agents.insert(name, Versioned { value: record, revision });
        }
    }
    let usable = |name: &str| {
        agents.get(name).is_some_and(|a| a.value.state == AgentState::Up) && sessions.get(name).is_some_and(|s| s.alive)
    };

    // 2. Leases that must go: their pipeline is gone, their agent is down, or its labels no
    //    longer match.
    let mut revoked = Vec::new();
    for (pipeline, lease) in &leases {
        let spec = workflows.get(&lease.value.workflow).and_then(|w| w.value.spec.pipelines.get(&lease.value.pipeline));
        let keep = match spec {
            None => false,
            Some(spec) => {
                usable(&lease.value.agent)
                    && agents.get(&lease.value.agent).is_some_and(|a| matches(&spec.agent_selector, &a.value.labels))
            }
        };
        if !keep && (spec.is_none() || grace_over || !agents.contains_key(&lease.value.agent)) {
            revoked.push(pipeline.clone());
        }
    }
    let mut writes = Vec::new();
    for pipeline in &revoked {
        if let Some(lease) = leases.remove(pipeline) {
            tracing::info!(pipeline = %pipeline, agent = %lease.value.agent, epoch = lease.revision, "revoking lease");
            let key = keys::lease(pipeline);
            writes.push(GuardedWrite {
                compare: vec![Compare::mod_revision(key.clone(), lease.revision)],
                ops: vec![Op::Delete { key: key.into_bytes() }],
            });
        }
    }
    batch::leader_writes(node, writes).await?;

    // 3. Place every pipeline without a lease on the least loaded matching agent; then keep
    //    each status object true. Both are written in batches.
    // Agents that can take work, in name order, with their load; the agents matching each
    // distinct selector are found once per pass. Placing P pipelines then costs P scans of
    // integers, not P × A map lookups (PERF W7: 10,000 pipelines on 1,000 agents).
    let mut held: BTreeMap<&str, u32> = BTreeMap::new();
    for lease in leases.values() {
        *held.entry(lease.value.agent.as_str()).or_default() += 1;
    }
    let up: Vec<&String> = agents.keys().filter(|name| usable(name)).collect();
    let mut load: Vec<u32> = up.iter().map(|a| held.get(a.as_str()).copied().unwrap_or(0)).collect();
    let capacity: Vec<u32> = up.iter().map(|a| agents[a.as_str()].value.capacity).collect();
    let mut matching_of: BTreeMap<&BTreeMap<String, String>, Vec<usize>> = BTreeMap::new();
    let ttl_ms = hub.ttl.as_millis() as u64;
    let mut grants: Vec<(String, LeaseRecord)> = Vec::new();
    let mut unplaced: BTreeMap<&String, String> = BTreeMap::new();
    for (name, status) in &pipelines {
        let object = &status.value;
        let Some(spec) =
            workflows.get(&object.spec.workflow).and_then(|w| w.value.spec.pipelines.get(&object.spec.pipeline))
        else {
            continue;
        };
        if leases.contains_key(name) {
            continue;
        }
        let matching = matching_of.entry(&spec.agent_selector).or_insert_with(|| {
            (0..up.len()).filter(|&i| matches(&spec.agent_selector, &agents[up[i].as_str()].value.labels)).collect()
        });
        // The least loaded with room; between equals, the first by name.
        let chosen = matching.iter().copied().filter(|&i| load[i] < capacity[i]).min_by_key(|&i| (load[i], i));
        match chosen {
            Some(i) => {
                load[i] += 1;
                let record = LeaseRecord {
                    workflow: object.spec.workflow.clone(),
                    pipeline: object.spec.pipeline.clone(),
                    agent: up[i].clone(),
                    ttl_ms,
                };
                grants.push((name.clone(), record));
            }
            None => {
                let reason = if up.is_empty() {
                    REASON_NO_AGENTS.to_string()
                } else if matching.is_empty() {
                    format!("no agent matches agentSelector {{{}}}", selector_text(&spec.agent_selector))
                } else {
                    format!("every matching agent is at capacity ({} agents)", matching.len())
                };
                unplaced.insert(name, reason);
            }
        }
    }
    let writes = grants
        .iter()
        .map(|(name, record)| {
            let key = keys::lease(name);
            GuardedWrite {
                compare: vec![Compare::absent(key.clone())],
                ops: vec![Op::Put { key: key.into_bytes(), value: to_json(record) }],
            }
        })
        .collect();
    for ((name, record), outcome) in grants.into_iter().zip(batch::leader_writes(node, writes).await?) {
        // A grant that lost its compare is placed again by the next pass.
        if let Some(epoch) = outcome {
            tracing::info!(pipeline = %name, agent = %record.agent, epoch, "lease granted");
            leases.insert(name, Versioned { value: record, revision: epoch });
        }
    }
    let mut writes = Vec::new();
    for (name, status) in &pipelines {
        let wanted = match (leases.get(name), unplaced.remove(name)) {
            (Some(lease), _) => (PipelinePhase::Scheduled, None, Some(lease.value.agent.clone()), Some(lease.revision)),
            (None, Some(reason)) => (PipelinePhase::NotScheduled, Some(reason), None, None),
            (None, None) => continue,
        };
        writes.extend(status_write(name, status, wanted));
    }
    batch::leader_writes(node, writes).await?;

    // 4. Tell every connected agent what it holds: grants for new epochs and for workflows
    //    applied again (at the same epoch), revokes for the rest. A workflow is encoded once
    //    per pass, however many of its pipelines are granted.
    let mut encoded: BTreeMap<&String, String> = BTreeMap::new();
    let mut held_by: BTreeMap<&String, BTreeMap<&String, &Versioned<LeaseRecord>>> = BTreeMap::new();
    for (pipeline, lease) in &leases {
        held_by.entry(&lease.value.agent).or_default().insert(pipeline, lease);
    }
    for (agent, session) in &sessions {
        let wanted = held_by.remove(agent).unwrap_or_default();
        for (pipeline, lease) in &wanted {
            let workflow = workflows.get(&lease.value.workflow);
            let told = Told { epoch: lease.revision, workflow: workflow.map_or(0, |w| w.revision) };
            if session.told.get(pipeline.as_str()) != Some(&told) {
                let spec = workflow.map(|w| &w.value);
                let workflow_json = match spec {
                    Some(spec) => encoded
                        .entry(&lease.value.workflow)
                        .or_insert_with(|| serde_json::to_string(spec).unwrap_or_default())
                        .clone(),
                    None => String::new(),
                };
                let cron_since_ms = match spec {
                    Some(spec) => crate::triggers::cron::since_ms(node, spec, &lease.value.pipeline).await?,
                    None => Default::default(),
                };
                let grant = LeaseGrant {
                    pipeline: pipeline.to_string(),
                    epoch: lease.revision,
                    workflow_json,
                    cron_since_ms: cron_since_ms.into_iter().collect(),
                    workflow_revision: told.workflow,
                };
                hub.tell(agent, pipeline, Some(told), ServerMessage { body: Some(server_message::Body::Grant(grant)) });
            }
        }
        let told: BTreeSet<&String> = session.told.keys().collect();
        for pipeline in told {
            if !wanted.contains_key(pipeline) {
                let revoke = LeaseRevoke {
                    pipeline: pipeline.clone(),
                    epoch: session.told[pipeline].epoch,
                    reason: "the lease moved or the pipeline is gone".into(),
                };
                hub.tell(agent, pipeline, None, ServerMessage { body: Some(server_message::Body::Revoke(revoke)) });
            }
        }
    }

    // 5. Runs: hand each unfinished run to its pipeline's lease holder; a run started under a
    //    lease that moved has lost its agent (DESIGN §7.4). Keep the last `run_history`
    //    finished runs of each pipeline, with their logs (DESIGN §9.7).
    let all_runs = crate::runs::list_local(node, "", "", "").await?;
    let by_phase: Vec<(RunPhase, usize)> = RunPhase::ALL
        .iter()
        .map(|phase| (*phase, all_runs.iter().filter(|stored| stored.run.status.phase == *phase).count()))
        .collect();
    node.metrics.observe_scheduler(sessions.values().filter(|s| s.connected).count(), leases.len(), &by_phase);
    let mut finished: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for stored in &all_runs {
        if stored.run.status.phase.is_terminal() {
            let key = (stored.run.spec.workflow.clone(), stored.run.spec.pipeline.clone());
            finished.entry(key).or_default().push(stored.run.metadata.name.clone());
        }
    }
    for names in finished.values() {
        // Run IDs sort by creation time within a pipeline.
        let excess = names.len().saturating_sub(run_history.max(1));
        for name in names.iter().take(excess) {
            tracing::info!(run = %name, "removing a run beyond the history limit");
            node.leader_txn(Txn {
                compare: vec![],
                success: vec![
                    Op::Delete { key: keys::run(name).into_bytes() },
                    Op::Delete { key: keys::payload(name).into_bytes() },
                    Op::DeletePrefix { prefix: keys::logs_of(name).into_bytes() },
                ],
                failure: vec![],
            })
            .await?;
        }
    }
    let mut unfinished: BTreeMap<String, Vec<crate::runs::StoredRun>> = BTreeMap::new();
    for stored in all_runs {
        if !stored.run.status.phase.is_terminal() {
            let pipeline = format!("{}/{}", stored.run.spec.workflow, stored.run.spec.pipeline);
            unfinished.entry(pipeline).or_default().push(stored);
        }
    }
    for (pipeline, mut runs) in unfinished {
        runs.sort_by(|a, b| {
            (a.run.metadata.creation_timestamp, &a.run.metadata.name)
                .cmp(&(b.run.metadata.creation_timestamp, &b.run.metadata.name))
        });
        let lease = leases.get(&pipeline);
        let mut live = Vec::new();
        for stored in runs {
            let started_under = stored.run.status.lease_epoch;
            if started_under.is_some() && started_under != lease.map(|l| l.revision) && grace_over {
                // Started again as the pipeline's retry policy allows (once its old agent has
                // had time to stop it), else AgentLost. One waiting or `Pending` again keeps its
                // place among the pipeline's runs: it counts for the concurrency policy, and is
                // handed over only once `Pending` (below).
                let retry_limit = workflows
                    .get(&stored.run.spec.workflow)
                    .and_then(|w| w.value.spec.pipelines.get(&stored.run.spec.pipeline))
                    .and_then(|p| p.retries.as_ref())
                    .map_or(0, |retries| retries.limit);
                if let Some(unfinished) =
                    crate::runs::agent_lost(node, &stored, retry_limit, chrono::Utc::now()).await?
                {
                    live.push(unfinished);
                }
            } else {
                live.push(stored);
            }
        }
        let Some(lease) = lease else { continue };
        let agent = &lease.value.agent;
        let session = sessions.get(agent);
        if grace_over && !session.is_some_and(|s| s.connected) {
            // The holder has no session (a new leader waits one TTL for sessions first): its
            // runs in flight are `Unknown` until it reports them again, or until its lease
            // moves and they are started again or fail as `AgentLost`.
            for stored in &live {
                let phase = stored.run.status.phase;
                let in_flight = matches!(phase, RunPhase::StartingUp | RunPhase::Running | RunPhase::ShuttingDown);
                // Checked again now: a session opened since the pass began has the agent
                // report its runs, which this write must not follow.
                if in_flight && stored.run.status.lease_epoch == Some(lease.revision) && !hub.connected(agent) {
                    crate::runs::agent_unreachable(node, stored).await?;
                }
            }
        }
        if !session.is_some_and(|s| s.alive) {
            continue;
        }
        let concurrency = workflows
            .get(&lease.value.workflow)
            .and_then(|w| w.value.spec.pipelines.get(&lease.value.pipeline))
            .and_then(|p| p.concurrency.clone())
            .unwrap_or_default();
        let epoch = lease.revision;
        let admission = admit(&concurrency, &live, |run| hub.was_told_run(agent, run, epoch), grace_over);
        for name in &admission.cancel {
            tracing::info!(run = %name, pipeline = %pipeline, "concurrency policy Replace: cancelling");
            crate::runs::cancel(node, name).await?;
        }
        for stored in &live {
            let run = &stored.run;
            let name = &run.metadata.name;
            // Never a run started under another lease (a new leader's first TTL, before the
            // branch above acts), nor one waiting for its lost agent's steps to stop.
            let handable =
                run.status.lease_epoch.is_none_or(|started| started == epoch) && run.status.agent_lost_at.is_none();
            if handable && admission.start.contains(name) && !hub.was_told_run(agent, name, epoch) {
                hand_over(node, hub, &workflows, run, agent, lease.revision).await?;
            }
            if run.spec.cancel_requested {
                let cancel = xene_proto::CancelRun { run: name.clone() };
                let message = ServerMessage { body: Some(server_message::Body::Cancel(cancel)) };
                hub.tell_cancel(agent, name, message);
            }
        }
    }
    Ok(())
}

/// What the concurrency policy does with a pipeline's unfinished runs (oldest first).
#[derive(Debug, Default, PartialEq, Eq)]
struct Admission {
    /// Pending runs to hand to the agent now.
    start: BTreeSet<String>,
    /// Runs to cancel (policy `Replace`: every run older than the newest).
    cancel: Vec<String>,
}

/// Decides, for one pipeline, which pending runs start and which runs `Replace` cancels
/// (DESIGN §8.4). A run counts as in progress once it left `Pending` or was handed to the agent
/// (`handed`). With a limit, a new leader starts nothing during its grace period: the runs the
/// previous leader handed over are still `Pending` in the store until their agents report.
fn admit(
    concurrency: &xene_model::Concurrency,
    runs: &[crate::runs::StoredRun],
    handed: impl Fn(&str) -> bool,
    grace_over: bool,
) -> Admission {
    use xene_model::status::RunPhase;
    use xene_model::ConcurrencyPolicy;
    let policy = concurrency.policy();
    let limit = match policy {
        ConcurrencyPolicy::Allow => concurrency.max_concurrent.map_or(usize::MAX, |m| m as usize),
        ConcurrencyPolicy::Forbid | ConcurrencyPolicy::Replace => 1,
    };
    let mut admission = Admission::default();
    let in_progress =
        |r: &crate::runs::StoredRun| r.run.status.phase != RunPhase::Pending || handed(&r.run.metadata.name);
    let candidates: Vec<&crate::runs::StoredRun> = match policy {
        ConcurrencyPolicy::Replace => {
            // The newest run replaces every other; it starts once they have ended.
            let Some(newest) = runs.last() else { return admission };
            admission.cancel = runs[..runs.len() - 1]
                .iter()
                .filter(|r| !r.run.spec.cancel_requested)
                .map(|r| r.run.metadata.name.clone())
                .collect();
            if runs.len() > 1 {
                Vec::new()
            } else {
                vec![newest]
            }
        }
        _ => runs.iter().collect(),
    };
    if limit != usize::MAX && !grace_over {
        return admission;
    }
    let mut active = runs.iter().filter(|r| in_progress(r)).count();
    for run in candidates {
        if in_progress(run) {
            // Already handed over; (re)sending is the hub's business.
            admission.start.insert(run.run.metadata.name.clone());
        } else if active < limit {
            active += 1;
            admission.start.insert(run.run.metadata.name.clone());
        }
    }
    admission
}

/// Sends a run to the agent holding its pipeline's lease, with the secrets it refers to.
async fn hand_over(
    node: &ClusterNode,
    hub: &AgentHub,
    workflows: &BTreeMap<String, Versioned<Workflow>>,
    run: &xene_model::RunObject,
    agent: &str,
    epoch: u64,
) -> Result<()> {
    let workflow = workflows.get(&run.spec.workflow);
    if workflow.map_or(0, |w| w.revision) < run.spec.workflow_revision {
        // The run was made from a workflow applied after this pass read them: the next pass
        // grants that workflow first.
        return Ok(());
    }
    let run_json = serde_json::to_string(run).unwrap_or_default();
    let secrets = match workflow.and_then(|w| w.value.spec.pipelines.get(&run.spec.pipeline)) {
        Some(spec) => crate::secrets::resolve_for(node, spec).await?.into_iter().collect(),
        None => Default::default(),
    };
    let payload = node.reader.range(keys::payload(&run.metadata.name).into_bytes(), false, 0).await?;
    let payload = payload.kvs.into_iter().next().map(|kv| kv.value).unwrap_or_default();
    let start = xene_proto::StartRun { run_json, epoch, secrets, payload };
    let message = ServerMessage { body: Some(server_message::Body::Start(start)) };
    let pipeline = format!("{}/{}", run.spec.workflow, run.spec.pipeline);
    let told = Told { epoch, workflow: run.spec.workflow_revision };
    if hub.tell_start(agent, &pipeline, told, &run.metadata.name, message) {
        tracing::info!(run = %run.metadata.name, agent, "run handed to its agent");
    }
    Ok(())
}

/// A pipeline's wanted status: phase, reason, agent and lease epoch.
type WantedStatus = (PipelinePhase, Option<String>, Option<String>, Option<u64>);

/// The write that makes a pipeline's status object say `wanted`, if it says something else.
fn status_write(name: &str, current: &Versioned<PipelineObject>, wanted: WantedStatus) -> Option<GuardedWrite> {
    let (phase, reason, agent, epoch) = wanted;
    let status = &current.value.status;
    if status.phase == phase && status.reason == reason && status.agent == agent && status.lease_epoch == epoch {
        return None;
    }
    let mut object = current.value.clone();
    object.status.phase = phase;
    object.status.reason = reason;
    object.status.agent = agent;
    object.status.lease_epoch = epoch;
    let (workflow, pipeline) = name.split_once('/')?;
    let key = keys::pipeline(workflow, pipeline);
    Some(GuardedWrite {
        compare: vec![Compare::mod_revision(key.clone(), current.revision)],
        ops: vec![Op::Put { key: key.into_bytes(), value: to_json(&object) }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xene_model::status::RunPhase;
    use xene_model::{Concurrency, ConcurrencyPolicy, RunObject, RunSpec};

    fn run(name: &str, phase: RunPhase) -> crate::runs::StoredRun {
        let mut run =
            RunObject::pending(name, RunSpec { workflow: "w".into(), pipeline: "p".into(), ..RunSpec::default() });
        run.status.phase = phase;
        crate::runs::StoredRun { run, revision: 1 }
    }

    fn policy(policy: ConcurrencyPolicy, max: Option<u32>) -> Concurrency {
        Concurrency { policy: Some(policy), max_concurrent: max }
    }

    fn names(admission: &Admission) -> Vec<&str> {
        admission.start.iter().map(String::as_str).collect()
    }

    #[test]
    fn allow_starts_everything_and_max_concurrent_caps() {
        let runs = [run("a", RunPhase::Running), run("b", RunPhase::Pending), run("c", RunPhase::Pending)];
        let none = |_: &str| false;
        assert_eq!(names(&admit(&Concurrency::default(), &runs, none, false)), ["a", "b", "c"]);
        assert_eq!(names(&admit(&policy(ConcurrencyPolicy::Allow, Some(2)), &runs, none, true)), ["a", "b"]);
        // A run handed over but not yet reported counts as in progress.
        let handed = |name: &str| name == "b";
        assert_eq!(names(&admit(&policy(ConcurrencyPolicy::Allow, Some(2)), &runs, handed, true)), ["a", "b"]);
        // A new leader starts nothing of a limited pipeline during its grace period.
        assert!(admit(&policy(ConcurrencyPolicy::Allow, Some(2)), &runs, none, false).start.is_empty());
    }

    #[test]
    fn forbid_queues_behind_the_run_in_progress() {
        let forbid = policy(ConcurrencyPolicy::Forbid, None);
        let busy = [run("a", RunPhase::Running), run("b", RunPhase::Pending)];
        assert_eq!(names(&admit(&forbid, &busy, |_| false, true)), ["a"]);
        let idle = [run("b", RunPhase::Pending), run("c", RunPhase::Pending)];
        assert_eq!(names(&admit(&forbid, &idle, |_| false, true)), ["b"]);
    }

    #[test]
    fn replace_cancels_older_runs_and_starts_the_newest_once_they_ended() {
        let replace = policy(ConcurrencyPolicy::Replace, None);
        let runs = [run("a", RunPhase::Running), run("b", RunPhase::Pending), run("c", RunPhase::Pending)];
        let admission = admit(&replace, &runs, |_| false, true);
        assert_eq!(admission.cancel, ["a", "b"]);
        assert!(admission.start.is_empty(), "nothing starts while a replaced run is still going");
        let admission = admit(&replace, &[run("c", RunPhase::Pending)], |_| false, true);
        assert!(admission.cancel.is_empty());
        assert_eq!(names(&admission), ["c"]);
    }
}
