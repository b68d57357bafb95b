//! A write set over the `sm` column family: the state machine applies a whole batch of log
//! entries against it, so later operations read earlier writes of the same batch, and then
//! writes it to RocksDB in one atomic batch.
//!
//! A put, a delete and a compare of revisions or versions need only a key's revisions, which
//! [`Overlay::revisions`] answers from the pending writes and the in-memory [`KeyIndex`].
//! What needs a key's value (a compare of values, a get, a write that answers with the
//! previous value) reads it: before an entry runs, [`Overlay::prefetch`] reads those keys in
//! one RocksDB `MultiGet`, which sorts the keys and shares each table's filter and index
//! lookups among them.

use std::collections::BTreeMap;
use std::iter::Peekable;

use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::codec;
use crate::command::KeyValue;
use crate::db::{sm_key, Db, CF_SM};
use crate::error::Result;
use crate::index::{IndexChanges, KeyIndex, Revisions};

/// What a scan returns of each key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Values {
    /// The key as stored, value and revisions.
    Read,
    /// The key alone (empty value, revisions 0): a prefix delete that nobody asked to answer
    /// with the old values does not decode, nor hold, all of them at once.
    Skip,
}

/// Pending writes: `Some` is a put, `None` a delete.
pub(crate) struct Overlay<'a> {
    db: &'a Db,
    /// Every stored key's revisions as of before this batch.
    index: &'a KeyIndex,
    writes: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Keys as stored before this batch, read ahead for the entry being applied; `None` is
    /// an absent key. A key written since is in `writes`, which is looked at first.
    stored: BTreeMap<Vec<u8>, Option<KeyValue>>,
}

pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sm_key::DATA.len() + key.len());
    out.extend_from_slice(sm_key::DATA);
    out.extend_from_slice(key);
    out
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(db: &'a Db, index: &'a KeyIndex) -> Self {
        Overlay { db, index, writes: BTreeMap::new(), stored: BTreeMap::new() }
    }

    /// The current revisions of `key`, pending writes first; `None` when it is absent.
    pub(crate) fn revisions(&self, key: &[u8]) -> Option<Revisions> {
        match self.writes.get(key) {
            Some(pending) => pending.as_ref().map(Revisions::of),
            None => self.index.get(key),
        }
    }

    /// Reads `keys` ahead in one call, for the [`Overlay::get`]s of the entry about to be
    /// applied; forgets what the previous call read, so memory stays bounded by one entry.
    /// Fewer than two keys left to read are left to `get`.
    pub(crate) fn prefetch<'k>(&mut self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<()> {
        self.stored.clear();
        let mut wanted: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|key| !self.writes.contains_key(*key) && self.index.get(key).is_some())
            .map(data_key)
            .collect();
        if wanted.len() < 2 {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let found = self.db.raw().batched_multi_get_cf(self.db.cf(CF_SM), &wanted, true);
        for (key, value) in wanted.iter().zip(found) {
            let kv = match value? {
                None => None,
                Some(bytes) => Some(codec::decode::<KeyValue>("stored key", &bytes)?),
            };
            self.stored.insert(key[sm_key::DATA.len()..].to_vec(), kv);
        }
        Ok(())
    }

    /// The current value of `key`, pending writes first; a key the index does not hold is
    /// not read.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        if let Some(stored) = self.stored.get(key) {
            return Ok(stored.clone());
        }
        if self.index.get(key).is_none() {
            return Ok(None);
        }
        read_key(self.db, key)
    }

    /// As [`Overlay::get`], for a key about to be written: what was read ahead for it is
    /// handed over rather than copied, since `writes` answers for the key from now on.
    pub(crate) fn get_to_write(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        if let Some(stored) = self.stored.remove(key) {
            return Ok(stored);
        }
        if self.index.get(key).is_none() {
            return Ok(None);
        }
        read_key(self.db, key)
    }

    /// Up to `limit` keys starting with `prefix` in key order (0 = all), and whether more exist.
    pub(crate) fn scan(&self, prefix: &[u8], limit: u64, values: Values) -> Result<(Vec<KeyValue>, bool)> {
        let start = data_key(prefix);
        let stored = self
            .db
            .raw()
            .iterator_cf(self.db.cf(CF_SM), IteratorMode::From(&start, Direction::Forward))
            .map(|item| item.map_err(crate::error::StoreError::from))
            .take_while(|item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&start)))
            .map(|item| {
                let (key, value) = item?;
                match values {
                    Values::Read => codec::decode::<KeyValue>("stored key", &value).map_err(Into::into),
                    Values::Skip => Ok(KeyValue { key: key[sm_key::DATA.len()..].to_vec(), ..KeyValue::default() }),
                }
            });
        let pending = self.writes.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix));
        let (mut kvs, more) = merge(stored.peekable(), pending.peekable(), limit)?;
        if values == Values::Skip {
            kvs.iter_mut().for_each(|kv| *kv = KeyValue { key: std::mem::take(&mut kv.key), ..KeyValue::default() });
        }
        Ok((kvs, more))
    }

    pub(crate) fn put(&mut self, kv: KeyValue) {
        self.writes.insert(kv.key.clone(), Some(kv));
    }

    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    /// Moves the pending writes into `batch`, and returns what they do to the [`KeyIndex`]
    /// once `batch` is written.
    pub(crate) fn write_into(self, batch: &mut WriteBatch) -> IndexChanges {
        let cf = self.db.cf(CF_SM);
        let mut changes = Vec::with_capacity(self.writes.len());
        for (key, value) in self.writes {
            match value {
                Some(kv) => {
                    batch.put_cf(cf, data_key(&key), codec::encode(&kv));
                    changes.push((key, Some(Revisions::of(&kv))));
                }
                None => {
                    batch.delete_cf(cf, data_key(&key));
                    changes.push((key, None));
                }
            }
        }
        changes
    }
}

/// Reads one key straight from the database.
pub(crate) fn read_key(db: &Db, key: &[u8]) -> Result<Option<KeyValue>> {
    match db.raw().get_pinned_cf(db.cf(CF_SM), data_key(key))? {
        None => Ok(None),
        Some(bytes) => Ok(Some(codec::decode("stored key", &bytes)?)),
    }
}

/// Merges stored keys with pending writes (which win on equal keys and hide deleted keys).
fn merge<'p, S, P>(mut stored: Peekable<S>, mut pending: Peekable<P>, limit: u64) -> Result<(Vec<KeyValue>, bool)>
where
    S: Iterator<Item = Result<KeyValue>>,
    P: Iterator<Item = (&'p Vec<u8>, &'p Option<KeyValue>)>,
{
    let limit = if limit == 0 { usize::MAX } else { usize::try_from(limit).unwrap_or(usize::MAX) };
    let mut out = Vec::new();
    loop {
        let next = match (stored.peek(), pending.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => match stored.next() {
                Some(Err(e)) => return Err(e),
                _ => continue,
            },
            (Some(Ok(s)), Some((p, _))) if s.key.as_slice() < p.as_slice() => stored.next().transpose()?,
            (Some(Ok(s)), Some((p, _))) if s.key == **p => {
                stored.next();
                pending.next().and_then(|(_, v)| v.clone())
            }
            (None, Some(_)) | (Some(Ok(_)), Some(_)) => pending.next().and_then(|(_, v)| v.clone()),
            (Some(Ok(_)), None) => stored.next().transpose()?,
        };
        if let Some(kv) = next {
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(kv);
        }
    }
    Ok((out, false))
}
