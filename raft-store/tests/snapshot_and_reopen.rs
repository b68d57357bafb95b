//! Snapshots round trip between stores, a reopened store has everything it acknowledged,
//! and bad bytes are errors, never panics or partial applies (DESIGN §4.2, §4.7).

mod common;

use std::io::Cursor;

use common::{log_id, open, put, txn};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership, Vote};
use xene_raft_store::types::Entry;
use xene_raft_store::{NodeInfo, Op, StoreConfig};

fn node(n: u16) -> NodeInfo {
    NodeInfo { grpc_addr: format!("127.0.0.1:{n}"), http_addr: format!("127.0.0.1:{}", n + 1) }
}

async fn all_keys(sm: &xene_raft_store::StateMachineStore) -> Vec<xene_raft_store::KeyValue> {
    sm.reader().range(Vec::new(), true, 0).await.expect("range").kvs
}

#[tokio::test]
async fn snapshot_built_on_one_store_installs_on_a_fresh_one() {
    let mut leader = open();
    let membership = Membership::new(
        vec![[1u64, 2, 3].into_iter().collect()],
        [(1, node(1)), (2, node(3)), (3, node(5))].into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    );
    leader
        .sm
        .apply(vec![Entry { log_id: log_id(1, 1), payload: EntryPayload::Membership(membership.clone()) }])
        .await
        .expect("apply");
    leader.next_index = 2;
    for i in 0..100 {
        leader.txn(txn(vec![put(&format!("key/{i:03}"), &format!("value {i}"))])).await;
    }
    leader.txn(txn(vec![Op::Delete { key: "key/050".into() }, put("key/001", "rewritten")])).await;
    let snapshot = leader.sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 102)));

    let mut follower = open();
    let mut receiving = follower.sm.begin_receiving_snapshot().await.expect("begin");
    *receiving = Cursor::new(snapshot.snapshot.get_ref().clone());
    follower.sm.install_snapshot(&snapshot.meta, receiving).await.expect("install");

    let expected = all_keys(&leader.sm).await;
    assert_eq!(expected.len(), 99);
    assert_eq!(all_keys(&follower.sm).await, expected, "identical keys, values and revisions");
    assert_eq!(
        follower.sm.applied_state().await.expect("state"),
        (Some(log_id(1, 102)), StoredMembership::new(Some(log_id(1, 1)), membership))
    );
    assert_eq!(follower.sm.reader().applied_revision(), 102);
    let current = follower.sm.get_current_snapshot().await.expect("read").expect("present");
    assert_eq!(current.meta, snapshot.meta);
    // The follower goes on from the snapshot: revisions continue.
    follower.next_index = 103;
    let response = follower.txn(txn(vec![put("key/001", "after")])).await;
    assert_eq!(response.revision, 103);
}

#[tokio::test]
async fn a_bad_snapshot_is_an_error_and_changes_nothing() {
    let mut source = open();
    source.txn(txn(vec![put("a", "1")])).await;
    let snapshot = source.sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

    let mut target = open();
    target.txn(txn(vec![put("mine", "1")])).await;
    let before = all_keys(&target.sm).await;
    let good = snapshot.snapshot.get_ref().clone();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped byte", flipped),
        ("garbage", b"not a snapshot at all, just some bytes".to_vec()),
        ("unknown format", {
            let mut v = good.clone();
            v[0] = 99;
            v
        }),
    ];
    for (name, bytes) in cases {
        let result = target.sm.install_snapshot(&snapshot.meta, Box::new(Cursor::new(bytes))).await;
        assert!(result.is_err(), "{name}: must be refused");
        assert_eq!(all_keys(&target.sm).await, before, "{name}: nothing changed");
        assert_eq!(target.sm.applied_state().await.expect("state").0, Some(log_id(1, 1)));
    }
}

