//! `xene-agent`: joins the cluster (once), then holds a session with the leader and the
//! pipeline leases it is granted, until SIGTERM or SIGINT.

mod config;
mod connect;
mod credential;
mod leases;
mod process;
mod runner;
mod session;

use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use config::AgentConfig;

fn main() -> std::process::ExitCode {
    let config = AgentConfig::parse();
    let filter = EnvFilter::try_from_env("XENE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xene-agent: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xene-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    if let Some(message) = xene_model::names::name_message("agent", &config.name) {
        anyhow::bail!("--name: {message}");
    }
    let credential = credential::load_or_join(&config).await?;
    let leases = Arc::new(leases::Leases::default());
    let stop = CancellationToken::new();
    let signals = stop.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signals.cancel();
        }
    });
    if config.executor != "process" {
        tracing::warn!(executor = %config.executor, "the container executor is not available yet; tasks run as local processes");
    }
    tracing::info!(agent = %credential.agent, executor = %config.executor, "agent starting");
    let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let runner = runner::Runner::new(config.data_dir.join("work"), leases.clone(), outbox, parallelism);
    let result = session::run(config, credential, leases, runner.clone(), outbox_rx, stop).await;
    runner.shutdown().await;
    result
}
