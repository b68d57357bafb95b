//! The bounded window of recent events that watchers read from (DESIGN §4.6).
//!
//! Apply publishes every event of a batch at once, in revision order. A watcher keeps the
//! next revision it wants and reads from the window; when the window has moved past that
//! revision the watcher gets [`StoreError::Compacted`] and must list again. Because readers
//! pull from the window instead of being pushed to, a slow watcher can never see a gap: it
//! sees everything or learns that it fell behind.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::command::Event;
use crate::error::{Result, StoreError};
use crate::types::Revision;

/// The shared window of events and a signal that fires when it grows.
pub struct WatchHub {
    window: Mutex<Window>,
    notify: watch::Sender<Revision>,
}

struct Window {
    events: VecDeque<Event>,
    /// Events at or below this revision may be missing from `events`.
    compacted: Revision,
    /// The last applied revision (events or not).
    latest: Revision,
    /// Most events kept.
    capacity: usize,
    /// Bytes the kept events hold ([`event_bytes`]), and the most they may hold.
    bytes: usize,
    max_bytes: usize,
}

/// What an event costs the window: its key and value, and about the fixed size of an event.
fn event_bytes(event: &Event) -> usize {
    event.kv.key.len() + event.kv.value.len() + std::mem::size_of::<Event>()
}

impl WatchHub {
    /// A window holding up to `capacity` events and `max_bytes` of their keys and values,
    /// starting after revision `applied`.
    pub(crate) fn new(applied: Revision, capacity: usize, max_bytes: usize) -> Arc<Self> {
        let (notify, _) = watch::channel(applied);
        Arc::new(WatchHub {
            window: Mutex::new(Window {
                events: VecDeque::new(),
                compacted: applied,
                latest: applied,
                capacity: capacity.max(1),
                bytes: 0,
                max_bytes,
            }),
            notify,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds the events of one apply batch (in revision order) and moves the latest revision.
    pub(crate) fn publish(&self, events: Vec<Event>, applied: Revision) {
        {
            let mut window = self.lock();
            window.bytes += events.iter().map(event_bytes).sum::<usize>();
            window.events.extend(events);
            window.latest = window.latest.max(applied);
            // Evict whole revisions, so a revision is either complete in the window or compacted.
            // The byte bound keeps large values (log chunks of up to 256 KiB and more) from holding hundreds of
            // megabytes where small ones hold a few.
            while window.events.len() > window.capacity || window.bytes > window.max_bytes {
                let Some(oldest) = window.events.front().map(|e| e.kv.mod_revision) else { break };
                while window.events.front().is_some_and(|e| e.kv.mod_revision == oldest) {
                    let gone = window.events.pop_front().map_or(0, |e| event_bytes(&e));
                    window.bytes -= gone;
                }
                window.compacted = window.compacted.max(oldest);
            }
        }
        self.notify.send_replace(applied);
    }

    /// Forgets every event: the state was replaced wholesale (a snapshot was installed).
    pub(crate) fn reset(&self, applied: Revision) {
        {
            let mut window = self.lock();
            window.events.clear();
            window.bytes = 0;
            window.compacted = applied;
            window.latest = applied;
        }
        self.notify.send_replace(applied);
    }

    /// A signal carrying the last applied revision.
    pub(crate) fn subscribe_revision(&self) -> watch::Receiver<Revision> {
        self.notify.subscribe()
    }

    /// The last applied revision.
    pub fn latest(&self) -> Revision {
        self.lock().latest
    }

    /// Starts a watch of the keys `keys` selects, delivering every event at revision `from`
    /// or later. `from == 0` means "changes after now".
    pub fn watch(self: &Arc<Self>, from: Revision, keys: WatchKeys) -> Result<Watcher> {
        let rx = self.notify.subscribe();
        let next = {
            let window = self.lock();
            let next = if from == 0 { window.latest + 1 } else { from };
            if next <= window.compacted {
                return Err(StoreError::Compacted { requested: next, compacted: window.compacted });
            }
            next
        };
        Ok(Watcher { hub: Arc::clone(self), rx, next, keys })
    }

    /// Events with revision `>= from` whose key `keys` selects, at most about `max` of them
    /// (a revision is never split), and the revision to read from next.
    fn read(&self, from: Revision, keys: &WatchKeys, max: usize) -> Result<(Vec<Event>, Revision)> {
        let window = self.lock();
        if from <= window.compacted {
            return Err(StoreError::Compacted { requested: from, compacted: window.compacted });
        }
        let start = window.events.partition_point(|e| e.kv.mod_revision < from);
        let mut out = Vec::new();
        let mut next = from;
        for event in window.events.iter().skip(start) {
            let revision = event.kv.mod_revision;
            if out.len() >= max && revision >= next {
                return Ok((out, next));
            }
            if keys.selects(&event.kv.key) {
                out.push(event.clone());
            }
            next = revision + 1;
        }
        Ok((out, next.max(window.latest + 1)))
    }
}

/// The keys a watch delivers the events of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchKeys {
    /// Every key that starts with these bytes (all keys when empty).
    Prefix(Vec<u8>),
    /// This key only: watching `foo` says nothing of `foobar` or `foo/x`.
    Exact(Vec<u8>),
}

impl WatchKeys {
    fn selects(&self, key: &[u8]) -> bool {
        match self {
            WatchKeys::Prefix(prefix) => key.starts_with(prefix),
            WatchKeys::Exact(exact) => key == exact.as_slice(),
        }
    }
}

/// One watch: a cursor into the [`WatchHub`].
pub struct Watcher {
    hub: Arc<WatchHub>,
    rx: watch::Receiver<Revision>,
    next: Revision,
    keys: WatchKeys,
}

impl Watcher {
    /// Most events returned by one call of [`Watcher::next`].
    pub const BATCH: usize = 512;

    /// Waits for the next events and returns them in revision order (never empty), or
    /// [`StoreError::Compacted`] when this watcher fell behind the window, or
    /// [`StoreError::Closed`] when the store is gone.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            // Mark the signal seen before reading, so a publish after the read still wakes us.
            self.rx.borrow_and_update();
            let (events, next) = self.hub.read(self.next, &self.keys, Self::BATCH)?;
            self.next = next;
            if !events.is_empty() {
                return Ok(events);
            }
            self.rx.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }

    /// The revision this watcher will deliver from next.
    pub fn next_revision(&self) -> Revision {
        self.next
    }
}