#[tokio::test]
async fn a_reopened_store_has_vote_log_committed_applied_and_data() {
    let mut store = open();
    let vote = Vote::new_committed(3, 2);
    store.log.save_vote(&vote).await.expect("vote");
    let entries: Vec<Entry> =
        (1..=5).map(|i| common::entry(i, common::request(txn(vec![put(&format!("k{i}"), "v")])))).collect();
    // Append through openraft's callback path: the test waits for the flush notification.
    store.log.blocking_append(entries.clone()).await.expect("append");
    store.log.save_committed(Some(log_id(1, 4))).await.expect("committed");
    store.sm.apply(entries[..4].to_vec()).await.expect("apply");
    store.log.purge(log_id(1, 2)).await.expect("purge");
    // On the live store: the committed index reads back at once (it was queued to the log
    // writer), and the kept entries read the same from memory (3..6) as from RocksDB (0..10).
    assert_eq!(store.log.read_committed().await.expect("committed"), Some(log_id(1, 4)));
    for range in [3..6, 0..10] {
        let kept = store.log.try_get_log_entries(range).await.expect("entries");
        assert_eq!(kept, entries[2..].to_vec());
    }

    let dir = store.dir;
    drop((store.log, store.sm));
    let (mut log, mut sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 4)));
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    let kept = log.try_get_log_entries(0..10).await.expect("entries");
    assert_eq!(kept.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 4)));
    let keys: Vec<Vec<u8>> = all_keys(&sm).await.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, vec![b"k1".to_vec(), b"k2".into(), b"k3".into(), b"k4".into()]);
}

#[tokio::test]
async fn an_undecodable_log_entry_is_an_error_not_a_panic() {
    let mut store = open();
    let entries: Vec<Entry> = (1..=3).map(|i| common::entry(i, common::request(txn(vec![put("k", "v")])))).collect();
    store.log.blocking_append(entries).await.expect("append");
    let dir = store.dir;
    drop((store.log, store.sm));
    {
        // Corrupt entry 2 behind the store's back.
        let names = ["log", "meta", "sm"];
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), names).expect("raw open");
        let cf = db.cf_handle("log").expect("log cf");
        db.put_cf(cf, 2u64.to_be_bytes(), [1u8, 0xff, 0xff, 0xff]).expect("corrupt");
    }
    let (mut log, _sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert!(log.try_get_log_entries(1..2).await.is_ok(), "entries before the bad one still read");
    let err = log.try_get_log_entries(1..4).await.expect_err("entry 2 is corrupt");
    assert!(err.to_string().contains('2'), "the error names the index: {err}");
}

/// Set in the child process of `a_crash_loses_nothing_the_log_cannot_rebuild`: the directory
/// of the store it writes before it dies.
const CRASH_DIR: &str = "XENE_TEST_CRASH_DIR";

/// The state machine is written without the write-ahead log, so a crash of the process loses
/// its latest writes. What survives must be a whole state as of some applied entry, never
/// older than the last snapshot, and the log must still hold every entry after it: openraft
/// applies those again when the server starts.
#[tokio::test]
async fn a_crash_loses_nothing_the_log_cannot_rebuild() {
    let entries: Vec<Entry> =
        (1..=6).map(|i| common::entry(i, common::request(txn(vec![put(&format!("k{i}"), "v")])))).collect();
    if let Some(dir) = std::env::var_os(CRASH_DIR) {
        // The child: store, snapshot, purge as openraft would, apply more, and die without
        // closing anything.
        let (mut log, mut sm) = xene_raft_store::open(dir.as_ref(), &StoreConfig::default()).expect("open");
        log.blocking_append(entries.clone()).await.expect("append");
        sm.apply(entries[..3].to_vec()).await.expect("apply");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
        log.purge(log_id(1, 3)).await.expect("purge");
        sm.apply(entries[3..].to_vec()).await.expect("apply");
        std::process::abort();
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "a_crash_loses_nothing_the_log_cannot_rebuild", "--nocapture"])
        .env(CRASH_DIR, dir.path())
        .status()
        .expect("run the child");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "the child must get to its abort: {status}");

    let (mut log, mut sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    let applied = sm.applied_state().await.expect("applied").0.map_or(0, |id| id.index);
    assert!((3..=6).contains(&applied), "the state machine went back past its snapshot: applied {applied}");
    let key = |i: u64| format!("k{i}").into_bytes();
    let keys: Vec<Vec<u8>> = all_keys(&sm).await.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, (1..=applied).map(key).collect::<Vec<_>>(), "a whole state as of entry {applied}");
    assert_eq!(log.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 3)));
    let rest = log.try_get_log_entries(applied + 1..7).await.expect("entries");
    assert_eq!(rest, entries[applied as usize..].to_vec(), "the log holds every entry after the applied one");
    sm.apply(rest).await.expect("apply again");
    let keys: Vec<Vec<u8>> = all_keys(&sm).await.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, (1..=6).map(key).collect::<Vec<_>>());
}

