//! The state machine's cost per put under W1-like entries (PERF.md W1), on its own: entries of
//! BATCH puts of distinct random keys over 100,000 (256-byte values), each request under one of
//! three servers' client IDs with its next request ID, as a leader's batches are. The keys are
//! written once first. Prints the wall and CPU time per put for three rounds of ENTRIES entries.
//!
//! ```text
//! cargo build --profile dist -p xene-raft-store --example apply_bench
//! target/dist/examples/apply_bench [BATCH=64] [ENTRIES=2000]
//! ```
//!
//! The keys are drawn from a fixed seed, so instruction counts repeat: run it under
//! `valgrind --tool=callgrind` with ENTRIES 0 and N, and the difference over 3 × N × BATCH is
//! the instructions per put (every thread, RocksDB's compactions included). BENCHMARKS.md
//! has the figures.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use xene_raft_store::types::{Entry, LogId};
use xene_raft_store::{ClientRequest, Command, Op, StoreConfig, Txn};

const KEYS: u64 = 100_000;

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn put(n: u64) -> ClientRequest {
    let id = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
    ClientRequest {
        client_id: format!("server/{}", id % 3),
        request_id: id,
        timestamp_ms: 1_000,
        command: Command::Txn(Txn {
            compare: vec![],
            success: vec![Op::Put { key: format!("bench/{n:08}").into_bytes(), value: vec![b'x'; 256] }],
            failure: vec![],
        }),
    }
}

fn entry(index: u64, requests: Vec<ClientRequest>) -> Entry {
    let request = ClientRequest {
        client_id: String::new(),
        request_id: 0,
        timestamp_ms: 1_000,
        command: Command::Batch(requests),
    };
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(request) }
}

/// This process's user and system CPU time, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn arg(position: usize, default: u64) -> u64 {
    match std::env::args().nth(position) {
        None => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!(
                "apply_bench: argument {position} is {text:?}, not a number; usage: apply_bench [BATCH] [ENTRIES]"
            );
            std::process::exit(2)
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let batch = arg(1, 64).clamp(1, KEYS) as usize;
    let entries = arg(2, 2_000);
    let dir = tempfile::tempdir()?;
    let (_log, mut sm) = xene_raft_store::open(dir.path(), &StoreConfig::default())?;
    let mut index = 1;
    let all: Vec<u64> = (0..KEYS).collect();
    for chunk in all.chunks(500) {
        sm.apply(vec![entry(index, chunk.iter().map(|&n| put(n)).collect())]).await?;
        index += 1;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..3 {
        let (started, cpu) = (Instant::now(), cpu_seconds());
        for _ in 0..entries {
            let mut keys = BTreeSet::new();
            while keys.len() < batch {
                keys.insert(rng.random_range(0..KEYS));
            }
            let mut keys: Vec<u64> = keys.into_iter().collect();
            keys.shuffle(&mut rng);
            sm.apply(vec![entry(index, keys.into_iter().map(put).collect())]).await?;
            index += 1;
        }
        let puts = (entries as f64 * batch as f64).max(1.0);
        println!(
            "round {round}: batch {batch}: {:.2} µs wall, {:.2} µs CPU per put",
            started.elapsed().as_secs_f64() * 1e6 / puts,
            (cpu_seconds() - cpu) * 1e6 / puts
        );
    }
    Ok(())
}
