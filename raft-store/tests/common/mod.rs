//! Helpers shared by the store's tests: a store in a temporary directory and shorthand for
//! building and applying commands.
#![allow(dead_code)]

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use tempfile::TempDir;
use xene_raft_store::types::{Entry, LogId};
use xene_raft_store::{
    ClientRequest, ClientResponse, Command, LogStore, Op, StateMachineStore, StoreConfig, Txn, TxnResponse,
};

pub struct TestStore {
    pub dir: TempDir,
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub next_index: u64,
}

pub fn open_with(config: StoreConfig) -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, sm) = xene_raft_store::open(dir.path(), &config).expect("open store");
    TestStore { dir, log, sm, next_index: 1 }
}

pub fn open() -> TestStore {
    open_with(StoreConfig::default())
}

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn entry(index: u64, request: ClientRequest) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(request) }
}

pub fn request(txn: Txn) -> ClientRequest {
    ClientRequest { client_id: String::new(), request_id: 0, timestamp_ms: 1_000, command: Command::Txn(txn) }
}

pub fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

/// A put that answers with the key's previous version.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn put_prev(key: &str, value: &str) -> Op {
    Op::PutPrev { key: key.into(), value: value.into() }
}

pub fn get(key: &str) -> Op {
    Op::Get { key: key.into(), prefix: false, limit: 0 }
}

pub fn get_prefix(prefix: &str, limit: u64) -> Op {
    Op::Get { key: prefix.into(), prefix: true, limit }
}

pub fn txn(ops: Vec<Op>) -> Txn {
    Txn { compare: vec![], success: ops, failure: vec![] }
}

impl TestStore {
    /// Applies one request at the next log index and returns the response.
    pub async fn apply(&mut self, request: ClientRequest) -> ClientResponse {
        let index = self.next_index;
        self.next_index += 1;
        let mut responses = self.sm.apply(vec![entry(index, request)]).await.expect("apply");
        responses.pop().expect("one response per entry")
    }

    /// Applies a transaction that must run.
    pub async fn txn(&mut self, txn: Txn) -> TxnResponse {
        match self.apply(request(txn)).await {
            ClientResponse::Txn(response) => response,
            other => panic!("expected a transaction response, got {other:?}"),
        }
    }

    pub async fn value(&self, key: &str) -> Option<String> {
        let result = self.sm.reader().range(key.into(), false, 0).await.expect("range");
        result.kvs.first().map(|kv| String::from_utf8(kv.value.clone()).expect("utf8"))
    }
}
