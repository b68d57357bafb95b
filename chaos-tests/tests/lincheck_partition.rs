//! Per-key partitioning: a multi-key history is checked key by key, and a violation on one
//! key is reported with that key while the others pass.
//!
//! Protects DESIGN §14 "key-value operations are linearizable": the chaos report must say
//! which key broke.

use xene_chaos_tests::lincheck::{check_kv_history, parse_kv_history, Budget, Cause, Key, Outcome, Verdict};

#[test]
fn a_violation_on_one_key_is_reported_with_that_key() {
    // Keys are interleaved; on "y" two compare-and-sets from the same value both succeed,
    // while "x" and "z" are fine. Partitioning must not mix keys' values either: read across
    // keys, "z" would see "b" last.
    let history = parse_kv_history(
        "c1 0 1 x put a
         c2 0 1 y put a
         c3 2 3 z put a
         c1 2 3 x put b
         c2 2 9 y cas a b -> ok
         c5 3 8 y cas a c -> ok
         c3 4 5 z get -> a
         c1 4 5 x get -> b
         c4 6 7 x get -> b",
    )
    .expect("parses");
    let report = check_kv_history(&history, &Budget::default()).expect("well formed");
    assert_eq!(report.verdict(), Verdict::Violation);
    let keys: Vec<&Key> = report.keys.iter().map(|k| &k.key).collect();
    assert_eq!(keys, [&Key::from("x"), &Key::from("y"), &Key::from("z")]);
    assert!(report.keys[0].outcome.is_linearizable());
    assert!(report.keys[2].outcome.is_linearizable());

    let violations: Vec<_> = report.violations().collect();
    assert_eq!(violations.len(), 1);
    let (key, explanation) = violations[0];
    assert_eq!(*key, Key::from("y"));
    // Indices refer to the whole history, not to the key's sub-history. The search tries
    // the compare-and-set that returns first, then finds the other can never succeed.
    assert_eq!(report.keys[1].operations, [1, 4, 5]);
    assert_eq!(explanation.linearized, [1, 5]);
    assert_eq!(explanation.blocked, Some(4));
    assert_eq!(explanation.cause, Cause::Unreachable);

    let text = report.explain(&history);
    assert!(text.contains("key \"y\" is not linearizable (3 operations)"), "{text}");
    assert!(!text.contains("key \"x\""), "{text}");
    assert!(text.contains("#4 c2 [2, 9] CompareAndSet"), "{text}");
    assert!(text.contains("the state it needs can no longer arise"), "{text}");
}

#[test]
fn every_violated_key_is_reported() {
    let history = parse_kv_history(
        "c1 0 1 b get -> ghost
         c1 2 3 a put x
         c2 4 5 a get -> nil
         c3 0 1 c put fine",
    )
    .expect("parses");
    let report = check_kv_history(&history, &Budget::default()).expect("well formed");
    let keys: Vec<&Key> = report.violations().map(|(key, _)| key).collect();
    assert_eq!(keys, [&Key::from("a"), &Key::from("b")]);
}

#[test]
fn a_violation_outranks_an_undecided_key() {
    // With a five-step budget, key "a" (which must backtrack) is undecided, while key
    // "b", violated at its first return, is still found.
    let history = parse_kv_history(
        "c1 0 10 a put x
         c2 0 10 a put y
         c3 0 10 a put z
         c4 11 12 a get -> x
         c5 0 1 b get -> ghost",
    )
    .expect("parses");
    let report = check_kv_history(&history, &Budget::steps(5)).expect("well formed");
    assert!(matches!(report.keys[0].outcome, Outcome::Unknown(_)));
    assert!(matches!(report.keys[1].outcome, Outcome::Violation(_)));
    assert_eq!(report.verdict(), Verdict::Violation);
}

#[test]
fn the_same_value_on_different_keys_does_not_interfere() {
    // Were keys mixed into one register, the last read would be stale.
    let history = parse_kv_history(
        "c1 0 1 a put v1
         c2 2 3 b put v2
         c3 4 5 a get -> v1
         c3 6 7 b get -> v2",
    )
    .expect("parses");
    let report = check_kv_history(&history, &Budget::default()).expect("well formed");
    assert!(report.is_linearizable(), "{}", report.explain(&history));
    assert_eq!(report.keys.len(), 2);
}
