//! [`RunPhase`]: where a run is in its life.

use serde::{Deserialize, Serialize};

/// The phase of a run (DESIGN §9.1): `Pending` → `StartingUp` → `Running` →
/// `ShuttingDown` → `Success` | `Error` | `Cancelled`, and `Unknown` while its
/// agent is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunPhase {
    /// Created, not yet started.
    Pending,
    /// The agent is preparing it (workspace, images).
    StartingUp,
    /// Its tasks are running.
    Running,
    /// Its tasks are done; the agent is cleaning up.
    ShuttingDown,
    /// Every task succeeded.
    Success,
    /// A task failed; the run's error reason says how.
    Error,
    /// Someone cancelled it.
    Cancelled,
    /// Its agent cannot be reached.
    Unknown,
}

super::names!(RunPhase { Pending, StartingUp, Running, ShuttingDown, Success, Error, Cancelled, Unknown });

impl RunPhase {
    /// Whether the run has ended and will not change again.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Error | Self::Cancelled)
    }
}
