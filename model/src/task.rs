//! [`Task`]: a context (one container, one working directory) in which steps
//! run in order (DESIGN §1, §9.2, §10).

use serde::{Deserialize, Serialize};

use crate::{Duration, Env, Executor, RetryPolicy, Step, When};

/// One task of a pipeline; its name is its key in the pipeline's `tasks`.
///
/// ```yaml
/// build:
///   dependencies: [checkout]
///   retries: {limit: 2, backoff: 5s}
///   steps:
///     - {name: vet, run: go vet ./...}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Task {
    /// Tasks that must finish before this one starts (the `BasicConnector`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Retries of a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// How long one attempt may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Overrides the pipeline's executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    /// Variables for every step, over the pipeline's.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// The directory steps run in; overrides the pipeline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// When the task runs; unset means [`When::OnSuccess`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// The steps, run in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}
