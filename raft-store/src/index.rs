//! Every stored key's revisions in memory, as etcd's `treeIndex` keeps them: a put, a delete
//! and a compare of a version or revision are answered here instead of by reading the key's
//! record from RocksDB. Under W1 at 256 clients that read was the largest single cost of a
//! server's CPU (PERF.md; BENCHMARKS "where the servers' CPU goes").
//!
//! The index follows the `sm` column family exactly: it is built from it when the state
//! machine opens or installs a snapshot, and `apply` changes it only after the batch that
//! holds the same changes was written.

use std::collections::HashMap;

use rocksdb::{Direction, IteratorMode, ReadOptions};
use serde::Deserialize;

use crate::codec;
use crate::command::KeyValue;
use crate::db::{sm_key, Db, CF_SM};
use crate::error::Result;
use crate::types::Revision;

/// A key's revisions: everything about it but its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Revisions {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: u64,
}

impl Revisions {
    pub(crate) fn of(kv: &KeyValue) -> Self {
        Revisions { create_revision: kv.create_revision, mod_revision: kv.mod_revision, version: kv.version }
    }
}

/// A stored record read without copying its key or value (the fields of [`KeyValue`], in
/// its order).
#[derive(Deserialize)]
struct StoredRecord<'a> {
    _key: &'a [u8],
    _value: &'a [u8],
    create_revision: Revision,
    mod_revision: Revision,
    version: u64,
}

impl StoredRecord<'_> {
    fn revisions(&self) -> Revisions {
        Revisions { create_revision: self.create_revision, mod_revision: self.mod_revision, version: self.version }
    }
}

/// The revisions of every key in the store, by key.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    keys: HashMap<Box<[u8]>, Revisions>,
}

/// What one applied batch did to the keys: `Some` is a put, `None` a delete.
pub(crate) type IndexChanges = Vec<(Vec<u8>, Option<Revisions>)>;

impl KeyIndex {
    /// Reads every key's revisions from the `sm` column family: one pass over every record,
    /// values included (a store of a few gigabytes of logs opens seconds later), that leaves
    /// the block cache to the reads that follow.
    pub(crate) fn load(db: &Db) -> Result<Self> {
        let mut keys = HashMap::new();
        let mut once = ReadOptions::default();
        once.fill_cache(false);
        let start = IteratorMode::From(sm_key::DATA, Direction::Forward);
        let records = db.raw().iterator_cf_opt(db.cf(CF_SM), once, start);
        for item in records {
            let (key, value) = item?;
            let Some(user_key) = key.strip_prefix(sm_key::DATA) else { break };
            let record: StoredRecord<'_> = codec::decode("stored key", &value)?;
            keys.insert(Box::from(user_key), record.revisions());
        }
        Ok(KeyIndex { keys })
    }

    /// The revisions of `key`, `None` when it is not stored.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Revisions> {
        self.keys.get(key).copied()
    }

    /// Records what a batch wrote, once it is written.
    pub(crate) fn apply(&mut self, changes: IndexChanges) {
        for (key, change) in changes {
            match change {
                Some(revisions) => match self.keys.get_mut(key.as_slice()) {
                    Some(slot) => *slot = revisions,
                    None => {
                        self.keys.insert(key.into_boxed_slice(), revisions);
                    }
                },
                None => {
                    self.keys.remove(key.as_slice());
                }
            }
        }
    }

    /// How many keys are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(revision: Revision, version: u64) -> Option<Revisions> {
        Some(Revisions { create_revision: 1, mod_revision: revision, version })
    }

    #[test]
    fn a_batch_puts_overwrites_and_deletes_keys() {
        let mut index = KeyIndex::default();
        index.apply(vec![(b"a".to_vec(), at(1, 1)), (b"b".to_vec(), at(1, 1))]);
        index.apply(vec![(b"a".to_vec(), at(2, 2)), (b"b".to_vec(), None), (b"c".to_vec(), None)]);
        assert_eq!(index.get(b"a"), at(2, 2));
        assert_eq!(index.get(b"b"), None);
        assert_eq!(index.get(b"c"), None, "deleting an absent key leaves it absent");
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_record_reads_back_as_its_revisions_without_its_value() {
        let kv = KeyValue { key: b"k".to_vec(), value: vec![7; 300], create_revision: 3, mod_revision: 9, version: 4 };
        let bytes = codec::encode(&kv);
        let record: StoredRecord<'_> = codec::decode("stored key", &bytes).expect("decodes");
        assert_eq!((record._key, record._value.len()), (b"k".as_slice(), 300));
        assert_eq!(record.revisions(), Revisions::of(&kv));
    }
}
