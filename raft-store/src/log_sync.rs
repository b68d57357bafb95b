//! Group commit of the Raft log (DESIGN §4.2): `append` writes its entries without waiting
//! for the disk and hands its flush callback here; one thread syncs the write-ahead log for
//! every callback queued meanwhile and then fires them in order. One `fdatasync` thus covers
//! as many entries as arrived while the previous one ran, instead of one sync per append
//! (openraft 0.9 appends every client write on its own).

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;

use crate::db::Db;
use crate::types::TypeConfig;

/// The sending side and the thread. Dropping it (with the last `LogStore`) closes the queue
/// and joins the thread, so the database is closed when the store is: a server or test that
/// reopens the directory right away must not find it still locked.
pub(crate) struct LogSync {
    tx: Option<Sender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl LogSync {
    /// Starts the sync thread of `db`.
    pub(crate) fn start(db: Db) -> io::Result<LogSync> {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new().name("xene-log-sync".into()).spawn(move || run(&db, &rx))?;
        Ok(LogSync { tx: Some(tx), thread: Some(thread) })
    }

    /// Fires `callback` once everything written to the database before this call is in the
    /// synced write-ahead log.
    pub(crate) fn after_sync(&self, callback: LogFlushed<TypeConfig>) {
        let Some(tx) = &self.tx else {
            callback.log_io_completed(Err(io::Error::other("the log store is closing")));
            return;
        };
        if let Err(returned) = tx.send(callback) {
            returned.0.log_io_completed(Err(io::Error::other("the log sync thread has stopped")));
        }
    }
}

impl Drop for LogSync {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has synced and answered what is queued
        // (at most one sync's wait).
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the log sync thread panicked");
            }
        }
    }
}

fn run(db: &Db, rx: &Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        // Syncs every write made before it, whichever thread made it: all column families
        // share the one write-ahead log. Only then may openraft count the entries as stored.
        let result = db.raw().flush_wal(true);
        for callback in waiting {
            match &result {
                Ok(()) => callback.log_io_completed(Ok(())),
                Err(e) => callback.log_io_completed(Err(io::Error::other(e.to_string()))),
            }
        }
    }
}
