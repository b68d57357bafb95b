//! The sizes of every workload, as flags; `--smoke` makes them tiny.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::xene::Timing;

/// Sizes and settings shared by every workload. Defaults are PERF.md's.
#[derive(Debug, Clone, Args)]
pub struct Sizes {
    /// Tiny sizes everywhere (seconds, not minutes): for a smoke test, not for figures.
    #[arg(long, global = true)]
    pub smoke: bool,
    /// Where xene-server and xene-agent are (default: beside this program).
    #[arg(long, global = true, env = "XENE_BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Skip etcd (the peer columns of W1–W3 and W8 stay empty).
    #[arg(long, global = true)]
    pub no_etcd: bool,
    /// Do not install etcd-server with apt-get when etcd is missing.
    #[arg(long, global = true)]
    pub no_install: bool,
    /// Raft heartbeat of the Xene servers, ms (the server's default).
    #[arg(long, global = true, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Smallest election timeout of the Xene servers, ms (the server's default).
    #[arg(long, global = true, default_value_t = 150)]
    pub election_timeout_ms: u64,
    /// Log entries between snapshots of the Xene servers (the server's default).
    #[arg(long, global = true, default_value_t = 100_000)]
    pub snapshot_logs: u64,

    /// W1/W2: seconds per measurement.
    #[arg(long, global = true, default_value_t = 10)]
    pub seconds: u64,
    /// W1: concurrent clients, one measurement each.
    #[arg(long, global = true, value_delimiter = ',', default_value = "1,16,256")]
    pub clients: Vec<usize>,
    /// W1: keys are drawn from this many.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub keys: u64,
    /// W1: value size in bytes.
    #[arg(long, global = true, default_value_t = 256)]
    pub value_size: usize,
    /// W2: concurrent readers.
    #[arg(long, global = true, default_value_t = 256)]
    pub readers: usize,
    /// W2: keys written before reading, read at random.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub read_keys: u64,
    /// W3: leader kills.
    #[arg(long, global = true, default_value_t = 10)]
    pub failovers: usize,
    /// W4: triggers.
    #[arg(long, global = true, default_value_t = 200)]
    pub triggers: usize,
    /// W4: also measure the container executor (needs Docker and the xene/busybox image).
    #[arg(long, global = true)]
    pub container: bool,
    /// W5: layers of the DAG.
    #[arg(long, global = true, default_value_t = 10)]
    pub dag_layers: usize,
    /// W5: tasks per layer.
    #[arg(long, global = true, default_value_t = 100)]
    pub dag_width: usize,
    /// W6: numbers of simulated agents to try, in order; stops at the first that misses.
    #[arg(long, global = true, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
    pub agents: Vec<usize>,
    /// W6: heartbeat interval of the simulated agents, ms.
    #[arg(long, global = true, default_value_t = 2000)]
    pub agent_heartbeat_ms: u64,
    /// W6: seconds each step is measured.
    #[arg(long, global = true, default_value_t = 10)]
    pub window: u64,
    /// W7: pipelines to place.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub pipelines: usize,
    /// W7: simulated agents connected while placing.
    #[arg(long, global = true, default_value_t = 1_000)]
    pub placement_agents: usize,
    /// W8: keys written before the second measurement.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub footprint_keys: u64,
    /// W8: seconds idle before each measurement.
    #[arg(long, global = true, default_value_t = 10)]
    pub idle: u64,
    /// W9: lines the step prints (100 bytes each).
    #[arg(long, global = true, default_value_t = 1_000_000)]
    pub lines: u64,
    /// W9: runs of the step (and twice as many of the command alone); medians are reported.
    #[arg(long, global = true, default_value_t = 3)]
    pub log_runs: usize,
}

impl Sizes {
    /// Applies `--smoke`: every size small enough that `all` takes about a minute.
    pub fn resolve(mut self) -> Sizes {
        if self.smoke {
            self.seconds = 1;
            self.clients = vec![1, 4];
            self.keys = 1_000;
            self.readers = 4;
            self.read_keys = 50;
            self.failovers = 1;
            self.triggers = 3;
            self.dag_layers = 2;
            self.dag_width = 3;
            self.agents = vec![5];
            self.window = 2;
            self.pipelines = 10;
            self.placement_agents = 3;
            self.log_runs = 1;
            self.footprint_keys = 100;
            self.idle = 1;
            self.lines = 1_000;
        }
        self
    }

    pub fn timing(&self) -> Timing {
        Timing {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            snapshot_logs: self.snapshot_logs,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}
