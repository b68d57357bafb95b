//! The one RocksDB database of a server and its column families (DESIGN §4.2).
//!
//! | column family | holds |
//! |---|---|
//! | `log` | Raft log entries, keyed by big-endian index |
//! | `meta` | vote, committed log id, last purged log id, the current snapshot |
//! | `sm` | the state machine: keys (`k/…`), applied state (`m/…`), deduplication (`d/…`) |

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::error::StoreError;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM: &str = "sm";

/// Keys of the `meta` column family.
pub(crate) mod meta_key {
    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";
    pub const SNAPSHOT: &[u8] = b"snapshot";
}

/// Key prefixes of the `sm` column family.
pub(crate) mod sm_key {
    /// User keys: `k/` + key.
    pub const DATA: &[u8] = b"k/";
    /// Last applied log id.
    pub const APPLIED: &[u8] = b"m/applied";
    /// Last applied membership.
    pub const MEMBERSHIP: &[u8] = b"m/membership";
    /// Deduplication records: `d/` + client length (u16 BE) + client + request id (u64 BE).
    pub const DEDUP: &[u8] = b"d/";
}

/// A shared handle on the database with its column families.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<DB>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` with every column family.
    pub(crate) fn open(path: &Path) -> Result<Db, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Keep RocksDB's own memory and threads small: a server should fit on a small VM.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let cfs = [CF_LOG, CF_META, CF_SM].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Db { inner: Arc::new(db) })
    }

    pub(crate) fn raw(&self) -> &DB {
        &self.inner
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.inner.cf_handle(name).expect("invariant: every column family is created at open")
    }

    /// Writes `batch` and returns only once it is in the synced write-ahead log.
    pub(crate) fn write_durable(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.inner.write_opt(batch, &opts)
    }

    /// Writes `batch` to the write-ahead log without waiting for the disk. Used for state the
    /// Raft log can rebuild (the state machine); the next durable write syncs it too, since
    /// all column families share one write-ahead log.
    pub(crate) fn write_buffered(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        self.inner.write(batch)
    }
}
