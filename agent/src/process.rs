//! The process executor (DESIGN §9.4): each step is `/bin/sh -c RUN` in the run's workspace
//! directory, in its own process group so a timeout or cancellation stops everything it
//! started: SIGTERM, a grace period, then SIGKILL (§9.6). Output goes through pipes of
//! [`PIPE_BYTES`], is read in blocks of up to [`BLOCK_BYTES`] into buffers reused for the whole
//! step, and is split into lines ([`LineBuffer`]) stamped with the time their block was read.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::lines::{now_ms, until_due, LineBuffer, StepOutput};

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    Exited(i32),
    TimedOut,
    Cancelled,
    /// It could not be started at all.
    NotStarted,
}

/// How long a step gets to stop after SIGTERM.
pub const GRACE: Duration = Duration::from_secs(5);

/// The capacity asked for each output pipe (Linux's default is 64 KiB; 1 MiB is the default
/// ceiling for unprivileged processes, `/proc/sys/fs/pipe-max-size`). A step printing fast
/// then blocks, and wakes the agent, once per megabyte instead of once per 64 KiB (PERF W9).
const PIPE_BYTES: i32 = 1 << 20;

/// The most read from a pipe at once.
const BLOCK_BYTES: usize = 256 * 1024;

/// Runs one step, sending every line of its output to `sink`.
pub async fn run_step(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    sink: &mut impl StepOutput,
) -> StepEnd {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            sink.note(&format!("could not start /bin/sh: {e}"));
            return StepEnd::NotStarted;
        }
    };
    let pid = child.id();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return StepEnd::NotStarted;
    };
    widen(&stdout);
    widen(&stderr);
    let (mut out, mut err) = (LineBuffer::default(), LineBuffer::default());
    let (mut out_block, mut err_block) = (vec![0u8; BLOCK_BYTES], vec![0u8; BLOCK_BYTES]);
    let (mut out_open, mut err_open) = (true, true);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let mut ended: Option<StepEnd> = None;
    // Reading into a slice is cancel safe: a read that loses the race has taken nothing.
    while out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_block), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    let ts = now_ms();
                    out.push(&out_block[..n], |text| sink.line("stdout", text, ts));
                }
            },
            read = stderr.read(&mut err_block), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let ts = now_ms();
                    err.push(&err_block[..n], |text| sink.line("stderr", text, ts));
                }
            },
            _ = until_due(sink.due()) => sink.flush(),
            _ = &mut sleep_until, if ended.is_none() => {
                ended = Some(StepEnd::TimedOut);
                stop_group(pid, &mut child).await;
            }
            _ = cancel.cancelled(), if ended.is_none() => {
                ended = Some(StepEnd::Cancelled);
                stop_group(pid, &mut child).await;
            }
        }
    }
    let ts = now_ms();
    out.finish(|text| sink.line("stdout", text, ts));
    err.finish(|text| sink.line("stderr", text, ts));
    let status = child.wait().await;
    if let Some(end) = ended {
        return end;
    }
    match status {
        Ok(status) => StepEnd::Exited(status.code().unwrap_or(128 + status_signal(&status))),
        Err(_) => StepEnd::NotStarted,
    }
}

/// Asks for [`PIPE_BYTES`] of capacity in `pipe`. A refusal (a lower `pipe-max-size`, or a
/// user over its pipe quota) leaves the pipe as it was, which works, only slower.
fn widen(pipe: &impl std::os::fd::AsFd) {
    use nix::fcntl::{fcntl, FcntlArg};
    if let Err(e) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
        tracing::debug!(error = %e, "could not widen a step's output pipe");
    }
}

fn status_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}

/// SIGTERM to the step's process group, then SIGKILL after the grace period.
async fn stop_group(pid: Option<u32>, child: &mut tokio::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let Some(pid) = pid else { return };
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Much more than a pipe holds, on both pipes at once: every line arrives, in order per
    /// stream, through the reused read buffers.
    #[tokio::test]
    async fn a_step_printing_fast_on_both_pipes_loses_no_line() {
        let mut out = Vec::new();
        let mut err = 0u64;
        let mut sink = |stream: &'static str, text: &str, _ts_ms: u64| match stream {
            "stdout" => out.push(text.parse::<u64>().unwrap_or(0)),
            _ => err += 1,
        };
        let script = "seq 1 300000 & seq 1 200000 >&2; wait";
        let cancel = CancellationToken::new();
        let end = run_step(script, &std::env::temp_dir(), &BTreeMap::new(), None, &cancel, &mut sink).await;
        assert_eq!(end, StepEnd::Exited(0));
        assert_eq!(err, 200_000);
        assert_eq!(out.len(), 300_000);
        assert!(out.iter().enumerate().all(|(i, n)| *n == i as u64 + 1), "stdout lines out of order or altered");
    }
}
