//! temporary experiment
#![allow(dead_code, unused_imports)]
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use xene_chaos_tests::lincheck::*;
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
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("XENE_LINCHECK_SEED={seed:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
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
                    expected: if rng.random_bool(0.2) {
                        None
                    } else {
                        written[key].choose(&mut rng).cloned()
                    },
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
            planned.push(Planned {
                key,
                client,
                input,
                call,
                ret,
                effect,
            });
        }
    }

    let mut by_effect: Vec<usize> = (0..planned.len())
        .filter(|&i| planned[i].effect.is_some())
        .collect();
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
            RegisterInput::Delete => RegisterOutput::Delete {
                existed: Some(state.take().is_some()),
            },
        });
    }

    planned
        .into_iter()
        .zip(outputs)
        .map(|(p, output)| {
            let client = ClientId(p.client);
            let call = Time(p.call);
            let operation = match (p.ret, output) {
                (Some(ret), Some(output)) => {
                    Operation::returned(client, p.input, call, Time(ret), output)
                }
                _ => Operation::indeterminate(client, p.input, call),
            };
            KeyedOperation {
                key: Key::from(format!("k{}", p.key).as_str()),
                operation,
            }
        })
        .collect()
}


#[test]
fn experiment() {
    let cfgs: Vec<(usize, usize, u64, u64, f64)> = serde_free_parse();
    for (clients, ops, gap, lat, ind) in cfgs {
        for seed in [7u64, 8, 9] {
            let shape = Shape { clients, ops_per_client: ops, keys: 1, max_gap: gap, max_latency: lat, indeterminate: ind };
            let h = simulate(seed, shape);
            let t = Instant::now();
            let r = check_kv_history(&h, &Budget::steps(5_000_000)).unwrap();
            println!("clients {clients} ops {} gap {gap} lat {lat} ind {ind} seed {seed}: {:?} {:?} steps {}", h.len(), r.verdict(), t.elapsed(), r.keys[0].stats.steps);
        }
    }
}
fn serde_free_parse() -> Vec<(usize, usize, u64, u64, f64)> {
    std::env::var("EXP").unwrap().split(';').map(|c| { let v: Vec<&str> = c.split(',').collect(); (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap(), v[3].parse().unwrap(), v[4].parse().unwrap()) }).collect()
}
