//! openraft's state machine: the revisioned key-value store of DESIGN §4.3 over the `sm`
//! column family, with deduplication, watch events and snapshots.
//!
//! `apply` is deterministic (STYLE 10): it reads only the store (and the key index that
//! mirrors it) and the commands, orders everything it iterates with `BTreeMap`s, and takes
//! time only from the proposer's timestamp.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot, StorageIOError,
};
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::blocking;
use crate::codec;
use crate::command::{
    ClientRequest, ClientResponse, Command, Compare, CompareOp, CompareTarget, DuplicateResponse, Event, EventKind,
    KeyValue, Op, OpResult, Rejection, Txn, TxnResponse, MAX_CLIENT_ID_BYTES,
};
use crate::db::{meta_key, sm_key, Db, CF_META, CF_SM};
use crate::dedup::{DedupLimits, DedupTable, Seen};
use crate::error::StoreError;
use crate::index::{KeyIndex, Revisions};
use crate::overlay::{Overlay, Values};
use crate::reader::KvReader;
use crate::types::{Entry, LogId, Revision, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::watch::WatchHub;
use crate::StoreConfig;

/// The state machine of one server. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Db,
    state: Mutex<State>,
    /// Every stored key's revisions; locked after `state`, by `apply` and snapshot installs.
    index: Mutex<KeyIndex>,
    watch: Arc<WatchHub>,
    limits: DedupLimits,
    snapshot_seq: AtomicU64,
}

/// What the state machine keeps in memory besides RocksDB.
struct State {
    applied: Option<LogId>,
    membership: StoredMembership,
    dedup: DedupTable,
}

/// The body of a snapshot: every pair of the `sm` column family, in key order.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The current snapshot as kept in the `meta` column family.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::error(e.to_string())).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    let signature = meta.map(|m| m.signature());
    let subject = ErrorSubject::Snapshot(signature);
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

