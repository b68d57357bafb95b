//! Runs RocksDB work on tokio's blocking pool, off the async executor (DESIGN §4.2).

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::StorageError;

/// Runs `work` on the blocking pool and turns a panic or cancellation of it into a storage
/// error on `subject`, so that callers never see a `JoinError`.
pub(crate) async fn run<T, F>(subject: ErrorSubject<u64>, verb: ErrorVerb, work: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(StorageIOError::new(subject, verb, AnyError::error(join.to_string())).into()),
    }
}
