//! Local reads of the state machine: point gets, prefix ranges and watches, served from this
//! server's applied state without going through Raft. Callers that need a linearizable read
//! make sure this server has applied up to the leader's read index first (DESIGN §4.5).

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::codec;
use crate::command::KeyValue;
use crate::db::{sm_key, Db, CF_SM};
use crate::error::{Result, StoreError};
use crate::overlay::data_key;
use crate::types::{LogId, Revision};
use crate::watch::{WatchHub, WatchKeys, Watcher};

/// The answer to a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// Set when the limit cut the list short.
    pub more: bool,
    /// The store's revision the read saw.
    pub revision: Revision,
}

/// A cheap, cloneable read handle.
#[derive(Clone)]
pub struct KvReader {
    db: Db,
    watch: Arc<WatchHub>,
}

impl KvReader {
    pub(crate) fn new(db: Db, watch: Arc<WatchHub>) -> Self {
        KvReader { db, watch }
    }

    /// Reads `key`, or every key starting with it when `prefix` is set (at most `limit`,
    /// 0 = no limit), from one consistent view of the store.
    pub async fn range(&self, key: Vec<u8>, prefix: bool, limit: u64) -> Result<RangeResult> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || range_blocking(&db, &key, prefix, limit))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Reads the keys starting with `prefix` that sort at or after `from` (at most `limit`, 0 =
    /// no limit), from one consistent view of the store: a page of a long prefix, the next
    /// page starting after the last key of this one (that key with a 0 byte appended).
    pub async fn range_from(&self, prefix: Vec<u8>, from: Vec<u8>, limit: u64) -> Result<RangeResult> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let from = if from.as_slice() < prefix.as_slice() { prefix.clone() } else { from };
            scan_blocking(&db, &prefix, &from, limit)
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// The last revision this server applied.
    pub fn applied_revision(&self) -> Revision {
        self.watch.latest()
    }

    /// Watches keys starting with `prefix` from revision `from` (0 = from now on).
    pub fn watch(&self, from: Revision, prefix: Vec<u8>) -> Result<Watcher> {
        self.watch.watch(from, WatchKeys::Prefix(prefix))
    }

    /// Watches the keys `keys` selects from revision `from` (0 = from now on): a prefix, or
    /// one key alone, whose watch says nothing of keys that only start with it.
    pub fn watch_keys(&self, from: Revision, keys: WatchKeys) -> Result<Watcher> {
        self.watch.watch(from, keys)
    }

    /// Waits until this server has applied `revision` or later.
    pub async fn wait_applied(&self, revision: Revision) -> Result<()> {
        let mut watcher = self.watch.subscribe_revision();
        while *watcher.borrow_and_update() < revision {
            watcher.changed().await.map_err(|_| StoreError::Closed)?;
        }
        Ok(())
    }
}

fn range_blocking(db: &Db, key: &[u8], prefix: bool, limit: u64) -> Result<RangeResult> {
    if prefix {
        return scan_blocking(db, key, key, limit);
    }
    let view = db.raw().snapshot();
    let sm = db.cf(CF_SM);
    let revision = applied_in(&view, db)?;
    let kvs = match view.get_cf(sm, data_key(key))? {
        Some(bytes) => vec![codec::decode("stored key", &bytes)?],
        None => Vec::new(),
    };
    Ok(RangeResult { kvs, more: false, revision })
}

/// The keys starting with `prefix` from `from` on (`from` sorts at or after `prefix`).
fn scan_blocking(db: &Db, prefix: &[u8], from: &[u8], limit: u64) -> Result<RangeResult> {
    let view = db.raw().snapshot();
    let sm = db.cf(CF_SM);
    let revision = applied_in(&view, db)?;
    let (prefix, start) = (data_key(prefix), data_key(from));
    let limit = if limit == 0 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
    let mut kvs = Vec::new();
    let mut more = false;
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&view);
    for item in db.raw().iterator_cf_opt(sm, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        if kvs.len() == limit {
            more = true;
            break;
        }
        kvs.push(codec::decode("stored key", &v)?);
    }
    Ok(RangeResult { kvs, more, revision })
}

/// The revision a view of the store has applied.
fn applied_in(view: &rocksdb::Snapshot<'_>, db: &Db) -> Result<Revision> {
    Ok(match view.get_cf(db.cf(CF_SM), sm_key::APPLIED)? {
        Some(bytes) => codec::decode::<Option<LogId>>("applied log id", &bytes)?.map_or(0, |id| id.index),
        None => 0,
    })
}
