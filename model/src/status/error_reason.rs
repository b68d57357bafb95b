//! [`ErrorReason`]: why a run, task or step ended in `Error`.

use serde::{Deserialize, Serialize};

/// The reason carried by an error (DESIGN §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorReason {
    /// A command exited non-zero (the exit code travels with it).
    Failed,
    /// A step, task or run timeout expired.
    TimedOut,
    /// Someone cancelled the run.
    Cancelled,
    /// The agent running it was lost.
    AgentLost,
    /// The executor could not run it: an image missing, Docker down.
    InfrastructureError,
}

super::names!(ErrorReason { Failed, TimedOut, Cancelled, AgentLost, InfrastructureError });
