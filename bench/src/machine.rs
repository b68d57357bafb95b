//! The machine line: cores, and the cost of one small synced write measured here and now
//! (PERF.md: the physical floor of a replicated write).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::stats::Samples;

/// What the figures of a run are relative to.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    /// Median of one 4 KiB write followed by `fdatasync`.
    pub fsync: Duration,
    pub fsync_p99: Duration,
    /// The 1-minute load average when the run started: figures taken on a busy machine
    /// are not comparable with figures taken on an idle one.
    pub load: String,
}

impl Machine {
    /// Measures the machine: `writes` 4 KiB writes, each made durable with `fdatasync`, in a
    /// file under `dir` (the same file system the servers write to).
    pub fn measure(dir: &Path, writes: usize) -> anyhow::Result<Machine> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let path = dir.join("fsync-probe");
        let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let block = [0u8; 4096];
        let mut samples = Samples::default();
        for _ in 0..writes.max(1) {
            let started = Instant::now();
            file.write_all(&block).context("writing the fsync probe")?;
            file.sync_data().context("fdatasync of the fsync probe")?;
            samples.push(started.elapsed());
        }
        drop(file);
        let _ = std::fs::remove_file(&path);
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(String::from))
            .unwrap_or_else(|| "?".into());
        Ok(Machine { cores, fsync: samples.median(), fsync_p99: samples.percentile(99.0), load })
    }

    pub fn line(&self) -> String {
        format!(
            "machine: {} cores, load average {}; 4 KiB write + fdatasync: median {}, p99 {}",
            self.cores,
            self.load,
            crate::report::dur(self.fsync),
            crate::report::dur(self.fsync_p99)
        )
    }
}
