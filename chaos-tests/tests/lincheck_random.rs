//! Randomized tests of the checker: a simulated linearizable register store, driven by
//! concurrent clients from one seeded generator, must be accepted; the same history with one
//! read corrupted must be rejected, on the key that was corrupted.
//!
//! Every case prints its seed; `XENE_LINCHECK_SEED=S` replays seed `S` (alongside the fixed
//! seeds that always run). Protects DESIGN §14 "key-value operations are linearizable".

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use xene_chaos_tests::lincheck::{
    check_kv_history, format_kv_history, verify_witness, Budget, ClientId, Completion, Key, KeyedOperation,
    KvOperation, Operation, Outcome, RegisterInput, RegisterModel, RegisterOperation, RegisterOutput, RegisterState,
    Report, Time, Value, Verdict,
};

/// The shape of a simulated workload.
#[derive(Clone, Copy, Debug)]
struct Shape {
    clients: usize,
    ops_per_client: usize,
    keys: usize,
    /// Think time between a client's operations, at most.
    max_gap: u64,
    /// Time from call to effect, and from effect to return, at most.
    max_latency: u64,
    /// Probability that an operation times out (and then takes effect or not, half each).
    indeterminate: f64,
}

/// The seeds every run checks, plus `XENE_LINCHECK_SEED` if set, else one fresh seed.
fn seeds() -> Vec<u64> {
    let mut seeds: Vec<u64> = (1..=12).collect();
    let extra = match std::env::var("XENE_LINCHECK_SEED") {
        Ok(seed) => seed.parse().unwrap_or_else(|_| panic!("XENE_LINCHECK_SEED={seed:?} is not a u64")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    };
    seeds.push(extra);
    seeds
}

/// A history of a linearizable store: each operation takes effect atomically at a random
/// instant between its call and return, in one global order, on a real register per key.
/// Every written value is unique, so a read identifies the write it saw.
fn simulate(seed: u64, shape: Shape) -> Vec<KvOperation> {
    struct Planned {
        key: usize,
        client: u64,
        input: RegisterInput,
        call: u64,
        ret: Option<u64>,
        effect: Option<u64>,
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned = Vec::new();
    let mut written: Vec<Vec<Value>> = vec![Vec::new(); shape.keys];
    let mut fresh = 0u64;
    for client in 0..shape.clients as u64 {
        let mut now = rng.random_range(0..=shape.max_gap);
        for _ in 0..shape.ops_per_client {
            let call = now + rng.random_range(1..=shape.max_gap);
            let key = rng.random_range(0..shape.keys);
            let mut value = || {
                fresh += 1;
                Value::from(format!("v{fresh}").as_str())
            };
            let input = match rng.random_range(0..100) {
                0..35 => RegisterInput::Put(value()),
                35..70 => RegisterInput::Get,
                70..85 => RegisterInput::CompareAndSet {
                    expected: if rng.random_bool(0.2) { None } else { written[key].choose(&mut rng).cloned() },
                    new: value(),
                },
                _ => RegisterInput::Delete,
            };
            if let RegisterInput::Put(new) | RegisterInput::CompareAndSet { new, .. } = &input {
                written[key].push(new.clone());
            }
            let (ret, effect) = if rng.random_bool(shape.indeterminate) {
                // The client gives up after a timeout; the store may still apply the
                // operation, possibly long after the client moved on.
                now = call + 2 * shape.max_latency;
                let late = call + rng.random_range(0..=10 * shape.max_latency);
                (None, rng.random_bool(0.5).then_some(late))
            } else {
                let effect = call + rng.random_range(0..=shape.max_latency);
                let ret = effect + rng.random_range(0..=shape.max_latency);
                now = ret;
                (Some(ret), Some(effect))
            };
            planned.push(Planned { key, client, input, call, ret, effect });
        }
    }

    let mut by_effect: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].effect.is_some()).collect();
    by_effect.sort_by_key(|&i| (planned[i].effect, i));
    let mut store: Vec<RegisterState> = vec![None; shape.keys];
    let mut outputs: Vec<Option<RegisterOutput>> = vec![None; planned.len()];
    for i in by_effect {
        let state = &mut store[planned[i].key];
        outputs[i] = Some(match &planned[i].input {
            RegisterInput::Put(value) => {
                *state = Some(value.clone());
                RegisterOutput::Put
            }
            RegisterInput::Get => RegisterOutput::Get(state.clone()),
            RegisterInput::CompareAndSet { expected, new } => {
                let matched = state == expected;
                if matched {
                    *state = Some(new.clone());
                }
                RegisterOutput::CompareAndSet(matched)
            }
            RegisterInput::Delete => RegisterOutput::Delete { existed: Some(state.take().is_some()) },
        });
    }

    planned
        .into_iter()
        .zip(outputs)
        .map(|(p, output)| {
            let client = ClientId(p.client);
            let call = Time(p.call);
            let operation = match (p.ret, output) {
                (Some(ret), Some(output)) => Operation::returned(client, p.input, call, Time(ret), output),
                _ => Operation::indeterminate(client, p.input, call),
            };
            KeyedOperation { key: Key::from(format!("k{}", p.key).as_str()), operation }
        })
        .collect()
}

