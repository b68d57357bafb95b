//! Callbacks used by Storage API

use std::io;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::core::notify::Notify;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;
use crate::Vote;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    /// Taken when the completion is reported; still set on drop if it never was.
    tx: Option<FlushedTo<C>>,
}

/// Where the completion goes.
///
/// Xene patch (vendor/openraft/XENE.md): a leader's own append does not hold up `RaftCore`
/// until it is flushed; its completion comes back to the core as a notification, and only
/// then does the leader count the entries as stored on its own disk.
enum FlushedTo<C>
where C: RaftTypeConfig
{
    /// `RaftCore` is waiting for it.
    Waiter(OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>),
    /// `RaftCore` goes on; the completion comes back as [`Notify::LocalLogFlushed`].
    Core {
        vote: Vote<C::NodeId>,
        last_log_id: LogId<C::NodeId>,
        tx: mpsc::UnboundedSender<Notify<C>>,
    },
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            tx: Some(FlushedTo::Waiter(tx)),
        }
    }

    /// Xene patch: the completion of a leader's append of its own entries, through
    /// `last_log_id`, is sent to `RaftCore` as a notification.
    pub(crate) fn to_core(
        vote: Vote<C::NodeId>,
        last_log_id: LogId<C::NodeId>,
        tx: mpsc::UnboundedSender<Notify<C>>,
    ) -> Self {
        Self {
            log_io_id: LogIOId::new(vote.clone(), Some(last_log_id.clone())),
            tx: Some(FlushedTo::Core { vote, last_log_id, tx }),
        }
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(mut self, result: Result<(), io::Error>) {
        if let Err(e) = &result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
        }
        match self.tx.take() {
            None => {}
            Some(FlushedTo::Waiter(tx)) => {
                if tx.send(result.map(|()| self.log_io_id.clone())).is_err() {
                    tracing::error!("failed to send log io completion event: {}", self.log_io_id);
                }
            }
            Some(FlushedTo::Core { vote, last_log_id, tx }) => {
                let notify = Notify::LocalLogFlushed {
                    vote,
                    last_log_id,
                    result,
                };
                // Only a core that has stopped stops listening; nothing waits for this then.
                if tx.send(notify).is_err() {
                    tracing::debug!("log io completed after RaftCore stopped: {}", self.log_io_id);
                }
            }
        }
    }
}

impl<C> Drop for LogFlushed<C>
where C: RaftTypeConfig
{
    /// Xene patch: a callback dropped unreported fails the flush rather than leaving the core
    /// waiting for a notification that never comes (a waiting core sees its oneshot closed).
    fn drop(&mut self) {
        if let Some(FlushedTo::Core { vote, last_log_id, tx }) = self.tx.take() {
            let _ = tx.send(Notify::LocalLogFlushed {
                vote,
                last_log_id,
                result: Err(io::Error::other("the log store dropped the flush callback")),
            });
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}
