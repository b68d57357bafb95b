//! Request-ID deduplication (DESIGN §4.4): the state machine remembers, per client, the
//! outcome of its recent requests, so a write retried after a lost answer applies once.
//!
//! The table is part of the replicated state: it is written in the same batch as the data,
//! travels in snapshots, and every decision it makes depends only on the commands applied,
//! never on this server's clock or history, so every replica decides the same.

use std::collections::{BTreeMap, BTreeSet};

use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::command::{ClientRequest, DuplicateResponse};
use crate::db::{sm_key, Db, CF_SM};
use crate::error::Result;

/// What the table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not applied before: apply it.
    Fresh,
    /// Applied before with this outcome.
    Duplicate(DuplicateResponse),
    /// Older than everything remembered for its client: it cannot be told apart.
    TooOld,
}

/// Limits of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DedupLimits {
    pub per_client: usize,
    pub client_idle_ms: u64,
}

/// The header record of one client, stored under request ID 0 (which no request uses).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct ClientHeader {
    /// Requests at or below this ID were forgotten.
    floor: u64,
    /// The newest proposer timestamp seen from this client.
    last_seen_ms: u64,
}

#[derive(Debug, Default)]
struct Client {
    header: ClientHeader,
    outcomes: BTreeMap<u64, DuplicateResponse>,
}

/// The in-memory copy of the table, loaded at open and after a snapshot is installed.
#[derive(Debug, Default)]
pub(crate) struct DedupTable {
    clients: BTreeMap<String, Client>,
    /// (last_seen_ms, client) for expiring idle clients in order.
    by_age: BTreeSet<(u64, String)>,
    /// Changes not yet in a write batch, in key order: `Some` a put, `None` a delete. They
    /// are written once per applied batch, so a client's header is written once rather than
    /// after every request, and RocksDB's memtable takes the records in key order, each
    /// insert starting from where the one before left off, rather than alternating between
    /// the newest record and the one it evicts.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Clients whose header changed since [`DedupTable::write_into`] last ran.
    dirty: BTreeSet<String>,
}

fn client_prefix(client: &str) -> Vec<u8> {
    // With room for the request ID that `record_key` appends.
    let mut key = Vec::with_capacity(sm_key::DEDUP.len() + 2 + client.len() + 8);
    key.extend_from_slice(sm_key::DEDUP);
    // Length-prefixed so no client's prefix is a prefix of another's.
    key.extend_from_slice(&(client.len() as u16).to_be_bytes());
    key.extend_from_slice(client.as_bytes());
    key
}

fn record_key(client: &str, request_id: u64) -> Vec<u8> {
    let mut key = client_prefix(client);
    key.extend_from_slice(&request_id.to_be_bytes());
    key
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xff; 9]);
    end
}

impl DedupTable {
    /// Reads the table from the `sm` column family.
    pub(crate) fn load(db: &Db) -> Result<Self> {
        let mut table = DedupTable::default();
        let iter = db.raw().iterator_cf(db.cf(CF_SM), IteratorMode::From(sm_key::DEDUP, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            let Some(rest) = key.strip_prefix(sm_key::DEDUP) else { break };
            let (client, request_id) = split_record_key(rest)?;
            let entry = table.clients.entry(client).or_default();
            if request_id == 0 {
                entry.header = codec::decode("deduplication header", &value)?;
            } else {
                entry.outcomes.insert(request_id, codec::decode("deduplication record", &value)?);
            }
        }
        for (name, client) in &table.clients {
            table.by_age.insert((client.header.last_seen_ms, name.clone()));
        }
        Ok(table)
    }

    /// Looks a request up.
    pub(crate) fn seen(&self, client: &str, request_id: u64) -> Seen {
        let Some(entry) = self.clients.get(client) else { return Seen::Fresh };
        if let Some(outcome) = entry.outcomes.get(&request_id) {
            return Seen::Duplicate(*outcome);
        }
        if request_id <= entry.header.floor {
            return Seen::TooOld;
        }
        Seen::Fresh
    }

    /// Remembers the outcome of a request just applied and evicts the client's oldest
    /// outcomes beyond the limit; [`DedupTable::write_into`] writes the changes.
    pub(crate) fn record(&mut self, limits: DedupLimits, request: &ClientRequest, outcome: DuplicateResponse) {
        let (client, request_id, now_ms) = (request.client_id.as_str(), request.request_id, request.timestamp_ms);
        let new = !self.clients.contains_key(client);
        if new {
            self.clients.insert(client.to_string(), Client::default());
        }
        let Some(entry) = self.clients.get_mut(client) else { return };
        let last_seen = entry.header.last_seen_ms.max(now_ms);
        if new || last_seen != entry.header.last_seen_ms {
            self.by_age.remove(&(entry.header.last_seen_ms, client.to_string()));
            self.by_age.insert((last_seen, client.to_string()));
            entry.header.last_seen_ms = last_seen;
        }
        entry.outcomes.insert(request_id, outcome);
        self.pending.insert(record_key(client, request_id), Some(codec::encode(&outcome)));
        while entry.outcomes.len() > limits.per_client.max(1) {
            let Some((oldest, _)) = entry.outcomes.pop_first() else { break };
            entry.header.floor = entry.header.floor.max(oldest);
            self.pending.insert(record_key(client, oldest), None);
        }
        if !self.dirty.contains(client) {
            self.dirty.insert(client.to_string());
        }
    }

    /// Writes into `batch`, in key order, every change since the last call: the records
    /// and the headers of the clients still remembered.
    pub(crate) fn write_into(&mut self, db: &Db, batch: &mut WriteBatch) {
        for client in std::mem::take(&mut self.dirty) {
            if let Some(entry) = self.clients.get(&client) {
                self.pending.insert(record_key(&client, 0), Some(codec::encode(&entry.header)));
            }
        }
        let cf = db.cf(CF_SM);
        for (key, value) in std::mem::take(&mut self.pending) {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
    }

    /// Forgets clients idle for longer than the limit, judged by the proposer's clock of the
    /// command being applied.
    pub(crate) fn expire(&mut self, db: &Db, batch: &mut WriteBatch, limits: DedupLimits, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(limits.client_idle_ms);
        while let Some((last_seen, _)) = self.by_age.first() {
            if *last_seen >= cutoff {
                break;
            }
            let Some((_, name)) = self.by_age.pop_first() else { break };
            self.clients.remove(&name);
            let prefix = client_prefix(&name);
            let end = prefix_end(&prefix);
            // Its changes not yet written go with it; whatever it records from now on is
            // written after this delete.
            self.pending.retain(|key, _| !(key.as_slice() >= prefix.as_slice() && key.as_slice() < end.as_slice()));
            batch.delete_range_cf(db.cf(CF_SM), &prefix, &end);
        }
    }

    /// The number of clients remembered (for tests and metrics).
    pub(crate) fn clients(&self) -> usize {
        self.clients.len()
    }
}

fn split_record_key(rest: &[u8]) -> Result<(String, u64)> {
    use crate::codec::DecodeError;
    let bad = || DecodeError::Body { what: "deduplication key", source: postcard::Error::DeserializeBadEncoding };
    if rest.len() < 2 {
        return Err(bad().into());
    }
    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    if rest.len() != 2 + len + 8 {
        return Err(bad().into());
    }
    let client = std::str::from_utf8(&rest[2..2 + len]).map_err(|_| bad())?.to_string();
    let mut id = [0u8; 8];
    id.copy_from_slice(&rest[2 + len..]);
    Ok((client, u64::from_be_bytes(id)))
}
