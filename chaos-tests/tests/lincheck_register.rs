//! Known linearizable and known violating register histories, one key each: the checker's
//! verdicts on hand-written cases, including porcupine's and the textbook examples.
//!
//! Protects DESIGN §14 "key-value operations are linearizable": a checker that accepts a
//! violation would let the chaos tests pass on a broken store.

use xene_chaos_tests::lincheck::{
    check_kv_history, check_operations, parse_kv_history, verify_witness, Budget, Cause, ClientId, Excluded,
    HistoryError, Key, KvOperation, Outcome, RegisterInput, RegisterModel, RegisterOperation, RegisterOutput,
    RegisterState, Report, Time, Value, Verdict,
};

/// Checks a history in the text form and re-verifies every witness the checker returns.
fn check(text: &str) -> (Vec<KvOperation>, Report<Key, RegisterState>) {
    let history = parse_kv_history(text).expect("test history parses");
    let report = check_kv_history(&history, &Budget::default()).expect("history is well formed");
    for key in &report.keys {
        if let Outcome::Linearizable { order } = &key.outcome {
            let ops: Vec<RegisterOperation> = key.operations.iter().map(|&i| history[i].operation.clone()).collect();
            let local: Vec<usize> = order
                .iter()
                .map(|global| {
                    key.operations.iter().position(|i| i == global).expect("witness names this key's operations")
                })
                .collect();
            verify_witness(&RegisterModel, &ops, &local)
                .unwrap_or_else(|e| panic!("bad witness for key {:?}: {e}", key.key));
        }
    }
    (history, report)
}

const CASES: &[(&str, Verdict, &str)] = &[
    // ---- linearizable ----
    (
        "sequential operations of every kind",
        Verdict::Linearizable,
        "c1 0 1 x get -> nil
         c1 2 3 x put a
         c1 4 5 x get -> a
         c1 6 7 x cas a b -> ok
         c1 8 9 x cas a c -> fail
         c1 10 11 x get -> b
         c1 12 13 x del -> existed
         c1 14 15 x del -> absent
         c1 16 17 x get -> nil
         c1 18 19 x cas nil c -> ok
         c1 20 21 x get -> c",
    ),
    (
        "a get overlapping a put sees the old value",
        Verdict::Linearizable,
        "c1 0 10 x put a
         c2 2 8 x get -> nil",
    ),
    (
        "a get overlapping a put sees the new value",
        Verdict::Linearizable,
        "c1 0 10 x put a
         c2 2 8 x get -> a",
    ),
    (
        "concurrent gets may see old and new in either real-time order if they overlap",
        Verdict::Linearizable,
        "c1 0 10 x put a
         c2 1 5 x get -> a
         c3 4 9 x get -> nil",
    ),
    (
        "a call and a return at the same instant are concurrent",
        Verdict::Linearizable,
        "c1 0 5 x put a
         c2 5 6 x get -> nil",
    ),
    (
        "a compare-and-set race: exactly one wins",
        Verdict::Linearizable,
        "c1 0 1 x put a
         c2 2 10 x cas a b -> ok
         c3 3 9 x cas a c -> fail
         c4 11 12 x get -> b",
    ),
    (
        "a create-if-absent race: exactly one wins",
        Verdict::Linearizable,
        "c1 0 10 x cas nil a -> fail
         c2 1 9 x cas nil b -> ok
         c3 2 8 x cas nil c -> fail
         c4 11 12 x get -> b",
    ),
    (
        "an indeterminate put that is later observed",
        Verdict::Linearizable,
        "c1 0 ? x put a
         c2 5 6 x get -> nil
         c2 7 8 x get -> a
         c2 9 10 x get -> a",
    ),
    (
        "an indeterminate put never observed",
        Verdict::Linearizable,
        "c1 0 ? x put a
         c2 5 6 x get -> nil
         c2 7 8 x get -> nil",
    ),
    (
        "an indeterminate put may take effect long after its client moved on",
        Verdict::Linearizable,
        "c1 0 ? x put a
         c1 10 11 x put b
         c2 20 21 x get -> b
         c2 30 31 x get -> a",
    ),
    (
        "an indeterminate compare-and-set that took effect",
        Verdict::Linearizable,
        "c1 0 1 x put a
         c2 2 ? x cas a b
         c3 3 4 x get -> a
         c3 5 6 x get -> b",
    ),
    (
        "an indeterminate delete that took effect",
        Verdict::Linearizable,
        "c1 0 1 x put a
         c2 2 ? x del
         c3 3 4 x get -> a
         c3 5 6 x get -> nil",
    ),
    (
        "a delete whose client did not learn whether the key existed",
        Verdict::Linearizable,
        "c1 0 1 x del
         c1 2 3 x put a
         c1 4 5 x del
         c1 6 7 x get -> nil",
    ),
    (
        "indeterminate gets and failing compare-and-sets are no-ops",
        Verdict::Linearizable,
        "c1 0 ? x get
         c2 1 ? x cas z y
         c3 2 3 x put a
         c4 4 5 x get -> a",
    ),
    (
        "a history of only indeterminate operations",
        Verdict::Linearizable,
        "c1 0 ? x put a
         c2 1 ? x del",
    ),
    (
        // porcupine's register test, from MIT 6.824 2017 quiz 2, section VIII.
        "porcupine: both gets overlap the put",
        Verdict::Linearizable,
        "c0 0 100 x put 100
         c1 25 75 x get -> 100
         c2 30 60 x get -> nil",
    ),
    // ---- violations ----
    (
        // porcupine's second register case: the read of the new value finished before the
        // read of the old one started.
        "porcupine: new value read before old value",
        Verdict::Violation,
        "c0 0 100 x put 200
         c1 10 30 x get -> 200
         c2 40 90 x get -> nil",
    ),
    (
        // Herlihy and Shavit, The Art of Multiprocessor Programming, chapter 3: once a read
        // returns the new value, no later read may return the old one.
        "textbook: new-old inversion across two readers",
        Verdict::Violation,
        "c1 0 1 x put 0
         c1 2 20 x put 1
         c2 3 5 x get -> 1
         c3 6 8 x get -> 0",
    ),
    (
        "a stale read after a completed write",
        Verdict::Violation,
        "c1 0 1 x put a
         c1 2 3 x put b
         c2 4 5 x get -> a",
    ),
    (
        "two compare-and-sets from the same expected value both succeed",
        Verdict::Violation,
        "c1 0 1 x put a
         c2 2 10 x cas a b -> ok
         c3 3 9 x cas a c -> ok",
    ),
    (
        "two creates-if-absent both succeed",
        Verdict::Violation,
        "c1 0 10 x cas nil a -> ok
         c2 1 9 x cas nil b -> ok",
    ),
    (
        "a compare-and-set fails although the value matched throughout",
        Verdict::Violation,
        "c1 0 1 x put a
         c2 2 3 x cas a b -> fail",
    ),
    (
        "a read of a value never written",
        Verdict::Violation,
        "c1 0 10 x put a
         c2 1 9 x get -> z",
    ),
    (
        "a deleted key read back after the delete completed",
        Verdict::Violation,
        "c1 0 1 x put a
         c1 2 3 x del -> existed
         c2 4 5 x get -> a",
    ),
    ("a delete reports a key that never existed", Verdict::Violation, "c1 0 1 x del -> existed"),
    (
        "a lost acknowledged write",
        Verdict::Violation,
        "c1 0 1 x put a
         c2 2 3 x get -> nil",
    ),
    (
        "an indeterminate put cannot take effect twice",
        Verdict::Violation,
        "c1 0 ? x put a
         c2 1 2 x put b
         c3 5 6 x get -> a
         c3 7 8 x get -> b",
    ),
    (
        "an indeterminate put cannot take effect before it was called",
        Verdict::Violation,
        "c2 0 1 x get -> a
         c1 2 ? x put a",
    ),
];

