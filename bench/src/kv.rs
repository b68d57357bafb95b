//! W1 (replicated puts) and W2 (linearizable and serializable reads): Xene and etcd, each a
//! three-member cluster on loopback, driven by the same load generator.
//!
//! Client `i` talks to the `i`-th member counted from the leader, in both systems: a lone
//! client writes to the leader, and many spread evenly. Counting from a fixed member instead
//! put Xene's lone client on its leader (the server that bootstraps leads first) and etcd's on
//! a follower two times in three, whose writes take one hop more.

use std::time::Duration;

use anyhow::Context;

use crate::load::{self, KvTarget, Load, LoadResult, Op};
use crate::report::{dur, rate, Row};
use crate::Bench;

/// The figures of one store.
#[derive(Default)]
struct Figures {
    puts: Vec<(usize, LoadResult)>,
    linearizable: Option<LoadResult>,
    serializable: Option<LoadResult>,
}

async fn measure<T: KvTarget>(bench: &Bench, targets: &[T], w1: bool, w2: bool) -> anyhow::Result<Figures> {
    let sizes = &bench.sizes;
    let mut figures = Figures::default();
    let timeout = Duration::from_secs(5);
    if w1 {
        // A short warm-up, so connections and the first allocations are not measured.
        let warm = Load {
            clients: 4,
            duration: Duration::from_millis(300),
            keys: sizes.keys,
            value_size: sizes.value_size,
            op: Op::Put,
            timeout,
        };
        load::run(targets, &warm).await;
        for &clients in &sizes.clients {
            let load = Load {
                clients,
                duration: sizes.duration(),
                keys: sizes.keys,
                value_size: sizes.value_size,
                op: Op::Put,
                timeout,
            };
            figures.puts.push((clients, load::run(targets, &load).await));
        }
    }
    if w2 {
        load::fill(targets, sizes.read_keys, sizes.value_size, 64).await.context("writing the keys to read")?;
        for linearizable in [true, false] {
            let load = Load {
                clients: sizes.readers,
                duration: sizes.duration(),
                keys: sizes.read_keys,
                value_size: sizes.value_size,
                op: Op::Get { linearizable },
                timeout,
            };
            let result = load::run(targets, &load).await;
            if linearizable {
                figures.linearizable = Some(result);
            } else {
                figures.serializable = Some(result);
            }
        }
    }
    Ok(figures)
}

fn with_errors(text: String, result: &LoadResult) -> String {
    if result.errors == 0 {
        text
    } else {
        format!("{text} ({} errors: {})", result.errors, result.first_error.as_deref().unwrap_or("?"))
    }
}

/// Runs W1 and/or W2 on Xene, then on etcd, and returns their rows.
pub async fn run(bench: &Bench, w1: bool, w2: bool) -> anyhow::Result<Vec<Row>> {
    let xene = {
        let cluster = crate::xene::start_cluster(3, bench.sizes.timing()).await?;
        let mut targets = crate::xene::XeneKv::all(&cluster)?;
        targets.rotate_left(crate::xene::leader(&cluster, Duration::from_secs(10)).await?);
        measure(bench, &targets, w1, w2).await?
    };
    let etcd = match bench.etcd_cluster().await {
        Ok(Some(cluster)) => {
            let mut targets = cluster.targets().await?;
            targets.rotate_left(cluster.leader(Duration::from_secs(10)).await?);
            Some(measure(bench, &targets, w1, w2).await?)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!("xene-bench: etcd could not start: {e:#}");
            None
        }
    };
    let mut rows = Vec::new();
    let fsync = bench.machine.fsync;
    let mut etcd = etcd;
    let mut etcd_puts = etcd.as_mut().map(|f| std::mem::take(&mut f.puts)).unwrap_or_default().into_iter();
    for (clients, mut x) in xene.puts {
        let mut e = etcd_puts.next().map(|(_, r)| r);
        let peer_rate = e.as_ref().map_or(0.0, LoadResult::rate);
        let mut row = Row::new(format!("W1 puts, {clients} clients: writes/s"))
            .xene(with_errors(rate(x.rate(), "/s"), &x))
            .peer(e.as_ref().map_or("–".into(), |e| with_errors(rate(e.rate(), "/s"), e)))
            .ratio(x.rate(), peer_rate);
        if clients == 256 {
            let met = (peer_rate > 0.0).then(|| x.rate() >= 2.0 * peer_rate);
            row = row.target("≥ 2× etcd", met);
        }
        rows.push(row);
        let (xp50, xp99) = (x.latencies.median(), x.latencies.percentile(99.0));
        let peer = e.as_mut().map(|e| (e.latencies.median(), e.latencies.percentile(99.0)));
        let mut row = Row::new(format!("W1 puts, {clients} clients: p50 / p99"))
            .xene(format!("{} / {}", dur(xp50), dur(xp99)))
            .peer(peer.map_or("–".into(), |(p50, p99)| format!("{} / {}", dur(p50), dur(p99))))
            .ratio(xp50.as_secs_f64(), peer.map_or(0.0, |(p50, _)| p50.as_secs_f64()));
        if clients == 1 {
            let floor = fsync.mul_f64(1.5);
            let met = peer.map(|(p50, _)| xp50 <= p50 && xp50 <= floor);
            row = row.target(format!("p50 ≤ etcd and ≤ 1.5× fsync ({})", dur(floor)), met);
        }
        rows.push(row);
    }
    let (etcd_lin, etcd_ser) = match etcd {
        Some(f) => (f.linearizable, f.serializable),
        None => (None, None),
    };
    let pairs = [("linearizable", xene.linearizable, etcd_lin), ("serializable", xene.serializable, etcd_ser)];
    for (kind, x, mut e) in pairs {
        let Some(mut x) = x else { continue };
        let peer_rate = e.as_ref().map_or(0.0, LoadResult::rate);
        let met = (peer_rate > 0.0).then(|| x.rate() >= peer_rate);
        rows.push(
            Row::new(format!("W2 {kind} reads, {} clients: reads/s", bench.sizes.readers))
                .xene(with_errors(rate(x.rate(), "/s"), &x))
                .peer(e.as_ref().map_or("–".into(), |e| with_errors(rate(e.rate(), "/s"), e)))
                .ratio(x.rate(), peer_rate)
                .target("≥ etcd", met),
        );
        let peer = e.as_mut().map(|e| (e.latencies.median(), e.latencies.percentile(99.0)));
        rows.push(
            Row::new(format!("W2 {kind} reads: p50 / p99"))
                .xene(format!("{} / {}", dur(x.latencies.median()), dur(x.latencies.percentile(99.0))))
                .peer(peer.map_or("–".into(), |(p50, p99)| format!("{} / {}", dur(p50), dur(p99))))
                .ratio(x.latencies.median().as_secs_f64(), peer.map_or(0.0, |(p50, _)| p50.as_secs_f64())),
        );
    }
    Ok(rows)
}
