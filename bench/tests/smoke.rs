//! A smoke run of `xene-bench` with tiny sizes: on two workloads it must start what it needs,
//! clean up, and print the machine line and a table whose Xene column holds figures. No
//! timing is asserted: benchmarks report numbers, tests assert behaviour (PERF.md).

use std::process::Command;

use xene_chaos_tests::harness::bin_dir;

/// Runs `xene-bench --smoke WORKLOAD` and returns the table rows it printed.
fn smoke(workload: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_xene-bench"))
        .args(["--smoke", "--no-install", "--bin-dir"])
        .arg(bin_dir())
        .arg(workload)
        .output()
        .expect("run xene-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "xene-bench {workload} failed:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("machine: "), "no machine line:\n{stdout}");
    assert!(stdout.contains("| Workload | Xene | Peer or floor | Ratio | Target | Met? |"), "no table:\n{stdout}");
    stdout.lines().filter(|l| l.starts_with("| W") && !l.starts_with("| Workload")).map(String::from).collect()
}

/// The Xene column of a table row.
fn xene_figure(row: &str) -> String {
    row.split('|').nth(2).unwrap_or_default().trim().to_string()
}

#[test]
fn a_tiny_run_of_w1_and_w4_prints_a_table_with_figures() {
    let rows = smoke("w1");
    assert!(rows.iter().any(|r| r.starts_with("| W1 puts, 1 clients: writes/s")), "{rows:#?}");
    let rows = [rows, smoke("w4")].concat();
    assert!(rows.iter().any(|r| r.starts_with("| W4 ")), "{rows:#?}");
    for row in &rows {
        let figure = xene_figure(row);
        assert!(figure.chars().any(|c| c.is_ascii_digit()), "no figure in {row}");
        assert!(!figure.starts_with("error"), "{row}");
    }
}