/// Checks `history` and re-verifies every witness returned.
fn check(history: &[KvOperation], budget: &Budget) -> Report<Key, RegisterState> {
    let report = check_kv_history(history, budget).expect("simulated history is well formed");
    for key in &report.keys {
        if let Outcome::Linearizable { order } = &key.outcome {
            let ops: Vec<RegisterOperation> = key.operations.iter().map(|&i| history[i].operation.clone()).collect();
            let local: Vec<usize> =
                order.iter().filter_map(|global| key.operations.iter().position(|i| i == global)).collect();
            assert_eq!(local.len(), order.len(), "witness strays off key {:?}", key.key);
            verify_witness(&RegisterModel, &ops, &local)
                .unwrap_or_else(|e| panic!("bad witness for key {:?}: {e}", key.key));
        }
    }
    report
}

/// The value a completed read returned, if it read one.
fn read_value(operation: &RegisterOperation) -> Option<&Value> {
    match operation.output() {
        Some(RegisterOutput::Get(Some(value))) => Some(value),
        _ => None,
    }
}

/// Sets what a completed read returned.
fn set_read(operation: &mut RegisterOperation, value: Value) {
    if let Completion::Returned { output, .. } = &mut operation.completion {
        *output = RegisterOutput::Get(Some(value));
    }
}

/// The indices of `history` in an order drawn from `rng`.
fn shuffled(history: &[KvOperation], rng: &mut StdRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..history.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    order
}

/// Makes one completed read return the value of a write that was overwritten by a second
/// completed write before the read was called. Values are unique, so no linearization can
/// explain it. Returns the corrupted operation's index.
fn corrupt_stale_read(history: &mut [KvOperation], rng: &mut StdRng) -> Option<usize> {
    let completed_put = |keyed: &KvOperation| match &keyed.operation.input {
        RegisterInput::Put(value) => {
            keyed.operation.return_time().map(|ret| (keyed.key.clone(), value.clone(), keyed.operation.call, ret))
        }
        _ => None,
    };
    let puts: Vec<(Key, Value, Time, Time)> = history.iter().filter_map(completed_put).collect();
    for read in shuffled(history, rng) {
        if !matches!(history[read].operation.output(), Some(RegisterOutput::Get(_))) {
            continue;
        }
        let (key, called) = (&history[read].key, history[read].operation.call);
        // A first write, overwritten by a second that returned before the read was called.
        let stale = puts.iter().find(|(first_key, _, _, first_ret)| {
            first_key == key
                && puts.iter().any(|(second_key, _, second_call, second_ret)| {
                    second_key == key && first_ret < second_call && *second_ret < called
                })
        });
        if let Some((_, value, _, _)) = stale {
            set_read(&mut history[read].operation, value.clone());
            return Some(read);
        }
    }
    None
}

/// Makes a new-old inversion: reads a, b, c of one key follow each other in real time, a
/// and b returned different values, and c is changed to return a's value again. Values are
/// unique, so once b saw its value, a's can never come back. Unlike a stale read, the
/// writes involved may overlap the reads, so it takes the search to find it. Returns the
/// corrupted operation's index.
fn corrupt_inversion(history: &mut [KvOperation], rng: &mut StdRng) -> Option<usize> {
    let reads: Vec<usize> = (0..history.len()).filter(|&i| read_value(&history[i].operation).is_some()).collect();
    let before = |x: usize, y: usize| {
        history[x].key == history[y].key
            && history[x].operation.return_time().is_some_and(|ret| ret < history[y].operation.call)
    };
    for c in shuffled(history, rng) {
        if read_value(&history[c].operation).is_none() {
            continue;
        }
        // The latest b before c and the latest a before b make the tightest, hardest case.
        let latest_before = |y: usize, differs: &dyn Fn(usize) -> bool| {
            reads.iter().copied().filter(|&x| before(x, y) && differs(x)).max_by_key(|&x| history[x].operation.call)
        };
        let Some(b) = latest_before(c, &|_| true) else {
            continue;
        };
        let value = |x: usize| read_value(&history[x].operation).cloned();
        let differs = |x: usize| value(x) != value(b) && value(x) != value(c);
        if let Some(a) = latest_before(b, &differs) {
            let old = value(a)?;
            set_read(&mut history[c].operation, old);
            return Some(c);
        }
    }
    None
}

