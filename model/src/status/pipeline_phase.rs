//! [`PipelinePhase`]: whether the scheduler has placed a pipeline on an agent.

use serde::{Deserialize, Serialize};

/// A pipeline's placement, as the server reports it (DESIGN §7.3, §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PipelinePhase {
    /// An agent holds the pipeline's lease.
    Scheduled,
    /// No agent can take it; the status says why.
    NotScheduled,
}

super::names!(PipelinePhase { Scheduled, NotScheduled });
