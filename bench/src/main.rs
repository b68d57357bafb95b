//! `xene-bench`: the workloads of PERF.md (W1–W9), each beside its peer (etcd) or the
//! physical floor, measured in the same run on this machine; one table at the end.
//!
//! - [`config`]: sizes and flags; [`machine`]: cores and fsync time; [`report`]: the table.
//! - [`load`]: the key-value load generator; [`xene`] and [`etcd`]: the clusters it drives.
//! - [`kv`] (W1, W2), [`failover`] (W3), [`runs`] (W4, W5, W9), [`agents`] (W6, W7, with the
//!   simulated agents of [`sim`]), [`footprint`] (W8).

mod agents;
mod config;
mod etcd;
mod failover;
mod footprint;
mod kv;
mod load;
mod machine;
mod report;
mod runs;
mod sim;
mod stats;
mod xene;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::Sizes;
use crate::etcd::EtcdCluster;
use crate::machine::Machine;
use crate::report::Row;

#[derive(Debug, Parser)]
#[command(name = "xene-bench", version, about = "Runs the PERF.md workloads and prints one table")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
    #[command(flatten)]
    sizes: Sizes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Workload {
    /// Every workload, W1 to W9.
    All,
    /// Replicated puts, 1/16/256 clients, beside etcd.
    W1,
    /// Linearizable and serializable reads, beside etcd.
    W2,
    /// Leader failover, beside etcd.
    W3,
    /// Trigger → first step started, beside fork+exec.
    W4,
    /// A 1,000-task DAG, beside make -jN.
    W5,
    /// Simulated agent sessions on one leader.
    W6,
    /// Placement of 10,000 pipelines on 1,000 simulated agents.
    W7,
    /// Memory and binary sizes, beside etcd.
    W8,
    /// Log shipping of a step printing 1,000,000 lines.
    W9,
}

/// What every workload gets: its sizes, the machine, and where the programs are.
pub struct Bench {
    pub sizes: Sizes,
    pub machine: Machine,
    pub bin_dir: PathBuf,
    /// The etcd binary, when etcd is to be measured.
    pub etcd: Option<PathBuf>,
}

impl Bench {
    /// A fresh three-member etcd cluster, or `None` when etcd is not measured.
    pub async fn etcd_cluster(&self) -> anyhow::Result<Option<EtcdCluster>> {
        match &self.etcd {
            None => Ok(None),
            Some(binary) => EtcdCluster::start(binary.clone(), 3).await.map(Some),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = cli.sizes.resolve();
    let bin_dir = match &sizes.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("finding this program's path")?
            .parent()
            .map(PathBuf::from)
            .context("this program is in no folder")?,
    };
    for binary in ["xene-server", "xene-agent"] {
        if !bin_dir.join(binary).is_file() {
            bail!(
                "{binary} is not in {}: build it (cargo build -p xene-server -p xene-agent) or pass --bin-dir",
                bin_dir.display()
            );
        }
    }
    // The harness finds the binaries through this variable; set before any thread starts.
    std::env::set_var("XENE_BIN_DIR", &bin_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let failed = runtime.block_on(run(cli.workload, sizes, bin_dir))?;
    if failed > 0 {
        bail!("{failed} workload(s) failed; see the table");
    }
    Ok(())
}

/// Runs the chosen workloads, prints the machine line and the table; returns how many failed.
async fn run(workload: Workload, sizes: Sizes, bin_dir: PathBuf) -> anyhow::Result<usize> {
    let probe = tempfile::Builder::new().prefix("xene-bench-").tempdir().context("temporary directory")?;
    let machine = Machine::measure(probe.path(), if sizes.smoke { 20 } else { 500 })?;
    drop(probe);
    let wants_etcd = matches!(workload, Workload::All | Workload::W1 | Workload::W2 | Workload::W3 | Workload::W8);
    let etcd = if wants_etcd && !sizes.no_etcd {
        match etcd::ensure_installed(!sizes.no_install) {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("xene-bench: no etcd, its columns stay empty: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let build = if bin_dir.ends_with("dist") {
        "dist"
    } else if bin_dir.ends_with("release") {
        "release"
    } else if bin_dir.ends_with("debug") {
        "debug"
    } else {
        "unknown"
    };
    println!("{}", machine.line());
    println!("binaries: {} ({build} build)", bin_dir.display());
    let bench = Bench { sizes, machine, bin_dir, etcd };
    let selected: Vec<Workload> = match workload {
        Workload::All => vec![
            Workload::W1,
            Workload::W3,
            Workload::W4,
            Workload::W5,
            Workload::W6,
            Workload::W7,
            Workload::W8,
            Workload::W9,
        ],
        one => vec![one],
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = 0;
    for one in selected {
        let name = format!("{one:?}");
        eprintln!("xene-bench: running {name}");
        let result = match one {
            // In `all`, W1 and W2 share their clusters.
            Workload::W1 => kv::run(&bench, true, workload == Workload::All).await,
            Workload::W2 => kv::run(&bench, false, true).await,
            Workload::W3 => failover::run(&bench).await,
            Workload::W4 => runs::w4(&bench).await,
            Workload::W5 => runs::w5(&bench).await,
            Workload::W6 => agents::w6(&bench).await,
            Workload::W7 => agents::w7(&bench).await,
            Workload::W8 => footprint::w8(&bench).await,
            Workload::W9 => runs::w9(&bench).await,
            Workload::All => Ok(vec![]),
        };
        match result {
            Ok(more) => rows.extend(more),
            Err(e) => {
                failed += 1;
                eprintln!("xene-bench: {name} failed: {e:#}");
                rows.push(Row::failed(name, &e));
            }
        }
    }
    println!();
    print!("{}", report::table(&rows));
    Ok(failed)
}
