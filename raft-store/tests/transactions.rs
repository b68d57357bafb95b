//! The revisioned key-value store: every compare and op of a transaction, revisions after
//! each write, delete-range, limits (DESIGN §4.3).

mod common;

use common::{get, get_prefix, open, put, put_prev, request, txn};
use xene_raft_store::command::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use xene_raft_store::{ClientResponse, Compare, CompareOp, CompareTarget, KeyValue, Op, OpResult, Rejection, Txn};

fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue { key: key.into(), value: value.into(), create_revision: create, mod_revision: modified, version }
}

#[tokio::test]
async fn revisions_follow_the_log_index() {
    let mut store = open();
    let first = store.txn(txn(vec![put("a", "1")])).await;
    assert_eq!(first.revision, 1);
    assert_eq!(first.results, vec![OpResult::Put { prev: None }]);
    let second = store.txn(txn(vec![put_prev("a", "2")])).await;
    assert_eq!(second.results, vec![OpResult::Put { prev: Some(kv("a", "1", 1, 1, 1)) }]);
    let read = store.txn(txn(vec![get("a")])).await;
    assert_eq!(read.results, vec![OpResult::Get { kvs: vec![kv("a", "2", 1, 2, 2)], more: false }]);
    // Delete then recreate: create revision and version start again.
    store.txn(txn(vec![Op::Delete { key: "a".into() }])).await;
    store.txn(txn(vec![put("a", "3")])).await;
    let read = store.txn(txn(vec![get("a")])).await;
    assert_eq!(read.results, vec![OpResult::Get { kvs: vec![kv("a", "3", 5, 5, 1)], more: false }]);
    assert_eq!(store.sm.reader().applied_revision(), 6);
}

/// Each compare target and operator against a present key (`k` = "m", create 1, mod 2,
/// version 2) and an absent one.
#[tokio::test]
async fn every_compare_target_and_operator() {
    let mut store = open();
    store.txn(txn(vec![put("k", "a")])).await;
    store.txn(txn(vec![put("k", "m")])).await;
    use CompareOp::*;
    use CompareTarget::*;
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("k", Equal, Version(2), true),
        ("k", NotEqual, Version(2), false),
        ("k", Less, Version(3), true),
        ("k", Greater, Version(1), true),
        ("k", Greater, Version(2), false),
        ("k", Equal, CreateRevision(1), true),
        ("k", Less, CreateRevision(1), false),
        ("k", Equal, ModRevision(2), true),
        ("k", Equal, ModRevision(1), false),
        ("k", Greater, ModRevision(1), true),
        ("k", Equal, Value(b"m".to_vec()), true),
        ("k", Equal, Value(b"x".to_vec()), false),
        ("k", Less, Value(b"z".to_vec()), true),
        ("k", Greater, Value(b"a".to_vec()), true),
        ("k", NotEqual, Value(b"m".to_vec()), false),
        ("absent", Equal, Version(0), true),
        ("absent", Equal, CreateRevision(0), true),
        ("absent", Equal, ModRevision(0), true),
        ("absent", Equal, Value(vec![]), false),
        ("absent", NotEqual, Value(b"m".to_vec()), false),
    ];
    for (key, op, target, expected) in cases {
        let compare = Compare { key: key.into(), op, target: target.clone() };
        let response =
            store.txn(Txn { compare: vec![compare], success: vec![get("k")], failure: vec![get_prefix("", 0)] }).await;
        assert_eq!(response.succeeded, expected, "{key} {op:?} {target:?}");
        // The branch that ran produced its results: one key for success, all keys for failure.
        match &response.results[..] {
            [OpResult::Get { kvs, .. }] => assert_eq!(kvs.len(), 1),
            other => panic!("unexpected results {other:?}"),
        }
    }
    // The helpers mean what they say.
    for (compare, expected) in [
        (Compare::absent("k"), false),
        (Compare::absent("nope"), true),
        (Compare::present("k"), true),
        (Compare::mod_revision("k", 2), true),
        (Compare::value("k", "m"), true),
    ] {
        let response = store.txn(Txn { compare: vec![compare.clone()], ..Txn::default() }).await;
        assert_eq!(response.succeeded, expected, "{compare:?}");
    }
}

