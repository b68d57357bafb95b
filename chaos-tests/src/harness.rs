//! Starts real `xene-server` processes on loopback for tests, and controls them: SIGKILL,
//! SIGTERM, SIGSTOP/SIGCONT, restart with the same data directory.
//!
//! Each server writes its log to `DIR/node-N.log`; when a test fails the directory is kept
//! (its path is printed) so the logs can be read.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use xene_proto as pb;
use xene_proto::cluster_service_client::ClusterServiceClient;
use xene_proto::kv_service_client::KvServiceClient;

use crate::pki::TestPki;

/// The cluster secret every test server shares.
pub const SECRET: &str = "test-cluster-secret";

/// Where the workspace's binaries are: beside the test executable's `deps/` folder, unless
/// `XENE_BIN_DIR` says otherwise.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("XENE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("invariant: the test knows its own path");
    let deps = exe.parent().expect("invariant: the test executable is in a folder");
    deps.parent().expect("invariant: deps/ is inside the profile folder").to_path_buf()
}

/// How many times a new server is moved to other free ports when it finds one taken.
const PORT_RETRIES: usize = 5;

/// A free loopback port (bound and released; good enough for tests on one machine), never one
/// this process handed out before: a cluster's ports are all picked before its servers bind
/// them, and the kernel may offer a just-released port again.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// One server process and what is needed to restart it.
pub struct ServerProc {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// The log's length when the process was last spawned.
    log_offset: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ServerProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open server log");
        self.log_offset = log.metadata().map_or(0, |m| m.len() as usize);
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(bin_dir().join("xene-server"))
            .args(&self.args)
            .env("XENE_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start xene-server (was `cargo build --bins` run?)");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after `grace`). Returns whether it exited
    /// by itself with status 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    /// Starts the process again with the same data directory and flags (no bootstrap or
    /// join needed: a restarted node needs only its data).
    pub fn restart(&mut self) {
        self.kill();
        self.args.retain(|a| a != "--bootstrap");
        if let Some(pos) = self.args.iter().position(|a| a == "--join") {
            self.args.drain(pos..pos + 2);
        }
        self.spawn();
    }

    /// Like [`ServerProc::restart`], with `--bootstrap` given again (as a unit file that keeps
    /// it would).
    pub fn restart_bootstrapping(&mut self) {
        self.kill();
        if !self.args.iter().any(|a| a == "--bootstrap") {
            self.args.push("--bootstrap".into());
        }
        if let Some(pos) = self.args.iter().position(|a| a == "--join") {
            self.args.drain(pos..pos + 2);
        }
        self.spawn();
    }

    /// Whether the process just spawned exited because one of its ports was taken: waits
    /// until it either says it is listening or exits.
    fn lost_a_port(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let from = self.log_offset;
        while Instant::now() < deadline {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
            if text.contains("listening") {
                return false;
            }
            let exited = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                // Read again: the last lines may have been written after the read above.
                let text = std::fs::read(&self.log).unwrap_or_default();
                let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
                if text.contains("is the port in use?") {
                    self.child = None;
                    return true;
                }
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Listens on `grpc` and `http` from the next start on.
    fn move_to(&mut self, grpc: String, http: String) {
        for (flag, addr) in [("--grpc-addr", &grpc), ("--http-addr", &http)] {
            if let Some(pos) = self.args.iter().position(|a| a == flag) {
                self.args[pos + 1] = addr.clone();
            }
        }
        (self.grpc, self.http) = (grpc, http);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// Where one server listens and the extra environment it starts with (see
/// [`TestCluster::start_planned`]); the chaos tests use it to put proxies on every link.
#[derive(Debug, Clone, Default)]
pub struct ServerPlan {
    pub grpc: String,
    pub http: String,
    pub env: Vec<(String, String)>,
    /// Whether the server may be moved to other free ports when it finds one of its own
    /// taken at start; false once something else (a proxy) was pointed at them.
    pub movable: bool,
}

impl ServerPlan {
    /// Free loopback ports and no extra environment.
    pub fn on_free_ports() -> ServerPlan {
        ServerPlan {
            grpc: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            env: Vec::new(),
            movable: true,
        }
    }
}

/// Options for [`TestCluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub servers: usize,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_logs: u64,
    /// TLS on every server's listeners and between them, with certificates of this PKI.
    pub tls: Option<ClusterTls>,
}

/// A cluster's TLS: every server presents `pki.server`; with `client_certificates`, the
/// servers require a client certificate signed by `pki.ca` on their gRPC listeners.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub pki: TestPki,
    pub client_certificates: bool,
}

impl ClusterTls {
    /// What a client of the cluster presents and trusts: the PKI's CA and client certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        let read = |path: &Path| std::fs::read(path).expect("read a PEM file of the test PKI");
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.pki.ca)))
            .identity(Identity::from_pem(read(&self.pki.client.cert), read(&self.pki.client.key)))
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { servers: 3, heartbeat_ms: 50, election_timeout_ms: 300, snapshot_logs: 10_000, tls: None }
    }
}

