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
use crate::watch::{WatchHub, Watcher};

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

    /// The last revision this server applied.
    pub fn applied_revision(&self) -> Revision {
        self.watch.latest()
    }

    /// Watches keys starting with `prefix` from revision `from` (0 = from now on).
    pub fn watch(&self, from: Revision, prefix: Vec<u8>) -> Result<Watcher> {
        self.watch.watch(from, prefix)
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
    let view = db.raw().snapshot();
    let sm = db.cf(CF_SM);
    let revision = match view.get_cf(sm, sm_key::APPLIED)? {
        Some(bytes) => codec::decode::<Option<LogId>>("applied log id", &bytes)?.map_or(0, |id| id.index),
        None => 0,
    };
    let start = data_key(key);
    let mut kvs = Vec::new();
    let mut more = false;
    if prefix {
        let limit = if limit == 0 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&view);
        for item in db.raw().iterator_cf_opt(sm, opts, IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(codec::decode("stored key", &v)?);
        }
    } else if let Some(bytes) = view.get_cf(sm, &start)? {
        kvs.push(codec::decode("stored key", &bytes)?);
    }
    Ok(RangeResult { kvs, more, revision })
}
