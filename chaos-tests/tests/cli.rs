//! `xenectl` as a process against a real cluster: the key-value commands, membership
//! listing, failing over between the servers it is given, and clear errors.

use std::process::{Command, Output};
use std::time::Duration;

use xene_chaos_tests::harness::{bin_dir, ClusterOptions, TestCluster};

fn xenectl(servers: &str, token: &str, args: &[&str]) -> Output {
    Command::new(bin_dir().join("xenectl"))
        .args(["--servers", servers, "--timeout", "5"])
        .args(args)
        .env("XENE_TOKEN", token)
        .output()
        .expect("run xenectl")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xenectl_reads_writes_and_fails_over() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let all: Vec<String> = cluster.servers.iter().map(|s| s.grpc.clone()).collect();
    let servers = all.join(",");
    let token = cluster.token.clone();

    let put = xenectl(&servers, &token, &["kv", "put", "/greeting", "hello"]);
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    assert!(stdout(&put).starts_with("revision "), "{}", stdout(&put));
    let get = xenectl(&all[2], &token, &["kv", "get", "/greeting"]);
    assert_eq!(stdout(&get).trim(), "hello");
    let list = xenectl(&servers, &token, &["kv", "get", "/", "--prefix"]);
    assert!(stdout(&list).contains("/greeting=hello"), "{}", stdout(&list));

    let members = xenectl(&servers, &token, &["cluster", "members"]);
    let text = stdout(&members);
    assert_eq!(text.lines().filter(|l| l.contains("voter") || l.contains("leader")).count(), 3, "{text}");

    // The first server dies: xenectl moves on to the next one by itself.
    cluster.servers[0].kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let get = tokio::task::spawn_blocking({
        let servers = servers.clone();
        let token = token.clone();
        move || xenectl(&servers, &token, &["kv", "get", "/greeting"])
    })
    .await
    .expect("join");
    assert!(get.status.success(), "failover read: {}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(stdout(&get).trim(), "hello");

    // Clear errors, non-zero exit.
    let missing = xenectl(&servers, &token, &["kv", "get", "/nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    let unauthenticated = xenectl(&servers, "xene_bad_token", &["kv", "get", "/greeting"]);
    assert!(!unauthenticated.status.success());
    assert!(String::from_utf8_lossy(&unauthenticated.stderr).contains("XENE_TOKEN"));
}

#[test]
fn xenectl_prints_shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(bin_dir().join("xenectl")).args(["completion", shell]).output().expect("run xenectl");
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains("xenectl") && script.contains("apply"), "{shell}: {script}");
    }
    let bad = Command::new(bin_dir().join("xenectl")).args(["completion", "tcsh"]).output().expect("run xenectl");
    assert!(!bad.status.success());
}