impl ClusterOptions {
    /// Three servers with a 250 ms heartbeat and a 1.5 s election timeout, for tests that
    /// count messages or streams: openraft gives each AppendEntries one heartbeat interval to
    /// be answered, and the default 50 ms is now and then missed on a loaded CI machine, which
    /// rightly replaces a stream or, rarely, starts an election.
    pub fn slow_heartbeat() -> Self {
        ClusterOptions { heartbeat_ms: 250, election_timeout_ms: 1_500, ..ClusterOptions::default() }
    }
}

/// A cluster of server processes in a temporary directory.
pub struct TestCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub servers: Vec<ServerProc>,
    pub token: String,
    options: ClusterOptions,
}

impl TestCluster {
    /// Bootstraps server 1, waits for its admin token, then joins the others one by one.
    pub async fn start(options: ClusterOptions) -> TestCluster {
        let plans = (0..options.servers).map(|_| ServerPlan::on_free_ports()).collect();
        Self::start_planned(options, plans).await
    }

    /// Like [`TestCluster::start`], with server `i + 1` listening and configured as `plans[i]`
    /// says (`plans` has one entry per server).
    pub async fn start_planned(options: ClusterOptions, plans: Vec<ServerPlan>) -> TestCluster {
        assert_eq!(plans.len(), options.servers, "one plan per server");
        let mut plans = plans.into_iter();
        let tmp = tempfile::Builder::new().prefix("xene-test-").tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut cluster = TestCluster { dir, _tmp: Some(tmp), servers: Vec::new(), token: String::new(), options };
        let first = cluster.add_planned(1, None, SECRET, plans.next().expect("invariant: one plan per server"));
        let token_path = cluster.servers[first].data_dir.join("admin.token");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !token_path.exists() || std::fs::read_to_string(&token_path).unwrap_or_default().trim().is_empty() {
            assert!(Instant::now() < deadline, "no admin token after 30 s:\n{}", cluster.servers[first].log_tail(30));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.token = std::fs::read_to_string(&token_path).expect("read token").trim().to_string();
        cluster.wait_voters(1, Duration::from_secs(30)).await;
        for id in 2..=cluster.options.servers as u64 {
            let via = cluster.servers[0].grpc.clone();
            cluster.add_planned(id, Some(&via), SECRET, plans.next().expect("invariant: one plan per server"));
            cluster.wait_voters(id as usize, Duration::from_secs(60)).await;
        }
        cluster
    }

    /// Starts one more server: bootstrapping when `join` is `None`, else joining via it.
    /// Returns its index in `servers`.
    pub fn add_server(&mut self, id: u64, join: Option<&str>) -> usize {
        self.add_server_with_secret(id, join, SECRET)
    }

    pub fn add_server_with_secret(&mut self, id: u64, join: Option<&str>, secret: &str) -> usize {
        self.add_planned(id, join, secret, ServerPlan::on_free_ports())
    }

    /// Starts one more server as `plan` says; see [`TestCluster::add_server`].
    pub fn add_planned(&mut self, id: u64, join: Option<&str>, secret: &str, plan: ServerPlan) -> usize {
        let ServerPlan { grpc, http, env, movable } = plan;
        let data_dir = self.dir.join(format!("node-{id}"));
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--grpc-addr".into(),
            grpc.clone(),
            "--http-addr".into(),
            http.clone(),
            "--cluster-secret".into(),
            secret.into(),
            "--heartbeat-ms".into(),
            self.options.heartbeat_ms.to_string(),
            "--election-timeout-ms".into(),
            self.options.election_timeout_ms.to_string(),
            "--snapshot-logs".into(),
            self.options.snapshot_logs.to_string(),
        ];
        if let Some(tls) = &self.options.tls {
            let path = |p: &Path| p.display().to_string();
            args.extend([
                "--tls-cert".into(),
                path(&tls.pki.server.cert),
                "--tls-key".into(),
                path(&tls.pki.server.key),
                "--tls-ca".into(),
                path(&tls.pki.ca),
            ]);
            if tls.client_certificates {
                args.extend(["--tls-client-ca".into(), path(&tls.pki.ca)]);
            }
        }
        match join {
            None => args.push("--bootstrap".into()),
            Some(via) => {
                args.push("--join".into());
                args.push(via.into());
            }
        }
        let log = self.dir.join(format!("node-{id}.log"));
        let mut server = ServerProc { id, grpc, http, data_dir, log, log_offset: 0, args, env, child: None };
        server.spawn();
        if movable {
            // A port picked here is free only until someone binds it: another test's process,
            // or any outgoing connection, whose local port comes from the same range, may
            // take it before the server starts. Such a server exits at once, before it told
            // anyone its address, so it is started again on other free ports.
            for _ in 0..PORT_RETRIES {
                if !server.lost_a_port() {
                    break;
                }
                let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
                server.move_to(grpc, http);
                server.spawn();
            }
        }
        self.servers.push(server);
        self.servers.len() - 1
    }

