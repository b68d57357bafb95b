//! [`WorkflowSpec`]: what a workflow declares: its triggers and pipelines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Pipeline, Trigger};

/// The `spec` of a workflow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Cron and webhook triggers, by name, for pipelines to refer to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: BTreeMap<String, Trigger>,
    /// The pipelines, by name; at least one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pipelines: BTreeMap<String, Pipeline>,
}
