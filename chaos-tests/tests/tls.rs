//! TLS on every listener (DESIGN §11.2) with real processes: servers that speak TLS to their
//! clients and to each other and require client certificates, an agent and `xenectl` that
//! reach them with the CA and a certificate, the REST port over HTTPS, and what such a
//! cluster refuses: plain connections, missing or foreign client certificates, a server
//! certificate from another CA, TLS files beside a plain address, unreadable files.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use xene_chaos_tests::agent_proc::unique_agent_name;
use xene_chaos_tests::harness::{bin_dir, free_port, ClusterOptions, ClusterTls, TestCluster};
use xene_chaos_tests::pki::TestPki;

const WORKFLOW: &str = r#"
apiVersion: xene.dev/v1
kind: Workflow
metadata: {name: tls}
spec:
  triggers:
    push: {type: webhook, webhook: {provider: github, secretRef: hook-secret}}
  pipelines:
    hello:
      triggers: [push]
      tasks:
        say:
          steps:
            - {name: hello, run: 'echo "hello over TLS from $XENE_RUN_ID"'}
"#;

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `xenectl` with exactly `args` (no flags of the cluster's) and the admin token.
fn xenectl_bare(cluster: &TestCluster, args: &[&str]) -> Output {
    Command::new(bin_dir().join("xenectl"))
        .args(args)
        .env("XENE_TOKEN", &cluster.token)
        .env("XENECTL_CONFIG", "/dev/null")
        .output()
        .expect("run xenectl")
}

/// POSTs to the REST port at `addr` over TLS, trusting `ca`; returns the status and body.
async fn https_post(addr: &str, ca: &Path, path: &str, token: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(certificate.expect("a CA certificate")).expect("trust the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the REST port");
    let host = addr.rsplit_once(':').expect("HOST:PORT").0.to_string();
    let name = ServerName::try_from(host).expect("a server name");
    let mut stream =
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    // A server may close without a TLS close_notify: what was read before counts.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Whether a plain HTTP/1.1 request to `addr` gets any HTTP answer (the port must accept the
/// connection).
async fn plain_http_answers(addr: &str) -> bool {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("the REST port accepts connections");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response)).await;
    response.starts_with(b"HTTP/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_client_certificates_runs_work_and_refuses_the_rest() {
    std::env::set_var("XENE_AGENT_TTL_MS", "2000");
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path());
    let options =
        ClusterOptions { tls: Some(ClusterTls { pki: pki.clone(), client_certificates: true }), ..Default::default() };
    // Servers 2 and 3 joined through server 1 and replicate from it: peers speak TLS with
    // their certificates (the harness waits for three voters).
    let cluster = TestCluster::start(options).await;
    let addresses = cluster.client_addresses();
    assert!(addresses.iter().all(|a| a.starts_with("https://")), "{addresses:?}");

    // xenectl with the CA and a client certificate: a write through any server, read back
    // from the last one.
    let put = cluster.xenectl(&["kv", "put", "/tls/greeting", "hello"]);
    assert!(put.status.success(), "kv put over TLS: {}", text(&put));
    let tls_args = cluster.client_tls_args();
    let mut get_args: Vec<&str> = vec!["--servers", &addresses[2]];
    get_args.extend(tls_args.iter().map(String::as_str));
    get_args.extend(["kv", "get", "/tls/greeting"]);
    let get = xenectl_bare(&cluster, &get_args);
    assert!(get.status.success() && text(&get).contains("hello"), "kv get from server 3: {}", text(&get));
    let members = cluster.xenectl(&["cluster", "members"]);
    let members = text(&members);
    assert_eq!(members.matches(" voter ").count() + members.matches(" leader ").count(), 3, "members: {members}");

    // An agent over TLS with its certificate runs a pipeline end to end.
    let token =
        String::from_utf8_lossy(&cluster.xenectl(&["token", "create", "--kind", "agent"]).stdout).trim().to_string();
    assert!(!token.is_empty(), "no agent token");
    let agent = cluster.start_agent(&unique_agent_name("tls"), "os=linux", &token);
    let secret = cluster.xenectl(&["secret", "set", "hook-secret", "--from-literal", "secret=s3cret"]);
    assert!(secret.status.success(), "secret set: {}", text(&secret));
    let manifest = pki_dir.path().join("workflow.yaml");
    std::fs::write(&manifest, WORKFLOW).expect("write the manifest");
    let applied = cluster.xenectl(&["apply", "-f", &manifest.display().to_string()]);
    assert!(applied.status.success(), "apply: {}", text(&applied));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&cluster.xenectl(&["get", "pipelines", "tls/hello"])).contains(" Scheduled") {
        assert!(Instant::now() < deadline, "not placed over TLS:\n{}\n{}", cluster.logs(), agent.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = cluster.xenectl(&["run", "tls/hello", "--watch"]);
    assert!(run.status.success(), "run over TLS: {}\n{}", text(&run), agent.log_tail(30));
    let id = String::from_utf8_lossy(&run.stdout).lines().next().unwrap_or_default().trim().to_string();
    let logs = cluster.xenectl(&["logs", &id]);
    assert!(text(&logs).contains(&format!("hello over TLS from {id}")), "logs of {id}: {}", text(&logs));

    // The webhook URL a server gives is https://, and its REST port speaks HTTPS only.
    let described = text(&cluster.xenectl(&["describe", "pipeline", "tls/hello"]));
    let rest = cluster.servers[0].http.clone();
    assert!(described.contains(&format!("https://{rest}/api/v1/webhooks/tls/push")), "describe: {described}");
    let (status, body) = https_post(&rest, &pki.ca, "/api/v1/workflows/tls/pipelines/hello/runs", &cluster.token).await;
    assert!((200..300).contains(&status), "a run started over HTTPS: {status} {body}");
    assert!(!plain_http_answers(&rest).await, "the REST port answered plain HTTP");

    // Refused, each changing nothing: plain gRPC, no client certificate, a client
    // certificate of another CA, a server certificate checked against another CA.
    let authority = cluster.servers[0].grpc.clone();
    let https = format!("https://{authority}");
    let (ca, other_ca) = (pki.ca.display().to_string(), pki.other_ca.display().to_string());
    let (stranger_cert, stranger_key) =
        (pki.stranger.cert.display().to_string(), pki.stranger.key.display().to_string());
    let (client_cert, client_key) = (pki.client.cert.display().to_string(), pki.client.key.display().to_string());
    for (what, args, why) in [
        // A plain client sees an HTTP/2 protocol error or a closed connection, by timing; the
        // hint is there either way.
        ("plain gRPC", vec!["--servers", authority.as_str()], "write it as https://HOST:PORT"),
        (
            "no client certificate",
            vec!["--servers", &https, "--tls-ca", &ca],
            // The alert, or a closed connection when it came after the request (TLS 1.3).
            "pass --tls-cert and --tls-key",
        ),
        (
            "a client certificate of another CA",
            vec!["--servers", &https, "--tls-ca", &ca, "--tls-cert", &stranger_cert, "--tls-key", &stranger_key],
            "signed by the servers' --tls-client-ca",
        ),
        (
            "the server checked against another CA",
            vec!["--servers", &https, "--tls-ca", &other_ca, "--tls-cert", &client_cert, "--tls-key", &client_key],
            "UnknownIssuer: transport error (the server's certificate is not signed by a CA this client trusts",
        ),
        (
            "TLS files beside a plain address",
            vec!["--servers", authority.as_str(), "--tls-ca", &ca],
            "a plain address; write it as https://",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--timeout", "3", "kv", "put", "/tls/refused", what]);
        let output = xenectl_bare(&cluster, &args);
        assert!(!output.status.success(), "{what}: accepted: {}", text(&output));
        assert!(text(&output).contains(why), "{what}: want {why:?} in {}", text(&output));
    }
    let refused = cluster.xenectl(&["kv", "get", "/tls/refused"]);
    assert!(
        !refused.status.success() && text(&refused).contains("not found"),
        "a refused client wrote: {}",
        text(&refused)
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_ca_tls_needs_only_the_ca_and_bad_files_stop_a_server_at_start() {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::generate(pki_dir.path());
    let options = ClusterOptions {
        servers: 1,
        tls: Some(ClusterTls { pki: pki.clone(), client_certificates: false }),
        ..Default::default()
    };
    let cluster = TestCluster::start(options).await;
    let https = cluster.client_addresses()[0].clone();
    let ca = pki.ca.display().to_string();
    let put = xenectl_bare(&cluster, &["--servers", &https, "--tls-ca", &ca, "kv", "put", "/k", "only-the-ca"]);
    assert!(put.status.success(), "only the CA: {}", text(&put));

    // The same settings from xenectl's config file, paths relative to it.
    let config = pki_dir.path().join("config.yaml");
    std::fs::write(&config, format!("servers: [{https}]\ntoken: {}\ntls_ca: ca.pem\n", cluster.token))
        .expect("write the config file");
    let get = Command::new(bin_dir().join("xenectl"))
        .args(["--config", &config.display().to_string(), "kv", "get", "/k"])
        .env_remove("XENE_TOKEN")
        .env_remove("XENE_SERVERS")
        .env_remove("XENE_TLS_CA")
        .output()
        .expect("run xenectl");
    assert!(get.status.success() && text(&get).contains("only-the-ca"), "from the config file: {}", text(&get));

    // A server given a file that holds no certificate exits at once, naming flag and file.
    let not_pem = pki_dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let data_dir = pki_dir.path().join("bad-server");
    let start = Instant::now();
    let output = Command::new(bin_dir().join("xene-server"))
        .args(["--node-id", "9", "--data-dir", &data_dir.display().to_string(), "--bootstrap"])
        .args(["--cluster-secret", "a-long-enough-secret"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", &not_pem.display().to_string(), "--tls-key", &pki.server.key.display().to_string()])
        .output()
        .expect("run xene-server");
    assert!(!output.status.success(), "started with a bad certificate: {}", text(&output));
    let message = text(&output);
    assert!(
        message.contains("--tls-cert")
            && message.contains("not-a-certificate.pem")
            && message.contains("no certificate"),
        "{message}"
    );
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?} to refuse", start.elapsed());
    assert!(!data_dir.join("raft").exists(), "a refused server made its store");

    // A key that is not the certificate's: refused at start too, before the store is opened.
    let output = Command::new(bin_dir().join("xene-server"))
        .args(["--node-id", "9", "--data-dir", &data_dir.display().to_string(), "--bootstrap"])
        .args(["--cluster-secret", "a-long-enough-secret"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--tls-cert", &pki.server.cert.display().to_string()])
        .args(["--tls-key", &pki.client.key.display().to_string()])
        .output()
        .expect("run xene-server");
    let message = text(&output);
    assert!(!output.status.success(), "started with another certificate's key: {message}");
    assert!(message.contains("server.pem with --tls-key") && message.contains("client-key.pem"), "{message}");
    assert!(!data_dir.join("raft").exists(), "a refused server made its store");
}
