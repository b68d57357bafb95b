//! [`Step`]: one command run in its task's context (DESIGN §1, §9.2).

use serde::{Deserialize, Serialize};

use crate::{Duration, Env};

/// One command of a task, run with `/bin/sh -c` after the steps before it.
///
/// ```yaml
/// - name: build
///   run: go build -o bin/ping . && ls -la bin
///   timeout: 10m
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// The step's name, unique within its task.
    pub name: String,
    /// The shell script to run.
    pub run: String,
    /// Variables for this step, over the task's and the pipeline's.
    #[serde(default, skip_serializing_if = "Env::is_empty")]
    pub env: Env,
    /// How long the step may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}
