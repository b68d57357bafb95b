//! Cron fires on the leader's side (DESIGN §8.3). The agent holding a pipeline's lease runs
//! the pipeline's cron schedules and asks for a run at each fire; the leader writes the run
//! together with the trigger's cursor, fenced by the lease epoch. The cursor only moves
//! forward, so a fire at or before the last recorded one is refused: a fire sent twice, resent
//! after a reconnect, or sent by a holder whose lease has moved makes no second run.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xene_model::{CronSchedule, Trigger, Workflow};
use xene_raft_store::{Compare, Op, Txn};

use crate::error::ServerError;
use crate::keys;
use crate::node::ClusterNode;
use crate::runs::{self, Refused};

/// How far ahead of the leader's clock a fire may be scheduled (clock skew between hosts).
const MAX_SKEW: chrono::Duration = chrono::Duration::seconds(60);

/// The last fire of a cron trigger that made a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CronCursor {
    /// The fire's scheduled time.
    pub last_fire: DateTime<Utc>,
    pub run: String,
    pub agent: String,
    pub epoch: u64,
}

/// For applying `new` over `stored`: a cursor at `now` for every cron trigger a pipeline lists
/// anew or whose schedule changed, so that its catch-up starts at this apply and not at the
/// workflow's creation (a nightly trigger added to a month-old workflow does not fire at once,
/// or 100 times with `catchUp: All`). A fire of the old schedule still in flight is refused.
pub fn restart_cursors(stored: &Workflow, new: &Workflow, now: DateTime<Utc>) -> Result<Vec<Op>, ServerError> {
    let cron_of = |spec: &Workflow, trigger: &str| match spec.spec.triggers.get(trigger) {
        Some(Trigger::Cron(cron)) => Some((cron.cron.clone(), cron.timezone.clone())),
        _ => None,
    };
    let mut ops = Vec::new();
    for (pipeline, declared) in &new.spec.pipelines {
        for trigger in &declared.triggers {
            let Some(schedule) = cron_of(new, trigger) else { continue };
            let listed_before = stored.spec.pipelines.get(pipeline).is_some_and(|p| p.triggers.contains(trigger));
            if listed_before && cron_of(stored, trigger) == Some(schedule) {
                continue;
            }
            let cursor = CronCursor { last_fire: now, run: String::new(), agent: String::new(), epoch: 0 };
            let value = serde_json::to_vec(&cursor).map_err(|e| ServerError::Internal(e.to_string()))?;
            ops.push(Op::Put { key: keys::cron_cursor(&new.metadata.name, pipeline, trigger).into_bytes(), value });
        }
    }
    Ok(ops)
}

