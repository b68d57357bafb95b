//! [`StepStatus`]: how a step went; a task's status follows its steps.

use serde::{Deserialize, Serialize};

/// The status of a step, and of a task (DESIGN §9.1, §9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not run, maybe never: a step after a failed one stays here.
    NotExecuted,
    /// Running now.
    Running,
    /// Exited with status zero.
    Success,
    /// Failed; the error reason says how.
    Error,
}

super::names!(StepStatus { NotExecuted, Running, Success, Error });
