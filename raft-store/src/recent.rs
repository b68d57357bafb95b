//! The latest log entries in memory, as appended.
//!
//! openraft 0.9 reads back what it has just appended: inside its core task, to hand committed
//! entries to the state machine (`apply_to_state_machine` awaits the read before it goes on),
//! and in each replication task, to send them. From RocksDB each read is a trip to the
//! blocking pool, an iterator and a decode per entry; from here it is a copy. Only a range
//! held whole is served here; anything older is read from RocksDB as before.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::types::Entry;

/// Most bytes (encoded) of entries kept: what a few milliseconds of heavy writing append.
pub(crate) const RECENT_BYTES: usize = 4 << 20;

/// Contiguous entries `first..=last` with their encoded sizes.
#[derive(Default)]
pub(crate) struct RecentEntries {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `entry` (of `size` encoded bytes), the next one after those kept; if it is not
    /// the next (after a snapshot or a truncation nobody told this cache of), starts over so
    /// that what is kept stays contiguous.
    pub(crate) fn push(&self, entry: Entry, size: usize) {
        let mut inner = self.lock();
        let index = entry.log_id.index;
        let follows = inner.entries.last_key_value().is_none_or(|(last, _)| last.checked_add(1) == Some(index));
        if !follows {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.entries.insert(index, (entry, size));
        inner.bytes += size;
        while inner.bytes > RECENT_BYTES && inner.entries.len() > 1 {
            if let Some((_, (_, evicted))) = inner.entries.pop_first() {
                inner.bytes -= evicted;
            }
        }
    }

    /// Copies of the entries `start..end` (`end` = `None`: through the last), if every one of
    /// them is kept.
    pub(crate) fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let inner = self.lock();
        let (&first, _) = inner.entries.first_key_value()?;
        let (&last, _) = inner.entries.last_key_value()?;
        let end = end.unwrap_or(last.saturating_add(1));
        if start < first || end > last.saturating_add(1) {
            return None;
        }
        Some(inner.entries.range(start..end).map(|(_, (entry, _))| entry.clone()).collect())
    }

    /// Forgets the entries from `index` on (the log was truncated there).
    pub(crate) fn truncate_from(&self, index: u64) {
        let mut inner = self.lock();
        let removed = inner.entries.split_off(&index);
        inner.bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
    }

    /// Forgets the entries up to and including `index` (the log was purged there).
    pub(crate) fn purge_through(&self, index: u64) {
        let mut inner = self.lock();
        let kept = match index.checked_add(1) {
            Some(next) => inner.entries.split_off(&next),
            None => BTreeMap::new(),
        };
        inner.entries = kept;
        inner.bytes = inner.entries.values().map(|(_, size)| size).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let recent = RecentEntries::default();
        assert_eq!(indexes(recent.range(1, None)), None, "empty");
        for i in 5..=9 {
            recent.push(entry(i), 10);
        }
        assert_eq!(indexes(recent.range(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.range(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(recent.range(4, Some(6))), None, "starts before the first kept");
        assert_eq!(indexes(recent.range(8, Some(11))), None, "ends after the last kept");
    }

    #[test]
    fn truncation_purge_and_gaps_keep_it_contiguous() {
        let recent = RecentEntries::default();
        for i in 1..=10 {
            recent.push(entry(i), 10);
        }
        recent.truncate_from(8);
        assert_eq!(indexes(recent.range(1, None)), Some((1..=7).collect()));
        recent.purge_through(3);
        assert_eq!(indexes(recent.range(4, None)), Some(vec![4, 5, 6, 7]));
        assert_eq!(indexes(recent.range(3, None)), None);
        // A gap (a snapshot was installed): what was kept is dropped.
        recent.push(entry(100), 10);
        assert_eq!(indexes(recent.range(100, None)), Some(vec![100]));
        assert_eq!(indexes(recent.range(5, Some(8))), None);
    }

    #[test]
    fn keeps_at_most_its_budget() {
        let recent = RecentEntries::default();
        let size = RECENT_BYTES / 4;
        for i in 1..=10 {
            recent.push(entry(i), size);
        }
        assert_eq!(indexes(recent.range(7, None)), Some(vec![7, 8, 9, 10]));
        assert_eq!(indexes(recent.range(6, None)), None);
        recent.push(entry(11), RECENT_BYTES * 2);
        assert_eq!(indexes(recent.range(11, None)), Some(vec![11]), "an oversized entry is kept alone");
    }
}