const SHAPE: Shape =
    Shape { clients: 16, ops_per_client: 25, keys: 3, max_gap: 10, max_latency: 60, indeterminate: 0.05 };

#[test]
fn accepts_simulated_linearizable_histories() {
    for seed in seeds() {
        println!("seed {seed}");
        let history = simulate(seed, SHAPE);
        let report = check(&history, &Budget::default());
        assert_eq!(
            report.verdict(),
            Verdict::Linearizable,
            "seed {seed}: a linearizable store's history was rejected\n{}\n{}",
            report.explain(&history),
            format_kv_history(&history)
        );
    }
}

#[test]
fn rejects_one_stale_read() {
    for seed in seeds() {
        println!("seed {seed}");
        let mut history = simulate(seed, SHAPE);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let read = corrupt_stale_read(&mut history, &mut rng)
            .unwrap_or_else(|| panic!("seed {seed}: no read could be made stale"));
        let report = check(&history, &Budget::default());
        let violated: Vec<&Key> = report.violations().map(|(key, _)| key).collect();
        assert_eq!(
            violated,
            [&history[read].key],
            "seed {seed}: corrupting #{read} should violate exactly its key\n{}",
            report.explain(&history)
        );
        assert_eq!(report.verdict(), Verdict::Violation);
    }
}

#[test]
fn rejects_one_new_old_inversion() {
    for seed in seeds() {
        println!("seed {seed}");
        let mut history = simulate(seed, SHAPE);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1417);
        let read = corrupt_inversion(&mut history, &mut rng)
            .unwrap_or_else(|| panic!("seed {seed}: no read could be inverted"));
        let report = check(&history, &Budget::default());
        let violated: Vec<&Key> = report.violations().map(|(key, _)| key).collect();
        assert_eq!(
            violated,
            [&history[read].key],
            "seed {seed}: inverting #{read} should violate exactly its key\n{}",
            report.explain(&history)
        );
    }
}

#[test]
fn rejects_a_read_of_a_value_never_written() {
    for seed in seeds() {
        println!("seed {seed}");
        let mut history = simulate(seed, SHAPE);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9e7);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].operation.output(), Some(RegisterOutput::Get(_))))
            .collect();
        let &read = reads.choose(&mut rng).expect("the workload has reads");
        set_read(&mut history[read].operation, Value::from("never-written"));
        let report = check(&history, &Budget::default());
        let violated: Vec<&Key> = report.violations().map(|(key, _)| key).collect();
        assert_eq!(violated, [&history[read].key], "seed {seed}");
    }
}

/// The largest histories: one key, many concurrent clients, checked as recorded and with
/// each kind of corruption. A deterministic step budget guards against a slowdown; the
/// elapsed times are printed (`--nocapture`).
#[test]
fn large_single_key_histories_are_fast() {
    let shapes = [
        // 500 operations by 50 clients, nearly all concurrent with each other.
        Shape { clients: 50, ops_per_client: 10, keys: 1, max_gap: 5, max_latency: 100, indeterminate: 0.02 },
        // 800 operations by 20 clients, with more timeouts.
        Shape { clients: 20, ops_per_client: 40, keys: 1, max_gap: 10, max_latency: 50, indeterminate: 0.1 },
    ];
    type Corruption = fn(&mut [KvOperation], &mut StdRng) -> Option<usize>;
    let corruptions: [(&str, Option<Corruption>, Verdict); 3] = [
        ("as recorded", None, Verdict::Linearizable),
        ("stale read", Some(corrupt_stale_read), Verdict::Violation),
        ("inversion", Some(corrupt_inversion), Verdict::Violation),
    ];
    let budget = Budget::steps(1_000_000);
    for shape in shapes {
        for seed in [7, 8, 9] {
            for (name, corrupt, expected) in corruptions {
                let mut history = simulate(seed, shape);
                if let Some(corrupt) = corrupt {
                    let mut rng = StdRng::seed_from_u64(seed);
                    corrupt(&mut history, &mut rng).expect("the history can be corrupted");
                }
                let started = Instant::now();
                let report = check(&history, &budget);
                let elapsed = started.elapsed();
                let stats = report.keys[0].stats;
                println!(
                    "seed {seed}, {} clients, {} operations, {name}: {:?} in {elapsed:?}, \
                     {} steps, {} cached states",
                    shape.clients,
                    history.len(),
                    report.verdict(),
                    stats.steps,
                    stats.cached_states
                );
                assert_eq!(report.verdict(), expected, "seed {seed}, {name}");
            }
        }
    }
}
