//! The compose deployment end to end (issue "Quick start and deployment"): runs
//! `deploy/compose-test.sh`, which builds the images from the binaries under test, starts three
//! server containers and two agent containers, runs a workflow to `Success`, stops the leader's
//! container, runs another workflow to `Success`, and tears everything down.
//!
//! It needs Docker (CI has it) and fails, rather than passes, when Docker cannot be reached.

use std::path::Path;
use std::process::Command;

use xene_chaos_tests::harness::bin_dir;

#[test]
fn compose_cluster_runs_workflows_through_the_loss_of_its_leader() {
    let docker = Command::new("docker").arg("info").output();
    match &docker {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "Docker is not reachable (`docker info` failed): this test needs a running Docker engine\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("the docker CLI cannot be run ({e}): this test needs Docker"),
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("invariant: chaos-tests/ is in the repository");
    let output = Command::new("bash")
        .arg(root.join("deploy/compose-test.sh"))
        .env("XENE_BIN_DIR", bin_dir())
        .output()
        .expect("run deploy/compose-test.sh");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "deploy/compose-test.sh failed ({}); its output is above", output.status);
}
