//! The cron controller (DESIGN §8.3): the agent holding a pipeline's lease runs the schedules of
//! the pipeline's cron triggers and asks the leader for a run at each fire. The leader records
//! each fire under the trigger's cursor, fenced by the lease epoch, so a fire sent twice (a
//! resend after a reconnect, two holders around a lease move) makes one run.
//!
//! When a lease is granted, the fires missed since the trigger's last recorded fire follow its
//! `catchUp` policy: `Latest` (the default) sends the latest missed fire once, `All` every
//! missed fire (at most [`MAX_CATCH_UP`], the latest ones), `Skip` none.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use xene_model::{CatchUp, CronSchedule, Trigger, Workflow};
use xene_proto as pb;
use xene_proto::agent_message;

use crate::leases::{HeldLease, Leases};
use crate::outbox::Outbox;

/// The most missed fires `catchUp: All` sends.
pub const MAX_CATCH_UP: usize = 100;

/// The longest the controller sleeps between looks at its leases.
const TICK: Duration = Duration::from_secs(1);

/// One cron trigger of a held pipeline.
struct Slot {
    epoch: u64,
    schedule: CronSchedule,
    catch_up: CatchUp,
    /// The next fire to send.
    next: Option<DateTime<Utc>>,
}

/// Runs until `stop`: keeps one [`Slot`] per cron trigger of every held pipeline and sends a
/// `CronFire` through `outbox` at each fire.
pub async fn run(leases: Arc<Leases>, outbox: Outbox, stop: CancellationToken) {
    let mut slots: BTreeMap<(String, String), Slot> = BTreeMap::new();
    // The (epoch, workflow revision) each held pipeline's slots were made for: a lease is read
    // (and its workflow parsed) once per grant, not on every wake. A workflow applied again
    // at the same epoch remakes its slots, so a changed schedule takes effect.
    let mut configured: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    loop {
        let changed = leases.changed.notified();
        let now = Utc::now();
        let held = leases.versions();
        configured.retain(|pipeline, version| held.iter().any(|(p, v)| p == pipeline && v == version));
        slots.retain(|(pipeline, _), _| configured.contains_key(pipeline));
        for (pipeline, version) in &held {
            if configured.get(pipeline) == Some(version) {
                continue;
            }
            let Some(lease) = leases.get(pipeline).filter(|lease| (lease.epoch, lease.workflow_revision) == *version)
            else {
                continue;
            };
            configured.insert(pipeline.clone(), *version);
            for (trigger, slot) in new_slots(pipeline, &lease, now) {
                let since = lease.cron_since_ms.get(&trigger).and_then(|ms| DateTime::from_timestamp_millis(*ms));
                let limit = match slot.catch_up {
                    CatchUp::Latest => 1,
                    CatchUp::All => MAX_CATCH_UP,
                    CatchUp::Skip => 0,
                };
                let missed = since.map(|since| slot.schedule.missed(since, now, limit)).unwrap_or_default();
                if !missed.is_empty() {
                    tracing::info!(%pipeline, %trigger, missed = missed.len(), policy = ?slot.catch_up, "catching up on missed cron fires");
                }
                for at in missed {
                    send(&outbox, pipeline, &trigger, slot.epoch, at);
                }
                slots.insert((pipeline.clone(), trigger), slot);
            }
        }
        let mut wake = now + chrono::Duration::from_std(TICK).unwrap_or_default();
        for ((pipeline, trigger), slot) in slots.iter_mut() {
            while let Some(at) = slot.next.filter(|at| *at <= now) {
                slot.next = slot.schedule.next_after(at.max(now - chrono::Duration::seconds(1)));
                send(&outbox, pipeline, trigger, slot.epoch, at);
            }
            if let Some(at) = slot.next {
                wake = wake.min(at);
            }
        }
        let sleep = (wake - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// The slots a newly held (or newly granted) pipeline needs, by trigger.
fn new_slots(pipeline: &str, lease: &HeldLease, now: DateTime<Utc>) -> Vec<(String, Slot)> {
    let Some((_, pipeline_name)) = pipeline.split_once('/') else { return Vec::new() };
    let Ok(workflow) = serde_json::from_str::<Workflow>(&lease.workflow_json) else {
        tracing::warn!(pipeline, "the lease's workflow is unreadable; its cron triggers do not run");
        return Vec::new();
    };
    let Some(declared) = workflow.spec.pipelines.get(pipeline_name) else { return Vec::new() };
    let mut out = Vec::new();
    for trigger in &declared.triggers {
        let Some(Trigger::Cron(cron)) = workflow.spec.triggers.get(trigger) else { continue };
        match CronSchedule::new(&cron.cron, cron.timezone.as_deref()) {
            Ok(schedule) => {
                let next = schedule.next_after(now);
                tracing::info!(pipeline, trigger = %trigger, next = ?next, "cron trigger running");
                out.push((
                    trigger.clone(),
                    Slot { epoch: lease.epoch, schedule, catch_up: cron.catch_up.unwrap_or_default(), next },
                ));
            }
            Err(e) => tracing::warn!(pipeline, trigger = %trigger, error = %e, "cron trigger not run"),
        }
    }
    out
}

fn send(outbox: &Outbox, pipeline: &str, trigger: &str, epoch: u64, at: DateTime<Utc>) {
    tracing::debug!(pipeline, trigger, %at, "cron fire");
    let fire = pb::CronFire {
        pipeline: pipeline.to_string(),
        epoch,
        trigger: trigger.to_string(),
        scheduled_ms: at.timestamp_millis(),
        seq: 0,
    };
    let _ = outbox.send(pb::AgentMessage { body: Some(agent_message::Body::CronFire(fire)) }.into());
}
