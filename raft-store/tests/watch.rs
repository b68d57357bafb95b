//! Watches: every change after a revision, in order, without gaps; `Compacted` when the
//! window has moved on (DESIGN §4.6).

mod common;

use std::time::Duration;

use common::{open, open_with, put, txn};
use xene_raft_store::{EventKind, Op, StoreConfig, StoreError, WatchKeys};

#[tokio::test]
async fn a_watch_from_a_revision_sees_every_later_change_in_order() {
    let mut store = open();
    store.txn(txn(vec![put("w/a", "1")])).await; // revision 1
    store.txn(txn(vec![put("w/b", "1"), put("x/ignored", "1")])).await; // 2
    store.txn(txn(vec![Op::Delete { key: "w/a".into() }])).await; // 3
    let reader = store.sm.reader();
    let mut watcher = reader.watch(2, b"w/".to_vec()).expect("watch");
    let events = watcher.next().await.expect("events");
    let seen: Vec<(u64, EventKind, Vec<u8>)> =
        events.iter().map(|e| (e.kv.mod_revision, e.kind, e.kv.key.clone())).collect();
    assert_eq!(seen, vec![(2, EventKind::Put, b"w/b".to_vec()), (3, EventKind::Delete, b"w/a".to_vec())]);

    // Later writes arrive as they are applied; a watcher waiting on nothing wakes up.
    let waiting = tokio::spawn(async move { watcher.next().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.txn(txn(vec![put("w/c", "1")])).await; // 4
    let events =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("join").expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.mod_revision, 4);
    assert_eq!(events[0].kv.create_revision, 4);

    // From 0 means "after now".
    let mut from_now = reader.watch(0, Vec::new()).expect("watch");
    assert_eq!(from_now.next_revision(), 5);
    store.txn(txn(vec![put("z", "1")])).await; // 5
    assert_eq!(from_now.next().await.expect("events")[0].kv.key, b"z".to_vec());
}

#[tokio::test]
async fn many_writes_are_delivered_without_gaps_or_duplicates() {
    let mut store = open();
    let reader = store.sm.reader();
    let mut watcher = reader.watch(1, Vec::new()).expect("watch");
    let collector = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while revisions.len() < 2_000 {
            for event in watcher.next().await.expect("events") {
                revisions.push(event.kv.mod_revision);
            }
        }
        revisions
    });
    for i in 0..1_000 {
        // Two events per revision.
        store.txn(txn(vec![put(&format!("k{i}"), "a"), put(&format!("j{i}"), "b")])).await;
    }
    let revisions = tokio::time::timeout(Duration::from_secs(30), collector).await.expect("done").expect("join");
    let expected: Vec<u64> = (1..=1_000).flat_map(|r| [r, r]).collect();
    assert_eq!(revisions, expected);
}

#[tokio::test]
async fn a_watch_older_than_the_window_is_compacted() {
    let mut store = open_with(StoreConfig { watch_window_events: 4, ..StoreConfig::default() });
    for i in 0..10 {
        store.txn(txn(vec![put(&format!("k{i}"), "v")])).await;
    }
    let reader = store.sm.reader();
    match reader.watch(3, Vec::new()) {
        Err(StoreError::Compacted { requested: 3, compacted }) => assert_eq!(compacted, 6),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a watch from a compacted revision must fail"),
    }
    let mut watcher = reader.watch(7, Vec::new()).expect("watch inside the window");
    let revisions: Vec<u64> = watcher.next().await.expect("events").iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revisions, vec![7, 8, 9, 10]);

    // A watcher that falls behind while the window moves learns so instead of skipping.
    let mut slow = reader.watch(11, Vec::new()).expect("watch");
    for i in 0..10 {
        store.txn(txn(vec![put(&format!("s{i}"), "v")])).await;
    }
    assert!(matches!(slow.next().await, Err(StoreError::Compacted { requested: 11, .. })));

    // After a restart the window starts empty at the applied revision.
    let dir = store.dir;
    drop((store.log, store.sm, reader, watcher, slow));
    let (_log, sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert!(matches!(sm.reader().watch(20, Vec::new()), Err(StoreError::Compacted { compacted: 20, .. })));
    assert!(sm.reader().watch(21, Vec::new()).is_ok());
}

