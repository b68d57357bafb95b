//! [`PipelineObject`]: the status object the server keeps for each pipeline of a workflow
//! (DESIGN §6.3, §9.1): whether an agent holds it, which one, and why not.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::PipelinePhase;
use crate::Metadata;

/// The `kind` of a pipeline status object.
pub const PIPELINE_KIND: &str = "Pipeline";

/// The reason a pipeline stays unplaced while the cluster has no agent to take it.
pub const REASON_NO_AGENTS: &str = "no agents";

/// A pipeline's status object. Its name is `WORKFLOW/PIPELINE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PipelineRef,
    pub status: PipelineStatus,
}

/// Which pipeline of which workflow the object is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineRef {
    pub workflow: String,
    pub pipeline: String,
}

/// Where the pipeline is placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineStatus {
    pub phase: PipelinePhase,
    /// Why the pipeline is not scheduled, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent holding the pipeline's lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The lease's epoch (the revision that granted it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_epoch: Option<u64>,
    /// The pipeline's triggers, filled in when the object is read (not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerStatus>,
}

/// What a trigger of a pipeline does and did, as `xenectl describe pipeline` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerStatus {
    pub name: String,
    /// `cron` or `webhook`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The schedule and time zone, or the provider and events.
    pub detail: String,
    /// A cron trigger's next fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire: Option<DateTime<Utc>>,
    /// When the trigger last started a run (a cron fire's scheduled time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    /// The run that last fire started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// Where a webhook trigger listens, on the server that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl PipelineObject {
    /// The name of the status object of `pipeline` in `workflow`.
    pub fn object_name(workflow: &str, pipeline: &str) -> String {
        format!("{workflow}/{pipeline}")
    }

    /// A new, unplaced status object for `pipeline` of the workflow described by `workflow`.
    pub fn not_scheduled(workflow: &Metadata, pipeline: &str, reason: &str) -> Self {
        let mut labels = workflow.labels.clone();
        labels.insert("xene.dev/workflow".into(), workflow.name.clone());
        PipelineObject {
            api_version: crate::API_VERSION.into(),
            kind: PIPELINE_KIND.into(),
            metadata: Metadata { name: Self::object_name(&workflow.name, pipeline), labels, ..Metadata::default() },
            spec: PipelineRef { workflow: workflow.name.clone(), pipeline: pipeline.into() },
            status: PipelineStatus {
                phase: PipelinePhase::NotScheduled,
                reason: Some(reason.into()),
                agent: None,
                lease_epoch: None,
                triggers: Vec::new(),
            },
        }
    }
}
