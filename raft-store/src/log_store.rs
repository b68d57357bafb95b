//! openraft's log storage over the `log` and `meta` column families.
//!
//! Durability rules (DESIGN §4.2, STYLE 11): the vote is synced before `save_vote` returns,
//! and the append callback fires only after the batch holding the entries is in the synced
//! write-ahead log ([`LogSync`] writes the batch and syncs once for every append waiting).
//! Every RocksDB call of openraft's storage traits runs on the blocking pool or the log writer
//! thread; [`LogStore::claim`] runs once at start, before Raft, as opening the database does.
//! The latest entries are also kept in memory ([`RecentEntries`]), so reading back what was
//! just appended needs neither.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::blocking;
use crate::codec;
use crate::db::{meta_key, Db, CF_LOG, CF_META};
use crate::error::StoreError;
use crate::log_sync::{DiskStall, LogSync};
use crate::recent::RecentEntries;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The Raft log of one server. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    sync: Arc<LogSync>,
    recent: Arc<RecentEntries>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl LogStore {
    pub(crate) fn new(db: Db) -> io::Result<Self> {
        let sync = Arc::new(LogSync::start(db.clone())?);
        Ok(LogStore { db, sync, recent: Arc::default() })
    }

    /// Binds the database to Raft node `node_id` the first time, and refuses any other ID
    /// afterwards ([`StoreError::OtherNode`]): the log and vote in it are that node's, and
    /// another ID on them would break the cluster's safety. The server also keeps the ID in
    /// a file beside the database; this check holds when that file is lost or the database
    /// is copied elsewhere. Call it before Raft starts.
    pub fn claim(&self, node_id: NodeId) -> Result<(), StoreError> {
        let meta = self.db.cf(CF_META);
        match self.db.raw().get_cf(meta, meta_key::NODE_ID)? {
            Some(bytes) => {
                let recorded: NodeId = codec::decode("node ID", &bytes)?;
                if recorded != node_id {
                    return Err(StoreError::OtherNode { recorded, given: node_id });
                }
                Ok(())
            }
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, meta_key::NODE_ID, codec::encode(&node_id));
                Ok(self.db.write_durable(batch)?)
            }
        }
    }

    /// Fault injection for tests: stalls this store's log writer, as a stalled disk would,
    /// until the returned value is dropped ([`DiskStall`]).
    pub fn stall_disk(&self) -> DiskStall {
        self.sync.stall()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &'static [u8]) -> Result<Option<T>, StorageError> {
        let bytes = self
            .db
            .raw()
            .get_cf(self.db.cf(CF_META), key)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match bytes {
            None => Ok(None),
            Some(bytes) => codec::decode("raft metadata", &bytes)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    fn entries_in(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.raw();
        let mut entries = Vec::new();
        let from = index_key(start);
        for item in db.iterator_cf(self.db.cf(CF_LOG), IteratorMode::From(&from, Direction::Forward)) {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index = decode_index(&key)?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry = codec::decode("raft log entry", &value)
                .map_err(|e| StorageError::from(StorageIOError::read_log_at_index(index, AnyError::new(&e))))?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let mut iter = self.db.raw().iterator_cf(self.db.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                let index = decode_index(&key)?;
                let entry = codec::decode("raft log entry", &value)
                    .map_err(|e| StorageError::from(StorageIOError::read_log_at_index(index, AnyError::new(&e))))?;
                Ok(Some(entry))
            }
        }
    }
}

fn decode_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StorageError::from(StorageIOError::read_logs(AnyError::error(format!(
            "log key of {} bytes, expected 8",
            key.len()
        ))))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.recent.range(start, end) {
            return Ok(entries);
        }
        // A leader replicates entries it has handed to the writer thread before they are
        // written (vendor/openraft/XENE.md): read after them. (This waits for the writer's
        // current sync too; such reads are of entries older than the in-memory tail, a
        // follower catching up, not of the write path.)
        self.sync.written().await;
        let this = self.clone();
        blocking::run(ErrorSubject::Logs, ErrorVerb::Read, move || this.entries_in(start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let this = self.clone();
        blocking::run(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let last_purged_log_id: Option<LogId> = this.read_meta(meta_key::LAST_PURGED)?;
            let last_log_id = match this.last_entry()? {
                Some(entry) => Some(entry.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        // Appends a leader handed to the writer thread may still be queued; the vote's synced
        // write covers them once they are written, so a node that votes or leads again in a
        // later term has every entry it counted on its disk.
        self.sync.written().await;
        let this = self.clone();
        let bytes = codec::encode(vote);
        blocking::run(ErrorSubject::Vote, ErrorVerb::Write, move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(this.db.cf(CF_META), meta_key::VOTE, bytes);
            // Synced before returning: a vote granted and then forgotten in a crash would let
            // this node vote twice in one term.
            this.db.write_durable(batch).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let this = self.clone();
        blocking::run(ErrorSubject::Vote, ErrorVerb::Read, move || this.read_meta(meta_key::VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), meta_key::COMMITTED, codec::encode(&committed));
        // Not synced on its own: the committed index is a hint that saves re-applying after a
        // restart, and losing the latest value only means learning it again from the leader.
        // Queued to the log writer, so the core task never waits for it.
        self.sync.write_buffered(batch);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        // A committed index saved just before is still queued to the writer: read after it.
        self.sync.written().await;
        let this = self.clone();
        blocking::run(ErrorSubject::Store, ErrorVerb::Read, move || {
            Ok(this.read_meta::<Option<LogId>>(meta_key::COMMITTED)?.flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_LOG);
        for entry in entries {
            let bytes = codec::encode(&entry);
            batch.put_cf(cf, index_key(entry.log_id.index), &bytes);
            self.recent.push(entry, bytes.len());
        }
        // The writer thread writes the entries, syncs the write-ahead log and only then fires
        // the callback: durable before acknowledged. A follower's core waits for the callback;
        // a leader's replicates meanwhile (vendor/openraft/XENE.md), reading the entries from
        // `recent` or, after a barrier, from the database.
        self.sync.write_durable(batch, callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // An append still queued (a deposed leader's) must not be written after the entries
        // are deleted, or they would reappear.
        self.sync.written().await;
        self.recent.truncate_from(log_id.index);
        let this = self.clone();
        blocking::run(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(this.db.cf(CF_LOG), index_key(log_id.index), index_key(u64::MAX));
            // Synced so that conflicting entries cannot reappear after a crash.
            this.db.write_durable(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Log writes happen in the order openraft asked for them.
        self.sync.written().await;
        self.recent.purge_through(log_id.index);
        let this = self.clone();
        blocking::run(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            // openraft purges only entries a snapshot covers, and the state machine was on disk
            // through that snapshot before it was kept (flushed when built, synced when
            // installed): the applied state that replaces these entries survives a crash.
            let mut batch = WriteBatch::default();
            batch.put_cf(this.db.cf(CF_META), meta_key::LAST_PURGED, codec::encode(&log_id));
            batch.delete_range_cf(this.db.cf(CF_LOG), index_key(0), index_key(log_id.index.saturating_add(1)));
            this.db.write_durable(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
        })
        .await
    }
}