    /// A channel to server `index`: over TLS with the PKI's CA and client certificate when
    /// the cluster speaks TLS.
    pub fn channel(&self, index: usize) -> Channel {
        self.endpoint(&self.servers[index].grpc).connect_timeout(Duration::from_secs(1)).connect_lazy()
    }

    /// The endpoint of the gRPC address `addr`, as [`TestCluster::channel`] reaches it.
    pub fn endpoint(&self, addr: &str) -> Endpoint {
        match &self.options.tls {
            None => Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint"),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .expect("valid endpoint")
                .tls_config(tls.client_config())
                .expect("TLS settings of the test PKI"),
        }
    }

    /// The gRPC addresses of the servers as clients write them: `https://` when the cluster
    /// speaks TLS.
    pub fn client_addresses(&self) -> Vec<String> {
        let scheme = if self.options.tls.is_some() { "https://" } else { "" };
        self.servers.iter().map(|s| format!("{scheme}{}", s.grpc)).collect()
    }

    /// The TLS flags a client (xenectl, an agent) of this cluster needs: the CA and the
    /// client certificate.
    pub fn client_tls_args(&self) -> Vec<String> {
        match &self.options.tls {
            None => Vec::new(),
            Some(tls) => {
                [("--tls-ca", &tls.pki.ca), ("--tls-cert", &tls.pki.client.cert), ("--tls-key", &tls.pki.client.key)]
                    .into_iter()
                    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
                    .collect()
            }
        }
    }

    pub fn kv(&self, index: usize) -> KvServiceClient<Channel> {
        KvServiceClient::new(self.channel(index))
    }

    pub fn cluster_client(&self, index: usize) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel(index))
    }

    /// A request carrying the admin token and a deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token).parse().expect("token is ASCII");
        request.metadata_mut().insert("authorization", value);
        request.set_timeout(Duration::from_secs(10));
        request
    }

    /// The status of server `index`, if it answers.
    pub async fn status(&self, index: usize) -> Option<pb::StatusResponse> {
        let mut client = self.cluster_client(index);
        client.status(self.request(pb::StatusRequest {})).await.ok().map(|r| r.into_inner())
    }

    /// Waits until the running servers agree on one leader and returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for (index, server) in self.servers.iter().enumerate() {
                if !server.is_running() {
                    continue;
                }
                if let Some(status) = self.status(index).await {
                    if status.state == "leader" {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some server reports `count` voters.
    pub async fn wait_voters(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            for (index, server) in self.servers.iter().enumerate() {
                if !server.is_running() {
                    continue;
                }
                if let Some(status) = self.status(index).await {
                    let voters = status.members.iter().filter(|m| m.role == "voter").count();
                    if status.state == "leader" && voters == count {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader with {count} voters within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of every server's log, for failure messages.
    pub fn logs(&self) -> String {
        self.servers.iter().map(|s| format!("--- node {} ---\n{}", s.id, s.log_tail(25))).collect::<Vec<_>>().join("\n")
    }

    /// Keeps the directory (logs, data) after the test, e.g. when it failed.
    pub fn keep(&mut self) -> &Path {
        if let Some(tmp) = self._tmp.take() {
            let _ = tmp.keep();
        }
        &self.dir
    }
}
