//! The log writer (DESIGN §4.2): one thread writes the Raft log's batches and syncs them.
//!
//! openraft 0.9.25 waits, inside its single core task, for every append's flush callback
//! before it takes the next client write (`RaftCore::append_to_log`). Each append therefore
//! costs the core one write, one `fdatasync` and the thread hand-offs between them, in series.
//! Handing the batch straight to this thread, which writes it, syncs the write-ahead log and
//! fires the callback, keeps that to one hand-off each way. Whatever queued meanwhile (a
//! follower's appends, the committed index) is written before the same sync, so one
//! `fdatasync` covers all of it.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use rocksdb::WriteBatch;

use crate::db::Db;
use crate::types::TypeConfig;

/// What the thread is asked to do, in order.
enum Job {
    /// Write the batch and fire the callback once it is in the synced write-ahead log.
    Durable(WriteBatch, LogFlushed<TypeConfig>),
    /// Write the batch; the next sync covers it, but nobody waits for that.
    Buffered(WriteBatch),
    /// Answer once everything queued before has been written.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The sending side and the thread. Dropping it (with the last `LogStore`) closes the queue
/// and joins the thread, so the database is closed when the store is: a server or test that
/// reopens the directory right away must not find it still locked.
pub(crate) struct LogSync {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl LogSync {
    /// Starts the writer thread of `db`.
    pub(crate) fn start(db: Db) -> io::Result<LogSync> {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new().name("xene-log-sync".into()).spawn(move || run(&db, &rx))?;
        Ok(LogSync { tx: Some(tx), thread: Some(thread) })
    }

    /// Writes `batch` and fires `callback` once it, and everything written before it, is in
    /// the synced write-ahead log; with the error instead if either step fails.
    pub(crate) fn write_durable(&self, batch: WriteBatch, callback: LogFlushed<TypeConfig>) {
        let Some(tx) = &self.tx else {
            callback.log_io_completed(Err(io::Error::other("the log store is closing")));
            return;
        };
        if let Err(returned) = tx.send(Job::Durable(batch, callback)) {
            if let Job::Durable(_, callback) = returned.0 {
                callback.log_io_completed(Err(io::Error::other("the log writer thread has stopped")));
            }
        }
    }

    /// Writes `batch` without waiting for the disk; the next sync makes it durable. A batch
    /// that cannot be written is logged: only hints (the committed index) go this way.
    pub(crate) fn write_buffered(&self, batch: WriteBatch) {
        if let Some(tx) = &self.tx {
            if tx.send(Job::Buffered(batch)).is_err() {
                tracing::warn!("the log writer thread has stopped; a buffered write was dropped");
            }
        }
    }

    /// Returns once every write queued before this call is readable.
    pub(crate) async fn written(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Job::Barrier(done)).is_ok() {
                // An error means the thread stopped, having written what it could.
                let _ = wait.await;
            }
        }
    }
}

impl Drop for LogSync {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written, synced and answered what is
        // queued (at most one sync's wait).
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
    }
}

fn run(db: &Db, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = Vec::new();
        // Once a write fails, nothing queued after it may be reported stored: a later batch of
        // entries would leave a gap behind the failed one.
        let mut failed: Option<String> = None;
        for job in std::iter::once(first).chain(rx.try_iter()) {
            let (batch, callback) = match job {
                Job::Durable(batch, callback) => (batch, Some(callback)),
                Job::Buffered(batch) => (batch, None),
                Job::Barrier(done) => {
                    // The receiver may have gone away (a cancelled read); nothing to tell it.
                    let _ = done.send(());
                    continue;
                }
            };
            if failed.is_none() {
                if let Err(e) = db.write_buffered(batch) {
                    tracing::error!(error = %e, "writing the raft log failed");
                    failed = Some(e.to_string());
                }
            }
            if let Some(callback) = callback {
                waiting.push((callback, failed.clone()));
            }
        }
        if waiting.is_empty() {
            continue;
        }
        // Syncs every write made before it, whichever thread made it: all column families
        // share the one write-ahead log. Only then may openraft count the entries as stored.
        let synced = db.raw().flush_wal(true).map_err(|e| e.to_string());
        for (callback, write_error) in waiting {
            match write_error.or_else(|| synced.clone().err()) {
                None => callback.log_io_completed(Ok(())),
                Some(e) => callback.log_io_completed(Err(io::Error::other(e))),
            }
        }
    }
}