/// A database is bound to the node ID it was first claimed by, across reopening: its log and
/// vote are that node's (the server checks this even when its `node-id` file is lost).
#[tokio::test]
async fn a_database_is_claimed_by_one_node_for_good() {
    let store = open();
    store.log.claim(2).expect("the first claim binds the database");
    store.log.claim(2).expect("the same node again");
    let refused = store.log.claim(3).expect_err("another node");
    assert!(matches!(refused, xene_raft_store::StoreError::OtherNode { recorded: 2, given: 3 }), "{refused:?}");
    assert!(refused.to_string().contains("start it as node 2"), "says what to do: {refused}");

    let dir = store.dir;
    drop(store.log);
    drop(store.sm);
    let (log, _sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert!(matches!(log.claim(1), Err(xene_raft_store::StoreError::OtherNode { recorded: 2, given: 1 })));
    log.claim(2).expect("still node 2's");
}

/// The key's record as stored: version and revisions.
async fn stored(sm: &xene_raft_store::StateMachineStore, key: &str) -> Option<(u64, u64, u64)> {
    let kvs = sm.reader().range(key.into(), false, 0).await.expect("range").kvs;
    kvs.first().map(|kv| (kv.version, kv.create_revision, kv.mod_revision))
}

/// A put, a delete and a compare of versions or revisions read a key's revisions from memory
/// (the state machine's key index), not from its stored record; after a reopen and after a
/// snapshot replaced everything, they still see exactly what is stored.
#[tokio::test]
async fn revisions_continue_from_what_is_stored_after_a_reopen_and_a_snapshot() {
    let mut store = open();
    store.txn(txn(vec![put("k", "1")])).await;
    store.txn(txn(vec![put("k", "2"), put("gone", "x")])).await;
    let deleted = store.txn(txn(vec![Op::Delete { key: "gone".into() }, Op::Delete { key: "never".into() }])).await;
    assert_eq!(
        deleted.results,
        vec![xene_raft_store::OpResult::Removed { count: 1 }, xene_raft_store::OpResult::Removed { count: 0 }]
    );
    assert_eq!(stored(&store.sm, "k").await, Some((2, 1, 2)));

    let dir = store.dir;
    let next_index = store.next_index;
    drop((store.log, store.sm));
    let (log, sm) = xene_raft_store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    let mut store = common::TestStore { dir, log, sm, next_index };
    let versioned = |key: &str, version: u64| xene_raft_store::Compare {
        key: key.into(),
        op: xene_raft_store::CompareOp::Equal,
        target: xene_raft_store::CompareTarget::Version(version),
    };
    let reopened = store
        .txn(xene_raft_store::Txn {
            compare: vec![versioned("k", 2), xene_raft_store::Compare::absent("gone")],
            success: vec![put("k", "3"), put("gone", "back")],
            failure: vec![],
        })
        .await;
    assert!(reopened.succeeded, "the reopened store knows k's version and that gone is gone");
    assert_eq!(stored(&store.sm, "k").await, Some((3, 1, 4)), "created at 1, third version");
    assert_eq!(stored(&store.sm, "gone").await, Some((1, 4, 4)), "created again at 4");
    let snapshot = store.sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

    // A store whose own keys the snapshot replaces forgets them.
    let mut other = open();
    other.txn(txn(vec![put("mine", "1"), put("k", "other")])).await;
    let mut receiving = other.sm.begin_receiving_snapshot().await.expect("begin");
    *receiving = Cursor::new(snapshot.snapshot.get_ref().clone());
    other.sm.install_snapshot(&snapshot.meta, receiving).await.expect("install");
    other.next_index = 5;
    let installed = other
        .txn(xene_raft_store::Txn {
            compare: vec![versioned("k", 3), xene_raft_store::Compare::absent("mine")],
            success: vec![put("k", "4"), put("mine", "2")],
            failure: vec![],
        })
        .await;
    assert!(installed.succeeded, "after the snapshot: k at version 3, mine absent");
    assert_eq!(stored(&other.sm, "k").await, Some((4, 1, 5)));
    assert_eq!(stored(&other.sm, "mine").await, Some((1, 5, 5)), "a new key, not a second version of the old one");
}
