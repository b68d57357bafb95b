//! Differential test: on thousands of small random register histories, linearizable or not,
//! the checker (with its cache, forcing, pruning and pre-check) must agree with a brute-force
//! search written straight from the definition of linearizability.
//!
//! Values come from a tiny domain, so writes repeat and the pruning's unique-value shortcuts
//! get no help. Every case derives from one printed seed; `XENE_LINCHECK_SEED=S` replays it.
//! Protects DESIGN §14 "key-value operations are linearizable": every shortcut the checker
//! takes must be sound and complete.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xene_chaos_tests::lincheck::{
    check_operations, verify_witness, Budget, ClientId, Model, Outcome, RegisterInput, RegisterModel,
    RegisterOperation, RegisterOutput, RegisterState, Time, Value,
};

/// Whether some subset of the operations that contains every returned one has an order
/// that respects real time and that the model accepts: the definition, searched naively
/// (with memoisation only, so it stays fast on small histories).
fn linearizable_by_definition(ops: &[RegisterOperation]) -> bool {
    fn search(
        ops: &[RegisterOperation],
        placed: u64,
        state: RegisterState,
        seen: &mut HashSet<(u64, RegisterState)>,
    ) -> bool {
        let unplaced = |i: &usize| placed & (1 << i) == 0;
        if (0..ops.len()).filter(unplaced).all(|i| ops[i].is_indeterminate()) {
            return true;
        }
        if !seen.insert((placed, state.clone())) {
            return false;
        }
        // An operation may go next unless an unplaced one returned before it was called.
        let first_return = (0..ops.len()).filter(unplaced).filter_map(|i| ops[i].return_time()).min();
        (0..ops.len()).filter(unplaced).any(|i| {
            if first_return.is_some_and(|first| first < ops[i].call) {
                return false;
            }
            let next = match ops[i].output() {
                Some(output) => RegisterModel.step(&state, &ops[i].input, output),
                None => RegisterModel.step_indeterminate(&state, &ops[i].input),
            };
            next.is_some_and(|next| search(ops, placed | (1 << i), next, seen))
        })
    }
    search(ops, 0, RegisterModel.init(), &mut HashSet::new())
}

fn random_value(rng: &mut StdRng) -> Value {
    Value::from(["a", "b", "c"][rng.random_range(0..3)])
}

fn random_optional(rng: &mut StdRng) -> Option<Value> {
    rng.random_bool(0.7).then(|| random_value(rng))
}

/// A random history of up to `max_ops` operations by up to four sequential clients. Outputs
/// come from a register applied in a random order of the operations, so many histories are
/// linearizable, and are then randomly falsified, so many are not.
fn random_history(rng: &mut StdRng, max_ops: usize) -> Vec<RegisterOperation> {
    let clients = rng.random_range(1..=4u64);
    let count = rng.random_range(1..=max_ops);
    let mut next_free = vec![0u64; clients as usize];
    let mut planned = Vec::new();
    for _ in 0..count {
        let client = rng.random_range(0..clients);
        let call = next_free[client as usize] + rng.random_range(0..4);
        let ret = call + rng.random_range(0..8);
        next_free[client as usize] = ret + rng.random_range(0..2);
        let input = match rng.random_range(0..4) {
            0 => RegisterInput::Put(random_value(rng)),
            1 => RegisterInput::Get,
            2 => RegisterInput::CompareAndSet { expected: random_optional(rng), new: random_value(rng) },
            _ => RegisterInput::Delete,
        };
        // A linearization point inside the interval.
        let point = rng.random_range(call..=ret) * 16 + planned.len() as u64;
        planned.push((ClientId(client), input, call, ret, point));
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].4);
    let mut state: RegisterState = None;
    let mut outputs = vec![RegisterOutput::Put; planned.len()];
    for i in order {
        outputs[i] = match &planned[i].1 {
            RegisterInput::Put(value) => {
                state = Some(value.clone());
                RegisterOutput::Put
            }
            RegisterInput::Get => RegisterOutput::Get(state.clone()),
            RegisterInput::CompareAndSet { expected, new } => {
                let matched = state == *expected;
                if matched {
                    state = Some(new.clone());
                }
                RegisterOutput::CompareAndSet(matched)
            }
            RegisterInput::Delete => RegisterOutput::Delete { existed: Some(state.take().is_some()) },
        };
    }
    planned
        .into_iter()
        .zip(outputs)
        .map(|((client, input, call, ret, _), output)| {
            let output = if rng.random_bool(0.25) {
                match output {
                    RegisterOutput::Get(_) => RegisterOutput::Get(random_optional(rng)),
                    RegisterOutput::CompareAndSet(ok) => RegisterOutput::CompareAndSet(!ok),
                    RegisterOutput::Delete { .. } => {
                        RegisterOutput::Delete { existed: [None, Some(true), Some(false)][rng.random_range(0..3)] }
                    }
                    RegisterOutput::Put => RegisterOutput::Put,
                }
            } else {
                output
            };
            if rng.random_bool(0.15) {
                RegisterOperation::indeterminate(client, input, Time(call))
            } else {
                RegisterOperation::returned(client, input, Time(call), Time(ret), output)
            }
        })
        .collect()
}

fn seed() -> u64 {
    match std::env::var("XENE_LINCHECK_SEED") {
        Ok(seed) => seed.parse().unwrap_or_else(|_| panic!("XENE_LINCHECK_SEED={seed:?} is not a u64")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    }
}

#[test]
fn agrees_with_the_definition_on_small_random_histories() {
    for seed in [1, 2, 3, seed()] {
        println!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut verdicts = [0usize; 2];
        for case in 0..3000 {
            let history = random_history(&mut rng, 10);
            let expected = linearizable_by_definition(&history);
            let checked = check_operations(&RegisterModel, &history, &Budget::default())
                .expect("generated histories are well formed");
            let found = match &checked.outcome {
                Outcome::Linearizable { order } => {
                    verify_witness(&RegisterModel, &history, order)
                        .unwrap_or_else(|e| panic!("seed {seed}, case {case}: bad witness: {e}\n{history:#?}"));
                    true
                }
                Outcome::Violation(_) => false,
                Outcome::Unknown(exhausted) => {
                    panic!("seed {seed}, case {case}: {exhausted}\n{history:#?}")
                }
            };
            assert_eq!(
                found, expected,
                "seed {seed}, case {case}: checker says linearizable = {found}, \
                 definition says {expected}\n{history:#?}"
            );
            verdicts[usize::from(expected)] += 1;
        }
        println!("  {} linearizable, {} not", verdicts[1], verdicts[0]);
        // Both kinds must be well represented for the comparison to mean anything.
        assert!(verdicts.iter().all(|&n| n > 500), "seed {seed}: {verdicts:?}");
    }
}