impl StateMachineStore {
    pub(crate) fn open(db: Db, config: &StoreConfig) -> Result<Self, StoreError> {
        let state = load_state(&db)?;
        let index = KeyIndex::load(&db)?;
        let applied = state.applied.map_or(0, |id| id.index);
        Ok(StateMachineStore {
            shared: Arc::new(Shared {
                watch: WatchHub::new(applied, config.watch_window_events, config.watch_window_bytes),
                db,
                state: Mutex::new(state),
                index: Mutex::new(index),
                limits: DedupLimits {
                    per_client: config.dedup_per_client,
                    client_idle_ms: config.dedup_client_idle_ms,
                },
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    /// A read handle on the data, for serving reads and watches without going through Raft.
    pub fn reader(&self) -> KvReader {
        KvReader::new(self.shared.db.clone(), Arc::clone(&self.shared.watch))
    }

    /// The number of clients in the deduplication table.
    pub fn dedup_clients(&self) -> usize {
        self.shared.lock().dedup.clients()
    }
}

fn load_state(db: &Db) -> Result<State, StoreError> {
    let sm = db.cf(CF_SM);
    let applied = match db.raw().get_cf(sm, sm_key::APPLIED)? {
        Some(bytes) => codec::decode("applied log id", &bytes)?,
        None => None,
    };
    let membership = match db.raw().get_cf(sm, sm_key::MEMBERSHIP)? {
        Some(bytes) => codec::decode("applied membership", &bytes)?,
        None => StoredMembership::default(),
    };
    Ok(State { applied, membership, dedup: DedupTable::load(db)? })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_index(&self) -> MutexGuard<'_, KeyIndex> {
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a batch of committed entries; runs on the blocking pool.
    fn apply_batch(&self, entries: Vec<Entry>) -> Result<Vec<ClientResponse>, StorageError> {
        let mut state = self.lock();
        let mut index = self.lock_index();
        let mut overlay = Overlay::new(&self.db, &index);
        // Room for what the entries will write (each request's keys and values, about twice
        // its size with their records and deduplication), so the batch is not copied as it grows.
        let room: usize = entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Normal(request) => 2 * request.approx_len(),
                _ => 0,
            })
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(room + 256);
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let revision = entry.log_id.index;
            let response = match entry.payload {
                EntryPayload::Blank => ClientResponse::Empty,
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ClientResponse::Empty
                }
                EntryPayload::Normal(request) => {
                    let mut keys = Vec::new();
                    named_keys(&request, &mut keys);
                    overlay
                        .prefetch(keys)
                        .and_then(|()| {
                            self.apply_request(&mut state, &mut overlay, &mut batch, &mut events, revision, &request)
                        })
                        .map_err(|e| StorageError::from(StorageIOError::apply(entry.log_id, AnyError::new(&e))))?
                }
            };
            state.applied = Some(entry.log_id);
            responses.push(response);
        }
        // In key order, the table's `d/` keys before the data's `k/` keys, so that RocksDB's
        // memtable inserts each key from where the one before left off.
        state.dedup.write_into(&self.db, &mut batch);
        let changes = overlay.write_into(&mut batch);
        let sm = self.db.cf(CF_SM);
        batch.put_cf(sm, sm_key::APPLIED, codec::encode(&state.applied));
        batch.put_cf(sm, sm_key::MEMBERSHIP, codec::encode(&state.membership));
        // Not in the write-ahead log: the Raft log holds these entries until a snapshot that
        // covers them is built, and building one flushes this column family first.
        self.db.write_unlogged(batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        index.apply(changes);
        drop(index);
        let applied = state.applied.map_or(0, |id| id.index);
        drop(state);
        self.watch.publish(events, applied);
        Ok(responses)
    }

    fn apply_request(
        &self,
        state: &mut State,
        overlay: &mut Overlay<'_>,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
        revision: Revision,
        request: &ClientRequest,
    ) -> Result<ClientResponse, StoreError> {
        state.dedup.expire(&self.db, batch, self.limits, request.timestamp_ms);
        let dedup = !request.client_id.is_empty() && request.request_id != 0;
        if request.client_id.len() > MAX_CLIENT_ID_BYTES {
            return Ok(ClientResponse::Rejected(Rejection::ClientIdTooLong {
                size: request.client_id.len(),
                limit: MAX_CLIENT_ID_BYTES,
            }));
        }
        if dedup {
            match state.dedup.seen(&request.client_id, request.request_id) {
                Seen::Fresh => {}
                Seen::Duplicate(outcome) => return Ok(ClientResponse::Duplicate(outcome)),
                Seen::TooOld => {
                    return Ok(ClientResponse::Rejected(Rejection::RequestTooOld {
                        client_id: request.client_id.clone(),
                        request_id: request.request_id,
                    }))
                }
            }
        }
        let response = match &request.command {
            Command::Txn(txn) => match txn.check_limits() {
                Err(rejection) => ClientResponse::Rejected(rejection),
                Ok(()) => ClientResponse::Txn(execute_txn(overlay, events, revision, txn)?),
            },
            // In order, each against the writes of those before it, like entries of one
            // apply batch; each request is deduplicated on its own identity.
            Command::Batch(requests) => ClientResponse::Batch(
                requests
                    .iter()
                    .map(|inner| self.apply_request(state, overlay, batch, events, revision, inner))
                    .collect::<Result<_, _>>()?,
            ),
        };
        if dedup {
            let succeeded = match &response {
                ClientResponse::Txn(txn) => txn.succeeded,
                _ => false,
            };
            state.dedup.record(self.limits, request, DuplicateResponse { revision, succeeded });
        }
        Ok(response)
    }
}

/// The single keys whose values `request` compares, or reads if its compares hold: what
/// applying it will most likely read from RocksDB (revisions come from the [`KeyIndex`]).
fn named_keys<'r>(request: &'r ClientRequest, keys: &mut Vec<&'r [u8]>) {
    match &request.command {
        Command::Txn(txn) => {
            let values = txn.compare.iter().filter(|compare| matches!(compare.target, CompareTarget::Value(_)));
            keys.extend(values.map(|compare| compare.key.as_slice()));
            keys.extend(txn.success.iter().filter_map(|op| match op {
                Op::PutPrev { key, .. } | Op::DeletePrev { key } | Op::Get { key, prefix: false, .. } => {
                    Some(key.as_slice())
                }
                _ => None,
            }));
        }
        Command::Batch(requests) => requests.iter().for_each(|inner| named_keys(inner, keys)),
    }
}

/// Runs one transaction against the overlay. Limits were checked before, so nothing here can
/// refuse half-way: the transaction applies whole.
fn execute_txn(
    overlay: &mut Overlay<'_>,
    events: &mut Vec<Event>,
    revision: Revision,
    txn: &Txn,
) -> Result<TxnResponse, StoreError> {
    let mut succeeded = true;
    for compare in &txn.compare {
        let holds = match compare.target {
            CompareTarget::Value(_) => compare_holds(overlay.get(&compare.key)?.as_ref(), compare),
            _ => revisions_compare_holds(overlay.revisions(&compare.key), compare),
        };
        if !holds {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let result = match op {
            Op::Put { key, value } | Op::PutPrev { key, value } => {
                let (before, prev) = match op {
                    Op::PutPrev { .. } => {
                        let prev = overlay.get_to_write(key)?;
                        (prev.as_ref().map(Revisions::of), prev)
                    }
                    _ => (overlay.revisions(key), None),
                };
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: before.map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: before.map_or(0, |p| p.version) + 1,
                };
                events.push(Event { kind: EventKind::Put, kv: kv.clone() });
                overlay.put(kv);
                OpResult::Put { prev }
            }
            Op::Get { key, prefix: true, limit } => {
                let (kvs, more) = overlay.scan(key, *limit, Values::Read)?;
                OpResult::Get { kvs, more }
            }
            Op::Get { key, prefix: false, .. } => {
                OpResult::Get { kvs: overlay.get(key)?.into_iter().collect(), more: false }
            }
            Op::Delete { key } | Op::DeletePrev { key } => {
                let deleted: Vec<KeyValue> = match op {
                    Op::DeletePrev { .. } => overlay.get_to_write(key)?.into_iter().collect(),
                    _ => overlay
                        .revisions(key)
                        .map(|_| KeyValue { key: key.clone(), ..KeyValue::default() })
                        .into_iter()
                        .collect(),
                };
                delete_all(overlay, events, revision, &deleted);
                deleted_result(op, deleted)
            }
            Op::DeletePrefix { prefix } | Op::DeletePrefixPrev { prefix } => {
                let values = if matches!(op, Op::DeletePrefixPrev { .. }) { Values::Read } else { Values::Skip };
                let (deleted, _) = overlay.scan(prefix, 0, values)?;
                delete_all(overlay, events, revision, &deleted);
                deleted_result(op, deleted)
            }
        };
        results.push(result);
    }
    Ok(TxnResponse { revision, succeeded, results })
}

/// What a delete answers: the keys as they were if it asked for them, else how many.
fn deleted_result(op: &Op, deleted: Vec<KeyValue>) -> OpResult {
    match op {
        Op::DeletePrev { .. } | Op::DeletePrefixPrev { .. } => OpResult::Delete { deleted },
        _ => OpResult::Removed { count: deleted.len() as u64 },
    }
}

fn delete_all(overlay: &mut Overlay<'_>, events: &mut Vec<Event>, revision: Revision, deleted: &[KeyValue]) {
    for kv in deleted {
        overlay.delete(&kv.key);
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: kv.key.clone(), mod_revision: revision, ..KeyValue::default() },
        });
    }
}

