//! `xene-server` settings come from flags, then `XENE_*` variables, then the config file,
//! then defaults (DESIGN §5.1); bad settings are refused with a message naming the flag.

use clap::Parser;
use xene_server::config::{Flags, ServerConfig};

fn resolve(args: &[&str]) -> Result<ServerConfig, String> {
    let flags =
        Flags::try_parse_from(std::iter::once("xene-server").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    ServerConfig::resolve(flags).map_err(|e| e.to_string())
}

/// One test, because it sets process-wide environment variables that the other checks would see.
#[test]
fn settings_precedence_and_refusals() {
    flags_beat_environment_beat_file_beat_defaults();
    bad_settings_are_refused_with_a_clear_message();
    bootstrap_in_the_file_can_be_turned_off();
    the_data_directory_remembers_its_node_id();
}

fn bootstrap_in_the_file_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("server.yaml");
    std::fs::write(&file, "node_id: 1\ndata_dir: /from/file\ncluster_secret: file-secret-123\nbootstrap: true\n")
        .expect("write config");
    let file = file.display().to_string();
    assert!(resolve(&["--config", &file]).expect("file").bootstrap);
    assert!(!resolve(&["--config", &file, "--bootstrap=false"]).expect("flag").bootstrap);
    std::env::set_var("XENE_BOOTSTRAP", "false");
    assert!(!resolve(&["--config", &file]).expect("env").bootstrap, "XENE_BOOTSTRAP=false beats the file");
    std::env::set_var("XENE_BOOTSTRAP", "true");
    assert!(
        resolve(&["--data-dir", "/d", "--node-id", "1", "--cluster-secret", "long-enough"]).expect("env").bootstrap
    );
    std::env::remove_var("XENE_BOOTSTRAP");
    let plain = ["--data-dir", "/d", "--node-id", "1", "--cluster-secret", "long-enough"];
    assert!(!resolve(&plain).expect("default").bootstrap, "off by default");
    let flagged = resolve(&["--bootstrap", "--data-dir", "/d", "--node-id", "1", "--cluster-secret", "long-enough"]);
    assert!(flagged.expect("bare flag").bootstrap, "--bootstrap alone turns it on");
}

/// The first start records the node ID in the data directory; later starts may leave it out
/// and may not change it.
fn the_data_directory_remembers_its_node_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().display().to_string();
    let with = |id: Option<&str>| {
        let mut args = vec!["--data-dir", data.as_str(), "--cluster-secret", "long-enough"];
        if let Some(id) = id {
            args.extend(["--node-id", id]);
        }
        resolve(&args)
    };
    let message = with(None).expect_err("nothing recorded yet");
    assert!(message.contains("--node-id is required") && message.contains("none recorded yet"), "{message}");
    let config = with(Some("3")).expect("first start");
    xene_server::config::record_node_id(&config.data_dir, config.node_id).expect("record");
    assert_eq!(with(None).expect("restart without the flag").node_id, 3);
    assert_eq!(with(Some("3")).expect("restart with the same ID").node_id, 3);
    let message = with(Some("4")).expect_err("another ID on node 3's directory");
    assert!(
        message.contains("--node-id is 4, but the data directory")
            && message.contains("belongs to node 3")
            && message.contains("give --node-id 3"),
        "{message}"
    );
    // Recording again changes nothing.
    xene_server::config::record_node_id(&config.data_dir, 9).expect("record again");
    assert_eq!(with(None).expect("still 3").node_id, 3);
    std::fs::write(dir.path().join(xene_server::config::NODE_ID_FILE), "three\n").expect("write");
    let message = with(None).expect_err("unreadable record");
    assert!(message.contains("does not hold a node ID (\"three\")"), "{message}");
}

fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("server.yaml");
    std::fs::write(
        &file,
        "node_id: 7\ndata_dir: /from/file\ncluster_secret: file-secret-123\ngrpc_addr: 127.0.0.1:9000\nheartbeat_ms: 80\n",
    )
    .expect("write config");
    let file = file.display().to_string();

    // The file alone.
    let config = resolve(&["--config", &file]).expect("file config");
    assert_eq!(config.node_id, 7);
    assert_eq!(config.grpc_addr, "127.0.0.1:9000");
    assert_eq!(config.http_addr, "127.0.0.1:7401", "default");
    assert_eq!(config.advertise_grpc_addr, "127.0.0.1:9000", "advertised address defaults to the listener");
    assert_eq!(config.heartbeat.as_millis(), 80);
    assert_eq!(
        config.election_timeout.as_millis(),
        240,
        "unset, the election timeout is three heartbeats when over 150"
    );

    // The environment beats the file; a flag beats the environment.
    std::env::set_var("XENE_GRPC_ADDR", "127.0.0.1:9100");
    std::env::set_var("XENE_NODE_ID", "8");
    let config = resolve(&["--config", &file]).expect("env over file");
    assert_eq!(config.grpc_addr, "127.0.0.1:9100");
    assert_eq!(config.node_id, 8);
    let config = resolve(&["--config", &file, "--node-id", "9"]).expect("flag over env");
    assert_eq!(config.node_id, 9);
    std::env::remove_var("XENE_GRPC_ADDR");
    std::env::remove_var("XENE_NODE_ID");
}

fn bad_settings_are_refused_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--data-dir", "/d", "--cluster-secret", "long-enough"], "--node-id is required"),
        (&["--node-id", "0", "--data-dir", "/d", "--cluster-secret", "long-enough"], "--node-id must be 1 or more"),
        (&["--node-id", "1", "--cluster-secret", "long-enough"], "--data-dir is required"),
        (&["--node-id", "1", "--data-dir", "/d"], "--cluster-secret is required"),
        (&["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "short"], "at least 8 characters"),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--bootstrap", "--join", "a:1"],
            "exclude each other",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--log-format", "xml"],
            "--log-format",
        ),
        (
            &[
                "--node-id",
                "1",
                "--data-dir",
                "/d",
                "--cluster-secret",
                "long-enough",
                "--heartbeat-ms",
                "300",
                "--election-timeout-ms",
                "500",
            ],
            "more than twice --heartbeat-ms",
        ),
        (&["--config", "/nonexistent/xene.yaml"], "reading config file /nonexistent/xene.yaml"),
        (
            &["--node-id", "2", "--data-dir", "/d", "--cluster-secret", "long-enough", "--join", "https://a:1"],
            "--join names https://a:1, but this server has no --tls-cert",
        ),
        (
            &["--node-id", "2", "--data-dir", "/d", "--cluster-secret", "long-enough", "--join", "a"],
            "--join: \"a\" is not HOST:PORT",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--tls-cert", "/c.pem"],
            "--tls-cert is given without --tls-key",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--tls-client-ca", "/ca.pem"],
            "--tls-client-ca is given without --tls-cert and --tls-key",
        ),
        (
            &[
                "--node-id",
                "1",
                "--data-dir",
                "/d",
                "--cluster-secret",
                "long-enough",
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "--tls-cert /nonexistent/c.pem: No such file or directory",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough\nsecret"],
            "--cluster-secret must be printable ASCII",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--agent-ttl-ms", "50"],
            "--agent-ttl-ms is 50; it must be at least 200",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--run-history", "0"],
            "--run-history is 0; it must be at least 1",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--snapshot-logs", "0"],
            "--snapshot-logs is 0; it must be at least 1",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--grpc-addr", "0.0.0.0:7400"],
            "--grpc-addr (which --advertise-grpc-addr defaults to) is 0.0.0.0:7400, which others cannot dial; when listening on every interface, give --advertise-grpc-addr",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--advertise-http-addr", "[::]:80"],
            "--advertise-http-addr is [::]:80, which others cannot dial",
        ),
        (
            &[
                "--node-id",
                "1",
                "--data-dir",
                "/d",
                "--cluster-secret",
                "long-enough",
                "--advertise-grpc-addr",
                "https://xene-1:7400",
            ],
            "--advertise-grpc-addr is \"https://xene-1:7400\"; write HOST:PORT",
        ),
        (
            &["--node-id", "1", "--data-dir", "/d", "--cluster-secret", "long-enough", "--advertise-grpc-addr", "xene-1"],
            "--advertise-grpc-addr is \"xene-1\"; write HOST:PORT",
        ),
    ];
    for (args, expected) in cases {
        let message = resolve(args).expect_err("must be refused");
        assert!(message.contains(expected), "{args:?}: {message:?} should contain {expected:?}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "node_idd: 1\n").expect("write");
    let message = resolve(&["--config", &file.display().to_string()]).expect_err("unknown key");
    assert!(message.contains("node_idd"), "{message}");
}