#[tokio::test]
async fn failed_compare_runs_the_else_branch_only() {
    let mut store = open();
    store.txn(txn(vec![put("k", "1")])).await;
    let response = store
        .txn(Txn {
            compare: vec![Compare::absent("k")],
            success: vec![put("k", "then")],
            failure: vec![put("other", "else")],
        })
        .await;
    assert!(!response.succeeded);
    assert_eq!(store.value("k").await.as_deref(), Some("1"));
    assert_eq!(store.value("other").await.as_deref(), Some("else"));
    // All compares must hold: one false compare among true ones fails the transaction.
    let response = store
        .txn(Txn {
            compare: vec![Compare::present("k"), Compare::value("k", "2")],
            success: vec![put("k", "then")],
            failure: vec![],
        })
        .await;
    assert!(!response.succeeded);
    assert_eq!(store.value("k").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn operations_see_earlier_writes_of_the_same_transaction_and_batch() {
    let mut store = open();
    let response = store
        .txn(txn(vec![
            put("p/a", "1"),
            put("p/b", "2"),
            get("p/a"),
            Op::Delete { key: "p/a".into() },
            get_prefix("p/", 0),
        ]))
        .await;
    assert_eq!(
        response.results[2],
        OpResult::Get { kvs: vec![kv("p/a", "1", 1, 1, 1)], more: false },
        "a get sees the put before it"
    );
    assert_eq!(response.results[4], OpResult::Get { kvs: vec![kv("p/b", "2", 1, 1, 1)], more: false });

    // Several entries in one apply call: the second reads the first's write.
    use openraft::storage::RaftStateMachine;
    let entries = vec![
        common::entry(2, request(txn(vec![put("x", "1")]))),
        common::entry(
            3,
            request(Txn { compare: vec![Compare::value("x", "1")], success: vec![put("y", "seen")], failure: vec![] }),
        ),
    ];
    let responses = store.sm.apply(entries).await.expect("apply");
    assert!(matches!(&responses[1], ClientResponse::Txn(t) if t.succeeded));
    assert_eq!(store.value("y").await.as_deref(), Some("seen"));
}

#[tokio::test]
async fn prefix_ranges_with_limits_and_delete_prefix() {
    let mut store = open();
    store.txn(txn(vec![put("a/1", "x"), put("a/2", "x"), put("a/3", "x"), put("ab", "x"), put("b/1", "x")])).await;
    let reader = store.sm.reader();
    let all = reader.range(b"a/".to_vec(), true, 0).await.expect("range");
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"a/1".to_vec(), b"a/2".into(), b"a/3".into()]
    );
    assert!(!all.more);
    let two = reader.range(b"a/".to_vec(), true, 2).await.expect("range");
    assert_eq!(two.kvs.len(), 2);
    assert!(two.more);
    let exact = reader.range(b"a/".to_vec(), true, 3).await.expect("range");
    assert!(!exact.more, "no more when the limit equals the count");

    // Page by page: each page starts after the last key of the one before, and the pages hold
    // the prefix's keys and nothing else, once each.
    let mut pages = Vec::new();
    let mut from = Vec::new();
    loop {
        let page = reader.range_from(b"a/".to_vec(), from.clone(), 2).await.expect("page");
        pages.push(page.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>());
        match page.kvs.last() {
            Some(last) if page.more => from = [last.key.as_slice(), &[0]].concat(),
            _ => break,
        }
    }
    assert_eq!(pages, vec![vec![b"a/1".to_vec(), b"a/2".into()], vec![b"a/3".to_vec()]]);
    let from_inside = reader.range_from(b"a/".to_vec(), b"a/2".to_vec(), 0).await.expect("range");
    assert_eq!(
        from_inside.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"a/2".to_vec(), b"a/3".into()]
    );
    let before_prefix = reader.range_from(b"a/".to_vec(), b"0".to_vec(), 0).await.expect("range");
    assert_eq!(before_prefix.kvs, all.kvs, "a start before the prefix reads from the prefix");

    // The same through a transaction, where pending writes merge with stored keys.
    let response = store.txn(txn(vec![put("a/0", "new"), Op::Delete { key: "a/2".into() }, get_prefix("a/", 2)])).await;
    match &response.results[2] {
        OpResult::Get { kvs, more } => {
            assert_eq!(kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"a/0".to_vec(), b"a/1".into()]);
            assert!(*more);
        }
        other => panic!("{other:?}"),
    }

    let response = store.txn(txn(vec![Op::DeletePrefix { prefix: "a/".into() }])).await;
    match &response.results[0] {
        OpResult::Removed { count } => assert_eq!(*count, 3, "a/0, a/1, a/3"),
        other => panic!("{other:?}"),
    }
    let left = reader.range(Vec::new(), true, 0).await.expect("range");
    assert_eq!(left.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), vec![b"ab".to_vec(), b"b/1".to_vec()]);
    assert_eq!(left.revision, 3);
    // Deleting what is not there deletes nothing and is not an error.
    let response = store.txn(txn(vec![Op::Delete { key: "nope".into() }])).await;
    assert_eq!(response.results, vec![OpResult::Removed { count: 0 }]);
}

