//! The status names of DESIGN §9.1, which appear verbatim in the API and the
//! CLI: plain serde enums, serialized by their variant names.
//!
//! - [`PipelinePhase`] (`pipeline_phase.rs`): whether a pipeline is placed on an agent.
//! - [`RunPhase`] (`run_phase.rs`): where a run is in its life.
//! - [`StepStatus`] (`step_status.rs`): how a step (and so a task) went.
//! - [`ErrorReason`] (`error_reason.rs`): why a run, task or step failed.

mod error_reason;
mod pipeline_phase;
mod run_phase;
mod step_status;

pub use error_reason::ErrorReason;
pub use pipeline_phase::PipelinePhase;
pub use run_phase::RunPhase;
pub use step_status::StepStatus;

/// Implements `as_str` and `Display` with the variant names.
macro_rules! names {
    ($type:ident { $($variant:ident),+ $(,)? }) => {
        impl $type {
            /// Every value, in the order of the lifecycle.
            pub const ALL: &'static [$type] = &[$($type::$variant),+];

            /// The name, as the API and the CLI show it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => stringify!($variant)),+
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
use names;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_design_names() {
        assert_eq!(PipelinePhase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["Scheduled", "NotScheduled"]);
        assert_eq!(
            RunPhase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["Pending", "StartingUp", "Running", "ShuttingDown", "Success", "Error", "Cancelled", "Unknown"]
        );
        assert_eq!(
            StepStatus::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["NotExecuted", "Running", "Success", "Error"]
        );
        assert_eq!(
            ErrorReason::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["Failed", "TimedOut", "Cancelled", "AgentLost", "InfrastructureError"]
        );
        for phase in RunPhase::ALL {
            assert_eq!(serde_json::to_string(phase).unwrap(), format!("\"{phase}\""));
            let back: RunPhase = serde_json::from_str(&format!("\"{phase}\"")).unwrap();
            assert_eq!(back, *phase);
        }
        assert_eq!(serde_json::to_string(&ErrorReason::InfrastructureError).unwrap(), "\"InfrastructureError\"");
    }
}