#[test]
fn known_histories() {
    let mut wrong = Vec::new();
    for (name, expected, text) in CASES {
        let (history, report) = check(text);
        if report.verdict() != *expected {
            wrong.push(format!("{name}: expected {expected:?}, got\n{}", report.explain(&history)));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_stale_read_is_explained_before_searching() {
    let (history, report) = check(
        "c1 0 1 x put a
         c1 2 3 x put b
         c2 4 5 x get -> a
         c3 6 7 x get -> b",
    );
    let violations: Vec<_> = report.violations().collect();
    assert_eq!(violations.len(), 1);
    let (key, explanation) = violations[0];
    assert_eq!(*key, Key::from("x"));
    assert_eq!(explanation.blocked, Some(2));
    assert_eq!(explanation.cause, Cause::Overwritten { sources: vec![Excluded::Replaced { source: Some(0), by: 1 }] });
    assert!(explanation.linearized.is_empty());
    assert_eq!(report.keys[0].stats.steps, 0, "found without searching");
    let text = report.explain(&history);
    for want in [
        "Violation: 4 operations over 1 keys",
        "key \"x\" is not linearizable",
        "needs a state that is certainly gone",
        "#2 c2 [4, 5] Get -> Get(Some(\"a\"))",
        "produced by\n    #0 c1 [0, 1] Put(\"a\")",
        "#1 c1 [2, 3] Put(\"b\")",
    ] {
        assert!(text.contains(want), "{text}\nlacks {want:?}");
    }
}

#[test]
fn a_read_of_a_value_never_written_has_no_source() {
    let (history, report) = check("c1 0 1 x get -> ghost");
    let (_, explanation) = report.violations().next().expect("a violation");
    assert_eq!(explanation.cause, Cause::Overwritten { sources: vec![] });
    assert!(report.explain(&history).contains("no operation produces that state"));
}

#[test]
fn an_inversion_across_overlapping_writes_is_found_by_precedence() {
    // The write of "a" overlaps the read of "b", so real time alone does not order them;
    // but it is the only source of what the first read saw, so it precedes that read,
    // which precedes the read of "b".
    let (_, report) = check(
        "c1 0 10 x put a
         c2 1 2 x get -> a
         c3 1 20 x put b
         c4 3 4 x get -> b
         c5 11 12 x get -> a",
    );
    let (_, explanation) = report.violations().next().expect("a violation");
    assert_eq!(explanation.blocked, Some(4));
    assert_eq!(explanation.cause, Cause::Overwritten { sources: vec![Excluded::Replaced { source: Some(0), by: 3 }] });
}

#[test]
fn a_double_compare_and_set_is_found_by_the_search() {
    let (history, report) = check(
        "c1 0 1 x put a
         c2 2 10 x cas a b -> ok
         c3 3 9 x cas a c -> ok",
    );
    let (_, explanation) = report.violations().next().expect("a violation");
    // The search tries the one that returns first, then sees "a" can never come back.
    assert_eq!(explanation.linearized, [0, 2]);
    assert_eq!(explanation.state, Some(Value::from("c")));
    assert_eq!(explanation.blocked, Some(1));
    assert_eq!(explanation.cause, Cause::Unreachable);
    let text = report.explain(&history);
    assert!(text.contains("longest linearizable prefix (2 operations)"), "{text}");
    assert!(text.contains("state after it: Some(\"c\")"), "{text}");
}

#[test]
fn a_wrongly_failed_compare_and_set_meets_its_deadline() {
    let (history, report) = check(
        "c1 0 1 x put a
         c2 2 3 x cas a b -> fail
         c3 4 5 x get -> a",
    );
    let (_, explanation) = report.violations().next().expect("a violation");
    assert_eq!(explanation.linearized, [0]);
    assert_eq!(explanation.blocked, Some(1));
    assert_eq!(explanation.unplaced, [1]);
    assert_eq!(explanation.cause, Cause::Deadline);
    let text = report.explain(&history);
    assert!(text.contains("it returned before anything placed next led anywhere"), "{text}");
    assert!(text.contains("none of these could take effect next (1 operations)"), "{text}");
}

#[test]
fn rewriting_an_unread_value_is_not_a_no_op() {
    // Both puts write values nobody reads, which the checker merges into one; a put of the
    // merged value over itself must still count as a write, or the second delete could not
    // find the key present.
    let (_, report) = check(
        "c1 95 116 x put v56
         c2 153 165 x del -> existed
         c3 99 174 x put v154
         c4 131 199 x del -> existed",
    );
    assert!(report.is_linearizable());
}

#[test]
fn a_witness_orders_the_operations() {
    let (_, report) = check(
        "c1 0 10 x put a
         c2 1 2 x get -> nil
         c3 3 4 x get -> a",
    );
    assert_eq!(report.keys[0].outcome, Outcome::Linearizable { order: vec![1, 0, 2] });
}

#[test]
fn an_exhausted_budget_is_unknown_not_a_pass() {
    let history = parse_kv_history(
        "c1 0 10 x put a
         c2 1 9 x get -> a
         c3 2 8 x get -> nil",
    )
    .expect("parses");
    let report = check_kv_history(&history, &Budget::steps(2)).expect("well formed");
    assert_eq!(report.verdict(), Verdict::Unknown);
    assert!(!report.is_linearizable());
    assert_eq!(report.unknown().collect::<Vec<_>>(), [&Key::from("x")]);
    assert!(report.explain(&history).contains("gave up after 2 steps"));
}

#[test]
fn malformed_histories_are_errors() {
    let op = |input, call, ret, output| RegisterOperation::returned(ClientId(1), input, Time(call), Time(ret), output);
    let backwards = [op(RegisterInput::Get, 5, 4, RegisterOutput::Get(None))];
    assert_eq!(
        check_operations(&RegisterModel, &backwards, &Budget::default()),
        Err(HistoryError::ReturnBeforeCall { index: 0, call: 5, returned: 4 })
    );
    let mismatched = [
        op(RegisterInput::Get, 0, 1, RegisterOutput::Get(None)),
        op(RegisterInput::Put(Value::from("a")), 2, 3, RegisterOutput::Get(None)),
    ];
    let error = check_operations(&RegisterModel, &mismatched, &Budget::default())
        .expect_err("a put answered like a get is malformed");
    assert!(matches!(error, HistoryError::OutputMismatch { index: 1, .. }));
    assert!(error.to_string().starts_with("history[1]: output Get(None)"));
}

#[test]
fn an_empty_history_is_linearizable() {
    let (_, report) = check("");
    assert!(report.is_linearizable());
    let checked = check_operations(&RegisterModel, &[], &Budget::default()).expect("empty");
    assert_eq!(checked.outcome, Outcome::Linearizable { order: vec![] });
}