/// A write answers with what it replaced only when it asks to (etcd's `prev_kv`); asked or
/// not, it changes the store, the revisions and the watch events alike.
#[tokio::test]
async fn writes_answer_with_what_they_replaced_only_when_asked() {
    let mut store = open();
    store.txn(txn(vec![put("a", "1"), put("p/1", "1"), put("p/2", "2"), put("q/1", "1"), put("q/2", "2")])).await;
    let quiet = store
        .txn(txn(vec![put("a", "2"), Op::Delete { key: "a".into() }, Op::DeletePrefix { prefix: "p/".into() }]))
        .await;
    assert_eq!(
        quiet.results,
        vec![OpResult::Put { prev: None }, OpResult::Removed { count: 1 }, OpResult::Removed { count: 2 }]
    );
    store.txn(txn(vec![put("a", "3")])).await;
    let asked = store
        .txn(txn(vec![
            put_prev("a", "4"),
            Op::DeletePrev { key: "a".into() },
            Op::DeletePrefixPrev { prefix: "q/".into() },
        ]))
        .await;
    assert_eq!(
        asked.results,
        vec![
            OpResult::Put { prev: Some(kv("a", "3", 3, 3, 1)) },
            OpResult::Delete { deleted: vec![kv("a", "4", 3, 4, 2)] },
            OpResult::Delete { deleted: vec![kv("q/1", "1", 1, 1, 1), kv("q/2", "2", 1, 1, 1)] },
        ]
    );
    let left = store.sm.reader().range(Vec::new(), true, 0).await.expect("range");
    assert!(left.kvs.is_empty(), "both kinds removed everything: {:?}", left.kvs);
    let mut watcher = store.sm.reader().watch(2, Vec::new()).expect("watch");
    let mut kinds = Vec::new();
    while kinds.len() < 9 {
        let events = tokio::time::timeout(std::time::Duration::from_secs(5), watcher.next()).await;
        let events = events.expect("the events of revisions 2 to 4").expect("events");
        kinds.extend(events.iter().map(|e| (e.kv.key.clone(), e.kind, e.kv.mod_revision)));
    }
    use xene_raft_store::EventKind::{Delete, Put};
    assert_eq!(
        kinds,
        vec![
            (b"a".to_vec(), Put, 2),
            (b"a".to_vec(), Delete, 2),
            (b"p/1".to_vec(), Delete, 2),
            (b"p/2".to_vec(), Delete, 2),
            (b"a".to_vec(), Put, 3),
            (b"a".to_vec(), Put, 4),
            (b"a".to_vec(), Delete, 4),
            (b"q/1".to_vec(), Delete, 4),
            (b"q/2".to_vec(), Delete, 4),
        ]
    );
}

