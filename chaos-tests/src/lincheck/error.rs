//! Why a history could not be checked at all (as opposed to failing the check).

use thiserror::Error;

/// A malformed history: a bug in whatever recorded it, not a linearizability violation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    #[error(
        "history[{index}]: returned at {returned} before it was called at {call}; \
         record both times from one monotonic clock"
    )]
    ReturnBeforeCall { index: usize, call: u64, returned: u64 },

    #[error(
        "history[{index}]: output {output} does not answer input {input}; \
         the recorder paired a response with the wrong request"
    )]
    OutputMismatch { index: usize, input: String, output: String },
}

/// Result of checking a history.
pub type Result<T, E = HistoryError> = std::result::Result<T, E>;
