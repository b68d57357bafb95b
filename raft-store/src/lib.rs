//! Xene's replicated store: openraft's storage over one RocksDB database per server.
//!
//! - [`types`]: the openraft type configuration ([`TypeConfig`]) and identifiers.
//! - [`command`]: the Raft command ([`ClientRequest`]) and its answers; stored forever.
//! - [`codec`]: versioned byte encodings of everything written or sent.
//! - [`LogStore`]: the Raft log, vote and committed index (`log` and `meta` column families).
//! - [`StateMachineStore`]: the revisioned key-value store with transactions, deduplication,
//!   watch events and snapshots (`sm` column family).
//! - [`KvReader`]: local reads and watches of the applied state.
//!
//! This crate knows nothing about the network, tonic, axum or Docker (DESIGN §3).

// openraft's traits fix the error type to `StorageError`, which is large; boxing it is not ours
// to choose.
#![allow(clippy::result_large_err)]

mod blocking;
pub mod codec;
pub mod command;
mod db;
mod dedup;
mod error;
mod index;
mod log_store;
mod log_sync;
mod overlay;
mod reader;
mod recent;
mod state_machine;
pub mod types;
mod watch;

use std::path::Path;

pub use command::{
    ClientRequest, ClientResponse, Command, Compare, CompareOp, CompareTarget, DuplicateResponse, Event, EventKind,
    KeyValue, Op, OpResult, Rejection, Txn, TxnResponse,
};
pub use error::{Result, StoreError};
pub use log_store::LogStore;
pub use log_sync::DiskStall;
pub use reader::{KvReader, RangeResult};
pub use state_machine::StateMachineStore;
pub use types::{NodeId, NodeInfo, Raft, Revision, TypeConfig};
pub use watch::{WatchKeys, Watcher};

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many recent events each server keeps for watchers (DESIGN §4.6).
    pub watch_window_events: usize,
    /// How many bytes of keys and values those events may hold at most; past either bound
    /// the oldest revisions leave the window, and watchers behind them are told to list again.
    pub watch_window_bytes: usize,
    /// How many recent request outcomes are remembered per client (DESIGN §4.4).
    pub dedup_per_client: usize,
    /// How long a client may be silent before its outcomes are forgotten, in milliseconds of
    /// proposer time.
    pub dedup_client_idle_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            watch_window_events: 10_000,
            watch_window_bytes: 32 << 20,
            dedup_per_client: 1_024,
            dedup_client_idle_ms: 15 * 60 * 1000,
        }
    }
}

/// Opens the database in `dir` and returns the log storage and the state machine that
/// openraft drives. Both share the one database.
pub fn open(dir: &Path, config: &StoreConfig) -> Result<(LogStore, StateMachineStore)> {
    let db = db::Db::open(dir)?;
    let state_machine = StateMachineStore::open(db.clone(), config)?;
    let log_store = LogStore::new(db).map_err(StoreError::SyncThread)?;
    Ok((log_store, state_machine))
}
