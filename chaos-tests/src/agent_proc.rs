//! Starts real `xene-agent` processes for tests, beside a [`TestCluster`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{bin_dir, TestCluster};

/// One agent process and what is needed to restart it.
pub struct AgentProc {
    pub name: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl AgentProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open agent log");
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(bin_dir().join("xene-agent"))
            .args(&self.args)
            .env_remove("XENE_TOKEN")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start xene-agent (was `cargo build --bins` run?)");
        self.child = Some(child);
    }

    /// The process ID while it runs (the benchmarks read its memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same data directory and no token.
    pub fn restart(&mut self) {
        self.kill();
        if let Some(pos) = self.args.iter().position(|a| a == "--token") {
            self.args.drain(pos..pos + 2);
        }
        self.spawn();
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestCluster {
    /// Runs `xenectl` against every server of the cluster with the admin token.
    pub fn xenectl(&self, args: &[&str]) -> std::process::Output {
        let servers: Vec<String> = self.servers.iter().map(|s| s.grpc.clone()).collect();
        Command::new(bin_dir().join("xenectl"))
            .args(["--servers", &servers.join(",")])
            .args(args)
            .env("XENE_TOKEN", &self.token)
            .output()
            .expect("run xenectl")
    }

    /// Starts an agent named `name` with `labels` (`k=v,...`), joining with `token`, running
    /// steps as processes.
    pub fn start_agent(&self, name: &str, labels: &str, token: &str) -> AgentProc {
        self.start_agent_with(name, labels, token, "process")
    }

    /// Like [`TestCluster::start_agent`] with the given executor (`process` or `docker`).
    pub fn start_agent_with(&self, name: &str, labels: &str, token: &str, executor: &str) -> AgentProc {
        let servers: Vec<String> = self.servers.iter().map(|s| s.grpc.clone()).collect();
        let data_dir = self.dir.join(format!("agent-{name}"));
        let mut args = vec![
            "--servers".to_string(),
            servers.join(","),
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--executor".into(),
            executor.into(),
            "--token".into(),
            token.into(),
        ];
        if !labels.is_empty() {
            args.push("--labels".into());
            args.push(labels.into());
        }
        let log = self.dir.join(format!("agent-{name}.log"));
        let mut agent = AgentProc { name: name.into(), data_dir, log, args, child: None };
        agent.spawn();
        agent
    }
}
