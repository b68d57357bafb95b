//! The server's typed errors and their one mapping to `tonic::Status` (STYLE 5).

use tonic::{Code, Status};
use xene_raft_store::{Rejection, StoreError};

/// Everything a request can fail with. Client-caused errors are kept apart from internal ones.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or over a limit; nothing changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store refused the command as a whole; nothing changed.
    #[error("{0}")]
    Rejected(#[from] Rejection),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An optimistic-concurrency check failed: the object changed since the caller read it.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// No leader is known or it cannot be reached; retry, possibly at `leader`.
    #[error("{message}")]
    Unavailable { message: String, leader: Option<String> },
    #[error("watch from revision {requested} is compacted (oldest available after {compacted})")]
    Compacted { requested: u64, compacted: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        ServerError::Unavailable { message: message.into(), leader: None }
    }

    /// Whether retrying the same request (on the same or another server) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ServerError::Unavailable { .. })
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, compacted } => ServerError::Compacted { requested, compacted },
            StoreError::Closed => ServerError::unavailable("the server is shutting down; retry on another server"),
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = match &e {
            ServerError::InvalidArgument(_) | ServerError::Rejected(_) => Code::InvalidArgument,
            ServerError::NotFound(_) => Code::NotFound,
            ServerError::AlreadyExists(_) => Code::AlreadyExists,
            ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServerError::Conflict(_) => Code::Aborted,
            ServerError::Unauthenticated(_) => Code::Unauthenticated,
            ServerError::PermissionDenied(_) => Code::PermissionDenied,
            ServerError::Unavailable { .. } => Code::Unavailable,
            ServerError::Compacted { .. } => Code::OutOfRange,
            ServerError::Internal(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let ServerError::Unavailable { leader: Some(leader), .. } = &e {
            if let Ok(value) = leader.parse() {
                status.metadata_mut().insert(xene_proto::LEADER_HINT_HEADER, value);
            }
        }
        status
    }
}

/// A server result.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
