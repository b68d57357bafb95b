//! What starts runs besides the API (DESIGN §8): signed webhooks on every server
//! ([`webhook`]) and cron schedules run by the lease holder, fired through the leader
//! ([`cron`]); and what a pipeline's triggers look like to `xenectl describe pipeline`.

pub mod cron;
pub mod webhook;

use chrono::Utc;
use xene_model::{PipelineObject, Trigger, TriggerStatus, Workflow};

use crate::error::ServerError;
use crate::node::ClusterNode;

/// Fills in `object.status.triggers`: for each trigger its next fire (cron), last fire and the
/// webhook URL on this server. A webhook's last fire is its newest run still in the history.
pub async fn describe(node: &ClusterNode, spec: &Workflow, object: &mut PipelineObject) -> Result<(), ServerError> {
    let workflow = &object.spec.workflow;
    let pipeline = &object.spec.pipeline;
    let Some(declared) = spec.spec.pipelines.get(pipeline) else { return Ok(()) };
    let cursors = cron::cursors(node, workflow, pipeline).await?;
    let runs = crate::runs::list_local(node, workflow, pipeline, "").await?;
    let now = Utc::now();
    object.status.triggers = declared
        .triggers
        .iter()
        .filter_map(|name| spec.spec.triggers.get(name).map(|t| (name, t)))
        .map(|(name, trigger)| match trigger {
            Trigger::Cron(cron) => {
                let timezone = cron.timezone.as_deref().unwrap_or("UTC");
                // A cursor without a run marks where a schedule started (its apply), not a fire.
                let cursor = cursors.get(name).filter(|c| !c.run.is_empty());
                TriggerStatus {
                    name: name.clone(),
                    kind: "cron".into(),
                    detail: format!("{} ({timezone})", cron.cron),
                    next_fire: cron::schedule_of(spec, pipeline, name).ok().and_then(|s| s.next_after(now)),
                    last_fire: cursor.map(|c| c.last_fire),
                    last_run: cursor.map(|c| c.run.clone()),
                    webhook_url: None,
                }
            }
            Trigger::Webhook(hook) => {
                let last = runs
                    .iter()
                    .filter(|r| &r.run.spec.trigger == name)
                    .max_by_key(|r| r.run.metadata.creation_timestamp);
                let events = if hook.webhook.events.is_empty() {
                    "every event".to_string()
                } else {
                    hook.webhook.events.join(", ")
                };
                TriggerStatus {
                    name: name.clone(),
                    kind: "webhook".into(),
                    detail: format!("{} ({events})", provider_name(hook.webhook.provider)),
                    next_fire: None,
                    last_fire: last.and_then(|r| r.run.metadata.creation_timestamp),
                    last_run: last.map(|r| r.run.metadata.name.clone()),
                    webhook_url: Some(node.rest_url(&format!("/api/v1/webhooks/{workflow}/{name}"))),
                }
            }
        })
        .collect();
    Ok(())
}

fn provider_name(provider: xene_model::WebhookProvider) -> &'static str {
    xene_model::WebhookProvider::ALL.iter().find(|(_, p)| *p == provider).map_or("?", |(name, _)| name)
}
