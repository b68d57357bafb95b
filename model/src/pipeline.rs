//! [`Pipeline`]: a DAG of tasks, started by its triggers and run on one agent
//! at a time (DESIGN §1, §7.3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Concurrency, Duration, Env, Executor, RetryPolicy, Task};

/// One pipeline of a workflow; its name is its key in `spec.pipelines`.
///
/// Every pipeline can be run through the API; `triggers` adds the cron and
/// webhook triggers declared in `spec.triggers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pipeline {
    /// What the pipeline is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Names of triggers in `spec.triggers` that start this pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<String>,
    /// Labels an agent must have to hold this pipeline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_selector: BTreeMap<String, String>,
    /// The executor of tasks that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    /// Variables for every step.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// What a new run does while another is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// How long a whole run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of a run whose agent was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// The directory steps run in, for tasks that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The tasks, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, Task>,
}

impl Pipeline {
    /// The executor a task runs with: its own, else the pipeline's; `None`
    /// means the agent's default.
    pub fn executor_for<'a>(&'a self, task: &'a Task) -> Option<&'a Executor> {
        task.executor.as_ref().or(self.executor.as_ref())
    }
}