/// Creates the run of a cron fire of `trigger` of `pipeline` (`WORKFLOW/PIPELINE`) scheduled at
/// `scheduled`, asked for by `agent` holding the lease at `epoch`. `Ok(None)`: that fire (or a
/// later one) already made its run.
pub async fn fire(
    node: &ClusterNode,
    agent: &str,
    epoch: u64,
    pipeline: &str,
    trigger: &str,
    scheduled: DateTime<Utc>,
) -> Result<Option<String>, Refused> {
    let Some((workflow, pipeline_name)) = pipeline.split_once('/') else {
        return Err(Refused::Other(ServerError::InvalidArgument(format!("cron fire: bad pipeline name {pipeline:?}"))));
    };
    let invalid = |message: String| Refused::Other(ServerError::InvalidArgument(message));
    if scheduled > Utc::now() + MAX_SKEW {
        return Err(invalid(format!(
            "cron fire of {pipeline} at {scheduled} is more than {} s ahead of the leader's clock; check the agent's clock",
            MAX_SKEW.num_seconds()
        )));
    }
    let lease_key = keys::lease(pipeline);
    let cursor_key = keys::cron_cursor(workflow, pipeline_name, trigger);
    for _ in 0..5 {
        let lease = node.reader.range(lease_key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
        if !runs::holds(lease.kvs.first(), agent, epoch) {
            return Err(Refused::StaleEpoch(format!("agent {agent} does not hold {pipeline} at epoch {epoch}")));
        }
        let (spec, spec_revision) = runs::workflow(node, workflow).await?;
        let schedule = schedule_of(&spec, pipeline_name, trigger).map_err(invalid)?;
        if !schedule.fires_at(scheduled) {
            return Err(invalid(format!("cron trigger {trigger:?} of {pipeline} does not fire at {scheduled}")));
        }
        let found = node.reader.range(cursor_key.clone().into_bytes(), false, 0).await.map_err(ServerError::from)?;
        let current = found.kvs.first();
        let last = current.and_then(|kv| serde_json::from_slice::<CronCursor>(&kv.value).ok());
        if last.as_ref().is_some_and(|c| c.last_fire >= scheduled) {
            return Ok(None);
        }
        let parameters = BTreeMap::from([("XENE_SCHEDULED_TIME".to_string(), scheduled.to_rfc3339())]);
        let new = runs::pending(&spec, spec_revision, pipeline_name, trigger, parameters)?;
        let cursor =
            CronCursor { last_fire: scheduled, run: new.run.metadata.name.clone(), agent: agent.into(), epoch };
        let cursor_value = serde_json::to_vec(&cursor).map_err(|e| ServerError::Internal(e.to_string()))?;
        let cursor_compare = match current {
            Some(kv) => Compare::mod_revision(cursor_key.clone(), kv.mod_revision),
            None => Compare::absent(cursor_key.clone()),
        };
        let response = node
            .txn(Txn {
                compare: vec![runs::fence(workflow, pipeline_name, epoch), cursor_compare],
                success: vec![
                    Op::Put { key: cursor_key.clone().into_bytes(), value: cursor_value },
                    Op::Put { key: new.key.clone().into_bytes(), value: new.value.clone() },
                ],
                failure: vec![],
            })
            .await?;
        if response.succeeded {
            let id = new.created(response.revision).run.metadata.name;
            return Ok(Some(id));
        }
    }
    Err(Refused::Other(ServerError::unavailable("the trigger's cursor kept changing; the agent sends the fire again")))
}

/// The schedule of cron trigger `trigger`, which `pipeline` of `spec` must list.
pub fn schedule_of(spec: &Workflow, pipeline: &str, trigger: &str) -> Result<CronSchedule, String> {
    let listed = spec.spec.pipelines.get(pipeline).is_some_and(|p| p.triggers.iter().any(|t| t == trigger));
    match spec.spec.triggers.get(trigger) {
        Some(Trigger::Cron(cron)) if listed => {
            CronSchedule::new(&cron.cron, cron.timezone.as_deref()).map_err(|e| e.to_string())
        }
        _ => Err(format!("pipeline {pipeline:?} of {:?} has no cron trigger {trigger:?}", spec.metadata.name)),
    }
}

/// The cursors of `pipeline`'s cron triggers, by trigger.
pub async fn cursors(
    node: &ClusterNode,
    workflow: &str,
    pipeline: &str,
) -> Result<BTreeMap<String, CronCursor>, ServerError> {
    let prefix = keys::cron_cursors_of(workflow, pipeline);
    let found = node.reader.range(prefix.clone().into_bytes(), true, 0).await?;
    Ok(found
        .kvs
        .iter()
        .filter_map(|kv| {
            let trigger = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            serde_json::from_slice(&kv.value).ok().map(|cursor| (trigger, cursor))
        })
        .collect())
}

/// For a lease grant: where each cron trigger of `pipeline` resumes, in Unix ms: its last
/// recorded fire, or, for a trigger that never fired, when the workflow was created.
pub async fn since_ms(
    node: &ClusterNode,
    spec: &Workflow,
    pipeline: &str,
) -> Result<BTreeMap<String, i64>, ServerError> {
    let Some(declared) = spec.spec.pipelines.get(pipeline) else { return Ok(BTreeMap::new()) };
    let crons: Vec<&String> = declared
        .triggers
        .iter()
        .filter(|t| matches!(spec.spec.triggers.get(t.as_str()), Some(Trigger::Cron(_))))
        .collect();
    if crons.is_empty() {
        return Ok(BTreeMap::new());
    }
    let cursors = cursors(node, &spec.metadata.name, pipeline).await?;
    let created = spec.metadata.creation_timestamp.unwrap_or_else(Utc::now);
    Ok(crons
        .into_iter()
        .map(|t| (t.clone(), cursors.get(t).map_or(created, |c| c.last_fire).timestamp_millis()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(triggers: &str, listed: &str) -> Workflow {
        let manifest = format!(
            "apiVersion: xene.dev/v1\nkind: Workflow\nmetadata: {{name: w}}\nspec:\n  triggers: {triggers}\n  pipelines:\n    p: {{triggers: {listed}, tasks: {{t: {{steps: [{{name: s, run: x}}]}}}}}}\n"
        );
        xene_model::parse_manifest(&manifest).expect("manifest")
    }

    fn restarted(stored: &Workflow, new: &Workflow) -> Vec<String> {
        restart_cursors(stored, new, Utc::now())
            .expect("ops")
            .into_iter()
            .map(|op| match op {
                Op::Put { key, .. } => String::from_utf8_lossy(&key).into_owned(),
                other => panic!("not a put: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_schedule_starts_at_the_apply_that_adds_or_changes_it() {
        let nightly = "{nightly: {type: cron, cron: '0 3 * * *'}, hourly: {type: cron, cron: '0 * * * *'}}";
        let before = workflow(nightly, "[nightly]");
        assert!(restarted(&before, &before).is_empty(), "nothing changed");
        let retimed =
            "{nightly: {type: cron, cron: '0 3 * * *', catchUp: All}, hourly: {type: cron, cron: '0 * * * *'}}";
        assert!(restarted(&before, &workflow(retimed, "[nightly]")).is_empty(), "only the catch-up policy changed");
        assert_eq!(
            restarted(&before, &workflow(nightly, "[nightly, hourly]")),
            [keys::cron_cursor("w", "p", "hourly")]
        );
        let moved = "{nightly: {type: cron, cron: '0 4 * * *'}, hourly: {type: cron, cron: '0 * * * *'}}";
        assert_eq!(restarted(&before, &workflow(moved, "[nightly]")), [keys::cron_cursor("w", "p", "nightly")]);
        let zoned = "{nightly: {type: cron, cron: '0 3 * * *', timezone: Europe/Berlin}, hourly: {type: cron, cron: '0 * * * *'}}";
        assert_eq!(restarted(&before, &workflow(zoned, "[nightly]")), [keys::cron_cursor("w", "p", "nightly")]);
    }
}
