//! The log writer (DESIGN §4.2): one thread writes the Raft log's batches and syncs them.
//!
//! A follower's openraft core waits for every append's flush callback before it answers the
//! leader (`RaftCore::append_to_log`); a leader's goes on and replicates the entries meanwhile,
//! counting them as stored on its own disk only when the callback reports them synced (the
//! patch in vendor/openraft/XENE.md). Handing the batch straight to this thread, which writes
//! it, syncs the write-ahead log and fires the callback, keeps that to one hand-off each way.
//! Whatever queued meanwhile (further appends, the committed index) is written before the same
//! sync, so one `fdatasync` covers all of it. Jobs are done in the order they were queued, and
//! [`LogSync::written`] waits for everything queued before it.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
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
    stalls: Arc<Stalls>,
}

/// How many [`DiskStall`]s are alive; the writer thread writes and syncs only while there are
/// none.
#[derive(Default)]
struct Stalls {
    state: Mutex<StallState>,
    changed: Condvar,
}

#[derive(Default)]
struct StallState {
    count: usize,
    closing: bool,
}

impl Stalls {
    fn state(&self) -> std::sync::MutexGuard<'_, StallState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut StallState)) {
        change(&mut self.state());
        self.changed.notify_all();
    }

    fn stalled(&self) -> bool {
        self.state().count > 0
    }

    /// Returns once no stall is alive (true), or the store is closing while one is (false).
    fn wait_released(&self) -> bool {
        let mut state = self.state();
        while state.count > 0 && !state.closing {
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.count == 0
    }
}

/// Fault injection for tests: while a stall is alive, the log writer thread of its store
/// writes and syncs nothing, as a stalled disk would; appends, and the votes, truncations,
/// purges and reads that wait for them, queue up. Dropping the last stall lets the writer go
/// on. A store closed while stalled drops what is queued unwritten, as a crash would lose it.
#[must_use = "the disk stalls only while this value is alive"]
pub struct DiskStall {
    stalls: Arc<Stalls>,
}

impl Drop for DiskStall {
    fn drop(&mut self) {
        self.stalls.update(|state| state.count -= 1);
    }
}

impl LogSync {
    /// Starts the writer thread of `db`.
    pub(crate) fn start(db: Db) -> io::Result<LogSync> {
        let (tx, rx) = channel();
        let stalls = Arc::new(Stalls::default());
        let thread_stalls = Arc::clone(&stalls);
        let thread =
            std::thread::Builder::new().name("xene-log-sync".into()).spawn(move || run(&db, &rx, &thread_stalls))?;
        Ok(LogSync { tx: Some(tx), thread: Some(thread), stalls })
    }

    /// Stalls the writer until the returned value is dropped ([`DiskStall`]).
    pub(crate) fn stall(&self) -> DiskStall {
        self.stalls.update(|state| state.count += 1);
        DiskStall { stalls: Arc::clone(&self.stalls) }
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
        // queued (at most one sync's wait); while stalled, it drops what is queued.
        self.stalls.update(|state| state.closing = true);
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
    }
}

fn run(db: &Db, rx: &Receiver<Job>, stalls: &Stalls) {
    // Once a write or a sync fails, nothing queued after it may be reported stored, in this
    // pass or a later one: a later batch of entries would leave a gap behind the failed one
    // (a leader keeps appending until it hears of the failure), and a failed sync leaves what
    // it covered in doubt. openraft stops on the first error it is told of.
    let mut failed: Option<String> = None;
    // A job received while a stall is alive waits for the next pass. The stall is checked
    // after each job is received, so a job queued after `stall` returned is never written
    // before the stall is released, even if it arrives while a pass is under way.
    let mut held: Option<Job> = None;
    while let Some(first) = held.take().or_else(|| rx.recv().ok()) {
        if !stalls.wait_released() {
            // Closed while stalled: what is queued is lost, as in a crash. Dropped callbacks
            // report failures to whoever still waits.
            drop(first);
            rx.try_iter().for_each(drop);
            return;
        }
        let mut waiting = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let mut write = |batch| {
                if failed.is_none() {
                    if let Err(e) = db.write_buffered(batch) {
                        tracing::error!(error = %e, "writing the raft log failed");
                        failed = Some(e.to_string());
                    }
                }
            };
            match job {
                Job::Durable(batch, callback) => {
                    write(batch);
                    waiting.push((callback, failed.clone()));
                }
                Job::Buffered(batch) => write(batch),
                // The receiver may have gone away (a cancelled read); nothing to tell it.
                Job::Barrier(done) => drop(done.send(())),
            }
            next = rx.try_recv().ok();
            if next.is_some() && stalls.stalled() {
                held = next.take();
            }
        }
        if waiting.is_empty() {
            continue;
        }
        // Syncs every write made before it, whichever thread made it: all column families
        // share the one write-ahead log. Only then may openraft count the entries as stored.
        let synced = if waiting.iter().any(|(_, write_error)| write_error.is_none()) {
            db.raw().flush_wal(true).map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "syncing the raft log failed");
            failed = Some(e.clone());
        }
        for (callback, write_error) in waiting {
            match write_error.or_else(|| synced.clone().err()) {
                None => callback.log_io_completed(Ok(())),
                Some(e) => callback.log_io_completed(Err(io::Error::other(e))),
            }
        }
    }
}
