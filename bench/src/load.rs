//! One load generator for every key-value store the benchmarks drive: N clients spread over
//! the members, each doing one operation at a time on random keys until a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use crate::stats::Samples;

/// A failed operation, as the store's client reported it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

/// A connection to one member of a store. Clones share the connection.
pub trait KvTarget: Clone + Send + Sync + 'static {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<(), OpError>> + Send;
    fn get(&mut self, key: Vec<u8>, linearizable: bool) -> impl Future<Output = Result<(), OpError>> + Send;
}

/// What the clients do.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Put,
    Get { linearizable: bool },
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub duration: Duration,
    /// Keys are drawn uniformly from this many.
    pub keys: u64,
    pub value_size: usize,
    pub op: Op,
    /// An operation slower than this counts as an error.
    pub timeout: Duration,
}

/// What one measurement saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies: Samples,
    pub first_error: Option<String>,
}

impl LoadResult {
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// The key the benchmarks use for number `n`.
pub fn key(n: u64) -> Vec<u8> {
    format!("bench/{n:08}").into_bytes()
}

/// Runs `load` with client `i` on `targets[i % targets.len()]`.
pub async fn run<T: KvTarget>(targets: &[T], load: &Load) -> LoadResult {
    if targets.is_empty() {
        return LoadResult { first_error: Some("no targets".into()), ..LoadResult::default() };
    }
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut workers = JoinSet::new();
    for i in 0..load.clients.max(1) {
        let mut target = targets[i % targets.len()].clone();
        let load = load.clone();
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(i as u64 + 1);
            let value = vec![b'x'; load.value_size];
            let mut result = LoadResult::default();
            while Instant::now() < deadline {
                let key = key(rng.random_range(0..load.keys.max(1)));
                let began = Instant::now();
                let outcome = match load.op {
                    Op::Put => tokio::time::timeout(load.timeout, target.put(key, value.clone())).await,
                    Op::Get { linearizable } => tokio::time::timeout(load.timeout, target.get(key, linearizable)).await,
                };
                match outcome {
                    Ok(Ok(())) => {
                        result.ops += 1;
                        result.latencies.push(began.elapsed());
                    }
                    Ok(Err(e)) => {
                        result.errors += 1;
                        result.first_error.get_or_insert(e.0);
                    }
                    Err(_) => {
                        result.errors += 1;
                        result.first_error.get_or_insert_with(|| format!("timed out after {:?}", load.timeout));
                    }
                }
            }
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(part) => {
                total.ops += part.ops;
                total.errors += part.errors;
                total.latencies.extend(part.latencies);
                if total.first_error.is_none() {
                    total.first_error = part.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(format!("a client task failed: {e}"));
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Writes keys `0..count` once each with `concurrency` clients (preloading, and W8's load).
pub async fn fill<T: KvTarget>(
    targets: &[T],
    count: u64,
    value_size: usize,
    concurrency: usize,
) -> Result<(), OpError> {
    if targets.is_empty() {
        return Err(OpError("no targets".into()));
    }
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for i in 0..concurrency.max(1) {
        let mut target = targets[i % targets.len()].clone();
        let next = next.clone();
        workers.spawn(async move {
            let value = vec![b'x'; value_size];
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let mut attempts = 0;
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), target.put(key(n), value.clone())).await {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) if attempts >= 3 => return Err(e),
                        Err(_) if attempts >= 3 => return Err(OpError(format!("put of key {n} timed out"))),
                        _ => attempts += 1,
                    }
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| OpError(format!("a fill task failed: {e}")))??;
    }
    Ok(())
}