/// Whether `compare` holds for the key's current value (`None` when absent).
pub(crate) fn compare_holds(current: Option<&KeyValue>, compare: &Compare) -> bool {
    match (&compare.target, current) {
        // As in etcd, an absent key has no value to compare: every value compare is false.
        (CompareTarget::Value(_), None) => false,
        (CompareTarget::Value(v), Some(kv)) => ordering_holds(kv.value.as_slice().cmp(v.as_slice()), compare.op),
        (_, kv) => revisions_compare_holds(kv.map(Revisions::of), compare),
    }
}

/// Whether `compare`, which is not about the value, holds for the key's current revisions
/// (`None` when absent: version and revisions 0).
fn revisions_compare_holds(current: Option<Revisions>, compare: &Compare) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => current.map_or(0, |r| r.version).cmp(v),
        CompareTarget::CreateRevision(r) => current.map_or(0, |c| c.create_revision).cmp(r),
        CompareTarget::ModRevision(r) => current.map_or(0, |c| c.mod_revision).cmp(r),
        // Asked only of value compares' callers; a value compare is never true here.
        CompareTarget::Value(_) => return false,
    };
    ordering_holds(ordering, compare.op)
}

fn ordering_holds(ordering: std::cmp::Ordering, op: CompareOp) -> bool {
    use std::cmp::Ordering as O;
    match op {
        CompareOp::Equal => ordering == O::Equal,
        CompareOp::NotEqual => ordering != O::Equal,
        CompareOp::Less => ordering == O::Less,
        CompareOp::Greater => ordering == O::Greater,
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.shared.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClientResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let shared = Arc::clone(&self.shared);
        blocking::run(ErrorSubject::StateMachine, ErrorVerb::Write, move || shared.apply_batch(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let meta = meta.clone();
        let data = snapshot.into_inner();
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "installing a snapshot received from the leader");
        blocking::run(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, move || {
            shared.install(meta, data)
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = Arc::clone(&self.shared);
        blocking::run(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            let bytes = shared
                .db
                .raw()
                .get_cf(shared.db.cf(CF_META), meta_key::SNAPSHOT)
                .map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
            let Some(bytes) = bytes else { return Ok(None) };
            let stored: StoredSnapshot =
                codec::decode("stored snapshot", &bytes).map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
            Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
        })
        .await
    }
}

impl Shared {
    /// Builds a snapshot from a consistent RocksDB view of the `sm` column family and keeps
    /// it as the current snapshot.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let view = self.db.raw().snapshot();
        let mut pairs = Vec::new();
        for item in view.iterator_cf(self.db.cf(CF_SM), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        drop(view);
        // The state machine is written without the write-ahead log (`apply_batch`). Once this
        // snapshot is kept, openraft may purge the entries it covers; flush first, so that the
        // state on disk is at least the snapshot's, whatever crash comes after.
        self.db.flush_state_machine().map_err(|e| snapshot_err(None, ErrorVerb::Write, e))?;
        let find = |key: &[u8]| pairs.iter().find(|(k, _)| k.as_slice() == key).map(|(_, v)| v.as_slice());
        let last_log_id: Option<LogId> = match find(sm_key::APPLIED) {
            Some(bytes) => {
                codec::decode("applied log id", bytes).map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?
            }
            None => None,
        };
        let last_membership: StoredMembership = match find(sm_key::MEMBERSHIP) {
            Some(bytes) => codec::decode("membership", bytes).map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, seq),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let data = codec::encode_checked(&SnapshotBody { pairs });
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(CF_META), meta_key::SNAPSHOT, codec::encode(&stored));
        self.db.write_durable(batch).map_err(|e| snapshot_err(Some(&meta), ErrorVerb::Write, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }

    /// Replaces the whole state with a received snapshot. The snapshot is decoded and checked
    /// completely before anything is written, and then written in one atomic batch, so a bad
    /// snapshot changes nothing.
    fn install(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let fail = |e: &dyn std::fmt::Display| snapshot_err(Some(&meta), ErrorVerb::Write, e);
        let body: SnapshotBody = codec::decode_checked("snapshot", &data).map_err(|e| fail(&e))?;
        for (key, value) in &body.pairs {
            if let Some(user_key) = key.strip_prefix(sm_key::DATA) {
                let kv: KeyValue = codec::decode("snapshot key", value).map_err(|e| fail(&e))?;
                if kv.key != user_key {
                    return Err(fail(&"snapshot key does not match its record"));
                }
            }
        }
        let mut state = self.lock();
        let sm = self.db.cf(CF_SM);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(sm, [0u8].as_slice(), [0xffu8; 16].as_slice());
        for (key, value) in &body.pairs {
            batch.put_cf(sm, key, value);
        }
        batch.put_cf(sm, sm_key::APPLIED, codec::encode(&meta.last_log_id));
        batch.put_cf(sm, sm_key::MEMBERSHIP, codec::encode(&meta.last_membership));
        let stored = StoredSnapshot { meta: meta.clone(), data };
        batch.put_cf(self.db.cf(CF_META), meta_key::SNAPSHOT, codec::encode(&stored));
        // Synced: the log entries this snapshot replaces may be purged right after.
        self.db.write_durable(batch).map_err(|e| fail(&e))?;
        *state = load_state(&self.db).map_err(|e| fail(&e))?;
        *self.lock_index() = KeyIndex::load(&self.db).map_err(|e| fail(&e))?;
        let applied = state.applied.map_or(0, |id| id.index);
        drop(state);
        self.watch.reset(applied);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = Arc::clone(&self.shared);
        blocking::run(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || shared.build()).await
    }
}
