//! Request-ID deduplication: a retried write applies once (DESIGN §4.4).

mod common;

use common::{open, open_with, put, txn};
use xene_raft_store::{ClientRequest, ClientResponse, Command, DuplicateResponse, Rejection, StoreConfig};

fn req(client: &str, id: u64, ts: u64, key: &str, value: &str) -> ClientRequest {
    ClientRequest {
        client_id: client.into(),
        request_id: id,
        timestamp_ms: ts,
        command: Command::Txn(txn(vec![put(key, value)])),
    }
}

#[tokio::test]
async fn a_retried_request_applies_once() {
    let mut store = open();
    let first = store.apply(req("c1", 7, 1_000, "k", "1")).await;
    assert!(matches!(first, ClientResponse::Txn(ref t) if t.revision == 1));
    store.apply(req("c2", 1, 1_000, "k", "2")).await;
    let retry = store.apply(req("c1", 7, 1_500, "k", "1")).await;
    assert_eq!(retry, ClientResponse::Duplicate(DuplicateResponse { revision: 1, succeeded: true }));
    assert_eq!(store.value("k").await.as_deref(), Some("2"), "the retry did not overwrite the later write");
    // Same request ID from another client is a different request.
    let other = store.apply(req("c3", 7, 1_600, "k", "3")).await;
    assert!(matches!(other, ClientResponse::Txn(_)));
    // Request ID 0 or an empty client opt out of deduplication.
    for _ in 0..2 {
        assert!(matches!(store.apply(req("c1", 0, 1_700, "n", "x")).await, ClientResponse::Txn(_)));
        assert!(matches!(store.apply(req("", 9, 1_700, "n", "x")).await, ClientResponse::Txn(_)));
    }
}

#[tokio::test]
async fn the_window_is_bounded_and_idle_clients_expire() {
    let config = StoreConfig { dedup_per_client: 3, dedup_client_idle_ms: 60_000, ..StoreConfig::default() };
    let mut store = open_with(config.clone());
    for id in 1..=5 {
        store.apply(req("c", id, 1_000, "k", &id.to_string())).await;
    }
    // 3, 4, 5 are remembered; 1 and 2 fell out of the window and cannot be told apart from
    // new requests any more, so they are refused rather than applied twice.
    assert!(matches!(store.apply(req("c", 4, 1_000, "k", "again")).await, ClientResponse::Duplicate(_)));
    assert!(matches!(
        store.apply(req("c", 2, 1_000, "k", "again")).await,
        ClientResponse::Rejected(Rejection::RequestTooOld { request_id: 2, .. })
    ));
    assert_eq!(store.value("k").await.as_deref(), Some("5"));
    assert_eq!(store.sm.dedup_clients(), 1);
    // A command from another client an hour later (proposer time) expires the idle client.
    store.apply(req("d", 1, 3_700_000, "other", "1")).await;
    assert_eq!(store.sm.dedup_clients(), 1, "only d is left");
    assert!(matches!(store.apply(req("c", 4, 3_700_000, "k", "new")).await, ClientResponse::Txn(_)));

    // The table survives a restart, so every replica keeps deciding the same.
    let dir = store.dir;
    drop(store.log);
    drop(store.sm);
    let (_log, sm) = xene_raft_store::open(dir.path(), &config).expect("reopen");
    assert_eq!(sm.dedup_clients(), 2);
}

/// A client's header (its floor and last-seen time) is written once per applied batch, after
/// every request of the batch: what a restart reads back is what the last request left, and
/// a client that expired later in the same batch leaves nothing behind.
#[tokio::test]
async fn the_table_as_left_by_a_whole_batch_survives_a_restart() {
    let config = StoreConfig { dedup_per_client: 3, dedup_client_idle_ms: 60_000, ..StoreConfig::default() };
    let mut store = open_with(config.clone());
    let batch = |requests: Vec<ClientRequest>| ClientRequest {
        client_id: String::new(),
        request_id: 0,
        timestamp_ms: 1_000,
        command: Command::Batch(requests),
    };
    // One entry: "gone", then "c" 1 to 6 (1 to 3 fall out of the window), then "d" an hour
    // later by its proposer's clock, which expires "gone" and "c", and "c" again after it.
    let mut requests = vec![req("gone", 1, 1_000, "g", "x")];
    requests.extend((1..=6).map(|id| req("c", id, 1_000, &format!("k{id}"), "x")));
    requests.extend([req("d", 1, 3_700_000, "d", "x"), req("c", 10, 3_700_000, "k10", "x")]);
    store.apply(batch(requests)).await;
    store.apply(batch(vec![req("c", 11, 3_700_000, "k11", "x"), req("c", 12, 3_700_000, "k12", "x")])).await;
    store.apply(req("c", 13, 3_700_000, "k13", "x")).await;
    assert_eq!(store.sm.dedup_clients(), 2, "c and d");

    let dir = store.dir;
    drop(store.log);
    drop(store.sm);
    let (log, sm) = xene_raft_store::open(dir.path(), &config).expect("reopen");
    let mut store = common::TestStore { dir, log, sm, next_index: store.next_index };
    assert_eq!(store.sm.dedup_clients(), 2, "gone left nothing behind");
    assert!(
        matches!(store.apply(req("c", 12, 3_700_000, "k12", "again")).await, ClientResponse::Duplicate(_)),
        "12 is remembered"
    );
    assert!(
        matches!(
            store.apply(req("c", 10, 3_700_000, "k10", "again")).await,
            ClientResponse::Rejected(Rejection::RequestTooOld { request_id: 10, .. })
        ),
        "the floor written with the last batch survived: 10 fell out of the window"
    );
    assert!(
        matches!(store.apply(req("gone", 1, 3_700_000, "g", "again")).await, ClientResponse::Txn(_)),
        "an expired client starts afresh"
    );
}
