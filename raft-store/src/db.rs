//! The one RocksDB database of a server and its column families (DESIGN §4.2).
//!
//! | column family | holds |
//! |---|---|
//! | `log` | Raft log entries, keyed by big-endian index |
//! | `meta` | this server's node ID, vote, committed log id, last purged log id, the current snapshot |
//! | `sm` | the state machine: keys (`k/…`), applied state (`m/…`), deduplication (`d/…`) |

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

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
    /// The Raft node ID the database was first opened as ([`crate::LogStore::claim`]).
    pub const NODE_ID: &[u8] = b"node_id";
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

/// Memory bounds (W8 of PERF.md). RocksDB's defaults (a 64 MiB memtable per column family,
/// two of them, and a 32 MiB block cache per column family) let a server that has taken
/// 100,000 small writes hold all of them in memtables. These keep RocksDB's share of a
/// server's memory at about 40 MiB whatever the load: small writes gain nothing from bigger
/// memtables, and reads of recent keys hit the memtables or the operating system's page cache.
const MEMTABLES_TOTAL: usize = 24 << 20;
/// Memtable size of the log and state machine column families.
const MEMTABLE: usize = 8 << 20;
/// Memtable size of the metadata column family (a few small keys).
const MEMTABLE_SMALL: usize = 1 << 20;
/// One block cache shared by every column family; index and filter blocks are kept in it
/// too, so they are bounded with it.
const BLOCK_CACHE: usize = 8 << 20;

fn cf_options(name: &str, cache: &Cache, memtable: usize) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if name == CF_SM {
        // A read of a key (a get, a value compare, a `…Prev` write; a put's revisions come
        // from the key index) finds it in one table file at most: a Bloom filter (10 bits a
        // key, about 1 % false positives) skips the data blocks of the others. When every put
        // read its key here, reading blocks was a quarter of a leader's apply time under
        // random puts, and the filter halved it (PERF W1).
        table.set_bloom_filter(10.0, false);
    }
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(memtable);
    opts.set_max_write_buffer_number(2);
    opts
}

/// A shared handle on the database with its column families.
#[derive(Clone)]
pub(crate) struct Db {
    inner: Arc<DB>,
    writes: Arc<Writes>,
}

/// The options of each kind of write, made once: each `WriteOptions` is a C++ object that
/// costs an allocation to make and one to drop, and a write under load is made by the
/// thousand a second (PERF W1).
struct Writes {
    durable: WriteOptions,
    buffered: WriteOptions,
    unlogged: WriteOptions,
}

impl Writes {
    fn new() -> Self {
        let mut durable = WriteOptions::default();
        durable.set_sync(true);
        let mut unlogged = WriteOptions::default();
        unlogged.disable_wal(true);
        Writes { durable, buffered: WriteOptions::default(), unlogged }
    }
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
        // All memtables together stay under this; past it the largest is flushed.
        opts.set_db_write_buffer_size(MEMTABLES_TOTAL);
        let cache = Cache::new_lru_cache(BLOCK_CACHE);
        let cfs = [(CF_LOG, MEMTABLE), (CF_META, MEMTABLE_SMALL), (CF_SM, MEMTABLE)]
            .map(|(name, memtable)| ColumnFamilyDescriptor::new(name, cf_options(name, &cache, memtable)));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Db { inner: Arc::new(db), writes: Arc::new(Writes::new()) })
    }

    pub(crate) fn raw(&self) -> &DB {
        &self.inner
    }

    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.inner.cf_handle(name).expect("invariant: every column family is created at open")
    }

    /// Writes `batch` and returns only once it is in the synced write-ahead log.
    pub(crate) fn write_durable(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        self.inner.write_opt(batch, &self.writes.durable)
    }

    /// Writes `batch` to the write-ahead log without waiting for the disk; the next durable
    /// write syncs it too, since all column families share one write-ahead log.
    pub(crate) fn write_buffered(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        self.inner.write_opt(batch, &self.writes.buffered)
    }

    /// Writes `batch` to the memtables only, not to the write-ahead log: for the state
    /// machine, which the Raft log rebuilds. A crash (even of the process alone) loses such
    /// writes back to the column family's last flush; the state machine's applied log id is
    /// in the same column family, so what survives is a state as of some applied log id, and
    /// openraft applies the entries after it again. [`Db::flush_state_machine`] makes them
    /// durable before the log may let go of the entries they came from.
    pub(crate) fn write_unlogged(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        self.inner.write_opt(batch, &self.writes.unlogged)
    }

    /// Flushes the state machine's memtables to table files and waits until they are on
    /// disk, with everything written to the state machine before the call.
    pub(crate) fn flush_state_machine(&self) -> Result<(), rocksdb::Error> {
        self.inner.flush_cf(self.cf(CF_SM))
    }
}
