//! Starts real `xene-agent` processes for tests, beside a [`TestCluster`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use xene_proto as pb;

use crate::harness::{bin_dir, TestCluster};

/// An agent name no other test on this machine uses, even one in the same test process
/// (`cargo test` runs tests as threads of one process): agents label their Docker containers
/// and volumes with their names and remove those with their name that they do not know.
pub fn unique_agent_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

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

    /// Starts another agent process with this one's arguments and data directory, without
    /// its token, logging to its own file.
    pub fn second_instance(&self) -> AgentProc {
        let mut args = self.args.clone();
        if let Some(pos) = args.iter().position(|a| a == "--token") {
            args.drain(pos..pos + 2);
        }
        let log = self.log.with_extension("second.log");
        let mut second = AgentProc {
            name: format!("{} (second)", self.name),
            data_dir: self.data_dir.clone(),
            log,
            args,
            child: None,
        };
        second.spawn();
        second
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
        Command::new(bin_dir().join("xenectl"))
            .args(["--servers", &self.client_addresses().join(",")])
            .args(self.client_tls_args())
            .args(args)
            .env("XENE_TOKEN", &self.token)
            // Nothing of the machine's own xenectl settings.
            .env("XENECTL_CONFIG", "/dev/null")
            .env_remove("XENE_TLS_CA")
            .env_remove("XENE_TLS_CERT")
            .env_remove("XENE_TLS_KEY")
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
        self.start_agent_via(name, labels, token, executor, &self.client_addresses())
    }

    /// Like [`TestCluster::start_agent_with`], reaching the servers at `servers` (the chaos
    /// tests give the client proxies' addresses, see
    /// [`Network::plan_advertising_client_proxies`](crate::network::Network::plan_advertising_client_proxies)).
    pub fn start_agent_via(
        &self,
        name: &str,
        labels: &str,
        token: &str,
        executor: &str,
        servers: &[String],
    ) -> AgentProc {
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
        args.extend(self.client_tls_args());
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

impl AgentProc {
    /// The credential the agent stored when it joined (`agent.json` in its data directory).
    pub fn credential(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("agent.json")).expect("read the agent's credential");
        let value: serde_json::Value = serde_json::from_str(&text).expect("agent.json is JSON");
        value["credential"].as_str().expect("agent.json has a credential").to_string()
    }
}

impl TestCluster {
    /// Opens a session with the leader as `agent` (replacing the agent's own), sends a hello
    /// and then `messages`; returns the sending side (the session lasts while it is kept) and
    /// the leader's messages.
    pub async fn agent_session(
        &self,
        agent: &AgentProc,
        messages: Vec<pb::AgentMessage>,
    ) -> (tokio::sync::mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::ServerMessage>) {
        let (tx, rx) = tokio::sync::mpsc::channel(messages.len() + 8);
        let hello = pb::Hello { labels: Default::default(), capacity: 1, held: vec![], version: "test".into() };
        tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.expect("queue the hello");
        for message in messages {
            tx.send(message).await.expect("queue a message");
        }
        let leader = self.wait_leader(Duration::from_secs(10)).await;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", agent.credential()).parse().expect("a credential is ASCII");
        request.metadata_mut().insert("authorization", bearer);
        let session = pb::agent_service_client::AgentServiceClient::new(self.channel(leader))
            .session(request)
            .await
            .expect("open an agent session")
            .into_inner();
        (tx, session)
    }
}
