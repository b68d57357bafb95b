//! `xene-agent`: joins the cluster (once), then holds a session with the leader and the
//! pipeline leases it is granted, until SIGTERM or SIGINT.

mod chunk;
mod config;
mod connect;
mod credential;
mod cron;
mod data_dir;
mod docker;
mod leases;
mod lines;
mod outbox;
mod outputs;
mod pace;
mod process;
mod runner;
mod session;
mod tail;

use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use config::AgentConfig;

fn main() -> std::process::ExitCode {
    let mut config = AgentConfig::parse();
    if let Err(e) = config.load_tls() {
        eprintln!("xene-agent: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
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
    // Held until the agent exits: one agent per data directory.
    let _data_dir = data_dir::lock(&config.data_dir)?;
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
    let docker = if config.executor == "docker" {
        match docker::DockerExecutor::connect(&credential.agent).await {
            Ok(docker) => Some(docker),
            Err(e) => {
                tracing::error!(error = %e, "Docker is not reachable: tasks that need containers fail with InfrastructureError until the agent restarts with Docker up, or with --executor process");
                None
            }
        }
    } else {
        None
    };
    tracing::info!(agent = %credential.agent, executor = %config.executor, docker = docker.is_some(), "agent starting");
    let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
    let cron = tokio::spawn(cron::run(leases.clone(), outbox.clone(), stop.clone()));
    // What a crashed agent left running, then what it left on disk, goes before anything new
    // starts.
    let work_dir = config.data_dir.join("work");
    let step_records = Arc::new(process::StepRecords::new(work_dir.join(data_dir::STEP_RECORDS)));
    match step_records.stop_leftovers() {
        0 => {}
        stopped => tracing::info!(stopped, "stopped steps a previous run of this agent left running"),
    }
    match data_dir::sweep_work(&work_dir) {
        0 => {}
        removed => {
            tracing::info!(removed, dir = %work_dir.display(), "removed the workspaces a previous run of this agent left")
        }
    }
    let options = runner::RunnerOptions {
        max_tasks: config.max_tasks(),
        executor: config.executor.clone(),
        log_cap: runner::LogCap { lines: config.log_cap_lines, bytes: config.log_cap_mib << 20 },
        step_records,
    };
    let runner = runner::Runner::new(credential.agent.clone(), work_dir, leases.clone(), outbox, docker, options);
    let collector = tokio::spawn(collect_orphans(runner.clone(), stop.clone()));
    let result = session::run(config, credential, leases, runner.clone(), outbox_rx, stop.clone()).await;
    stop.cancel();
    let _ = collector.await;
    let _ = cron.await;
    runner.shutdown().await;
    result
}

/// Removes containers and volumes of this agent that no run in flight owns: at start-up (what
/// a crashed agent left) and every minute (DESIGN §9.3). Stops with the agent.
async fn collect_orphans(runner: Arc<runner::Runner>, stop: CancellationToken) {
    let Some(docker) = runner.docker().cloned() else { return };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match docker.ping().await.and(docker.remove_orphans(&runner.running_ids()).await) {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed orphaned containers and volumes"),
                Err(e) => tracing::warn!(error = %e, "collecting orphans failed"),
            },
        }
    }
}