#[tokio::test]
async fn large_values_leave_the_window_by_their_bytes() {
    // Room for about three events of 1 KiB values, whatever the count allows.
    let config = StoreConfig { watch_window_events: 1_000, watch_window_bytes: 3 * 1_200, ..StoreConfig::default() };
    let mut store = open_with(config);
    let big = "x".repeat(1_024);
    for i in 0..10 {
        store.txn(txn(vec![put(&format!("k{i}"), &big)])).await;
    }
    let reader = store.sm.reader();
    assert!(
        matches!(reader.watch(7, Vec::new()), Err(StoreError::Compacted { requested: 7, compacted: 7 })),
        "revisions 1 to 7 must have left a window of 3,600 bytes"
    );
    let mut watcher = reader.watch(8, Vec::new()).expect("watch inside the window");
    let events = watcher.next().await.expect("events");
    assert_eq!(events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(), vec![8, 9, 10]);
    assert!(events.iter().all(|e| e.kv.value == big.as_bytes()), "values arrive whole");

    // The bytes of evicted events are given back: ten more, and the window holds the last three.
    for i in 10..20 {
        store.txn(txn(vec![put(&format!("k{i}"), &big)])).await;
    }
    assert!(matches!(reader.watch(17, Vec::new()), Err(StoreError::Compacted { compacted: 17, .. })));
    let mut watcher = reader.watch(18, Vec::new()).expect("watch inside the window");
    let revisions: Vec<u64> = watcher.next().await.expect("events").iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revisions, vec![18, 19, 20]);
}

#[tokio::test]
async fn a_key_watch_sees_that_key_only_and_a_prefix_watch_every_key_under_it() {
    let mut store = open();
    let reader = store.sm.reader();
    let mut exact = reader.watch_keys(1, WatchKeys::Exact(b"foo".to_vec())).expect("key watch");
    let mut prefix = reader.watch(1, b"foo".to_vec()).expect("prefix watch");
    store.txn(txn(vec![put("foobar", "1"), put("foo/x", "1"), put("fo", "1")])).await; // 1
    store.txn(txn(vec![put("foo", "1")])).await; // 2
    store.txn(txn(vec![Op::Delete { key: "foo/x".into() }])).await; // 3
    store.txn(txn(vec![Op::Delete { key: "foo".into() }])).await; // 4

    let seen = |events: Vec<xene_raft_store::Event>| -> Vec<(u64, EventKind, String)> {
        events.into_iter().map(|e| (e.kv.mod_revision, e.kind, String::from_utf8_lossy(&e.kv.key).into())).collect()
    };
    assert_eq!(
        seen(exact.next().await.expect("events")),
        vec![(2, EventKind::Put, "foo".into()), (4, EventKind::Delete, "foo".into())]
    );
    assert_eq!(exact.next_revision(), 5, "revisions without the key are passed over");
    assert_eq!(
        seen(prefix.next().await.expect("events")),
        vec![
            (1, EventKind::Put, "foobar".into()),
            (1, EventKind::Put, "foo/x".into()),
            (2, EventKind::Put, "foo".into()),
            (3, EventKind::Delete, "foo/x".into()),
            (4, EventKind::Delete, "foo".into()),
        ]
    );

    // A key watch waits through writes of other keys that share its prefix.
    let waiting = tokio::spawn(async move { exact.next().await });
    store.txn(txn(vec![put("foo2", "1")])).await; // 5
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "a write of foo2 must not wake a watch of foo with events");
    store.txn(txn(vec![put("foo", "2")])).await; // 6
    let events =
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").expect("join").expect("events");
    assert_eq!(seen(events), vec![(6, EventKind::Put, "foo".into())]);
}