#[tokio::test]
async fn oversized_or_malformed_commands_are_rejected_whole() {
    let mut store = open();
    store.txn(txn(vec![put("keep", "1")])).await;
    type Expect = fn(&Rejection) -> bool;
    let cases: Vec<(Txn, Expect)> = vec![
        (txn(vec![put("fine", "1"), Op::Put { key: "big".into(), value: vec![0; MAX_VALUE_BYTES + 1] }]), |r| {
            matches!(r, Rejection::ValueTooLarge { .. })
        }),
        (txn(vec![put("fine", "1"), Op::Put { key: vec![b'k'; MAX_KEY_BYTES + 1], value: vec![] }]), |r| {
            matches!(r, Rejection::KeyTooLarge { .. })
        }),
        (txn(vec![put("fine", "1"), Op::Put { key: vec![], value: vec![] }]), |r| matches!(r, Rejection::EmptyKey)),
        (txn((0..2000).map(|i| put(&format!("k{i}"), "v")).collect()), |r| matches!(r, Rejection::TooManyOps { .. })),
    ];
    for (txn, expected) in cases {
        match store.apply(request(txn)).await {
            ClientResponse::Rejected(rejection) => {
                assert!(expected(&rejection), "unexpected rejection {rejection:?}");
                assert!(!rejection.to_string().is_empty());
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    let all = store.sm.reader().range(Vec::new(), true, 0).await.expect("range");
    assert_eq!(all.kvs.len(), 1, "nothing of a rejected transaction was applied");
}

/// A batch entry (several clients' requests grouped by the leader) applies its requests in
/// order, each at the entry's revision, each deduplicated on its own identity, and answers
/// one response per request.
#[tokio::test]
async fn a_batch_applies_each_request_in_order_at_one_revision() {
    let mut store = open();
    store.txn(txn(vec![put("a", "0")])).await; // revision 1
    let of = |client: &str, id: u64, txn: Txn| xene_raft_store::ClientRequest {
        client_id: client.into(),
        request_id: id,
        timestamp_ms: 1_000,
        command: xene_raft_store::Command::Txn(txn),
    };
    let first = of("c1", 1, txn(vec![put("b", "1")]));
    // Sees the write before it in the same entry: b exists, so the success branch runs.
    let second = of(
        "c2",
        1,
        Txn { compare: vec![Compare::present("b")], success: vec![put("c", "2"), get("a")], failure: vec![] },
    );
    let too_big = of("c3", 1, txn(vec![put("", "x")]));
    let batch = |requests| xene_raft_store::ClientRequest {
        client_id: String::new(),
        request_id: 0,
        timestamp_ms: 1_000,
        command: xene_raft_store::Command::Batch(requests),
    };
    let answers = match store.apply(batch(vec![first.clone(), second, too_big])).await {
        ClientResponse::Batch(answers) => answers,
        other => panic!("expected a batch answer, got {other:?}"),
    };
    assert_eq!(answers.len(), 3);
    match &answers[0] {
        ClientResponse::Txn(t) => assert_eq!((t.revision, t.succeeded), (2, true)),
        other => panic!("first: {other:?}"),
    }
    match &answers[1] {
        ClientResponse::Txn(t) => {
            assert_eq!((t.revision, t.succeeded), (2, true), "the compare saw the batch's earlier write");
            assert_eq!(t.results[1], OpResult::Get { kvs: vec![kv("a", "0", 1, 1, 1)], more: false });
        }
        other => panic!("second: {other:?}"),
    }
    assert_eq!(answers[2], ClientResponse::Rejected(Rejection::EmptyKey), "one refusal spoils nothing else");
    assert_eq!(store.value("b").await.as_deref(), Some("1"));
    assert_eq!(store.value("c").await.as_deref(), Some("2"));

    // The same request again, in another batch: applied once.
    let answers = match store.apply(batch(vec![first, of("c1", 2, txn(vec![put("d", "3")]))])).await {
        ClientResponse::Batch(answers) => answers,
        other => panic!("expected a batch answer, got {other:?}"),
    };
    assert_eq!(
        answers[0],
        ClientResponse::Duplicate(xene_raft_store::DuplicateResponse { revision: 2, succeeded: true })
    );
    assert!(matches!(&answers[1], ClientResponse::Txn(t) if t.revision == 3));

    // Watchers see every change of the batch at its revision, in order.
    let mut watcher = store.sm.reader().watch(2, Vec::new()).expect("watch");
    let events = watcher.next().await.expect("events");
    let seen: Vec<(u64, &[u8])> = events.iter().map(|e| (e.kv.mod_revision, e.kv.key.as_slice())).collect();
    assert_eq!(seen, vec![(2, &b"b"[..]), (2, &b"c"[..]), (3, &b"d"[..])]);
}

/// Each entry's keys are read ahead in one call (`Overlay::prefetch`): what a put answers as
/// its previous value, and what later operations see, is still the latest write, whether
/// it was stored before the apply call, made by an earlier entry of the same call, or made
/// earlier in the same entry.
#[tokio::test]
async fn keys_read_ahead_for_an_entry_still_see_every_earlier_write() {
    use openraft::storage::RaftStateMachine;
    let mut store = open();
    store.txn(txn(vec![put("a", "0"), put("b", "0"), put("gone", "0")])).await; // revision 1
    let batch = |requests: Vec<Txn>| xene_raft_store::ClientRequest {
        client_id: String::new(),
        request_id: 0,
        timestamp_ms: 1_000,
        command: xene_raft_store::Command::Batch(requests.into_iter().map(request).collect()),
    };
    let entries = vec![
        // Revision 2: a stored key, a new one, and a delete.
        common::entry(
            2,
            batch(vec![
                txn(vec![put_prev("a", "2")]),
                txn(vec![put_prev("new", "2")]),
                txn(vec![Op::DeletePrev { key: "gone".into() }]),
            ]),
        ),
        // Revision 3, in the same apply call: every key written by the entry before.
        common::entry(
            3,
            batch(vec![
                txn(vec![put_prev("a", "3"), get("a")]),
                txn(vec![put_prev("new", "3")]),
                Txn {
                    compare: vec![Compare::absent("gone")],
                    success: vec![get("b"), put("gone", "3")],
                    failure: vec![],
                },
            ]),
        ),
    ];
    let answers = store.sm.apply(entries).await.expect("apply");
    store.next_index = 4;
    let txns = |answer: &ClientResponse| match answer {
        ClientResponse::Batch(answers) => answers
            .iter()
            .map(|a| match a {
                ClientResponse::Txn(t) => t.clone(),
                other => panic!("expected a transaction answer, got {other:?}"),
            })
            .collect::<Vec<_>>(),
        other => panic!("expected a batch answer, got {other:?}"),
    };
    let first = txns(&answers[0]);
    assert_eq!(first[0].results, vec![OpResult::Put { prev: Some(kv("a", "0", 1, 1, 1)) }]);
    assert_eq!(first[1].results, vec![OpResult::Put { prev: None }]);
    assert_eq!(first[2].results, vec![OpResult::Delete { deleted: vec![kv("gone", "0", 1, 1, 1)] }]);
    let second = txns(&answers[1]);
    assert_eq!(
        second[0].results,
        vec![
            OpResult::Put { prev: Some(kv("a", "2", 1, 2, 2)) },
            OpResult::Get { kvs: vec![kv("a", "3", 1, 3, 3)], more: false },
        ],
        "the previous value is the last entry's, and a read after the put sees the put"
    );
    assert_eq!(second[1].results, vec![OpResult::Put { prev: Some(kv("new", "2", 2, 2, 1)) }]);
    assert!(second[2].succeeded, "the compare saw the delete of the entry before");
    assert_eq!(
        second[2].results,
        vec![OpResult::Get { kvs: vec![kv("b", "0", 1, 1, 1)], more: false }, OpResult::Put { prev: None }]
    );
    assert_eq!(store.value("gone").await.as_deref(), Some("3"));
    let read = store.txn(txn(vec![get("gone")])).await;
    assert_eq!(read.results, vec![OpResult::Get { kvs: vec![kv("gone", "3", 3, 3, 1)], more: false }]);
}
