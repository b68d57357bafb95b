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

    /// The phase named `name`, ignoring case (`success` is `Success`); `Err` says what the
    /// phases are, and which one a misspelt name likely meant.
    pub fn from_name(name: &str) -> Result<Self, String> {
        if let Some(phase) = Self::ALL.iter().find(|phase| phase.as_str().eq_ignore_ascii_case(name)) {
            return Ok(*phase);
        }
        let names = Self::ALL.iter().map(|phase| phase.as_str());
        let hint = crate::suggest::did_you_mean(name, names.clone())
            .map(|phase| format!("did you mean {phase}? "))
            .unwrap_or_default();
        Err(format!("unknown run phase {name:?}; {hint}the phases are {}", names.collect::<Vec<_>>().join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::RunPhase;

    #[test]
    fn phases_are_read_by_name_and_typos_are_explained() {
        assert_eq!(RunPhase::from_name("success"), Ok(RunPhase::Success));
        assert_eq!(RunPhase::from_name("StartingUp"), Ok(RunPhase::StartingUp));
        assert_eq!(
            RunPhase::from_name("Sucess"),
            Err("unknown run phase \"Sucess\"; did you mean Success? the phases are Pending, StartingUp, Running, ShuttingDown, Success, Error, Cancelled, Unknown".into())
        );
        let message = RunPhase::from_name("done").expect_err("no such phase");
        assert!(message.starts_with("unknown run phase \"done\"; the phases are Pending"), "{message}");
    }
}
