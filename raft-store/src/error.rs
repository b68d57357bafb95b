//! The store's typed errors.

use crate::codec::DecodeError;

/// Everything that can go wrong in the store outside openraft's own error types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the database at {path}: {source}; is another xene-server using this data directory?")]
    Open { path: String, source: rocksdb::Error },
    #[error("database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("this database belongs to node {recorded}, whose Raft log and vote it holds, not to node {given}; start it as node {recorded}, or give node {given} a data directory of its own")]
    OtherNode { recorded: u64, given: u64 },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("watch from revision {requested} is no longer available: events up to revision {compacted} were compacted; list again and watch from the listed revision")]
    Compacted { requested: u64, compacted: u64 },
    #[error("the store is shutting down")]
    Closed,
    #[error("starting the log sync thread: {0}")]
    SyncThread(std::io::Error),
    #[error("background task failed: {0}")]
    Join(String),
}

/// A store result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
