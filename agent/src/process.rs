//! The process executor (DESIGN §9.4): each step is `/bin/sh -c RUN` in the run's workspace
//! directory, in its own process group so a timeout or cancellation stops everything it
//! started: SIGTERM, a grace period, then SIGKILL (§9.6). Output is read in blocks of up to
//! 64 KiB and split into lines ([`LineBuffer`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::lines::LineBuffer;

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

/// Runs one step, calling `line(stream, text)` for every line of output.
pub async fn run_step(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    mut line: impl FnMut(&'static str, &str),
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
            line("xene", &format!("could not start /bin/sh: {e}"));
            return StepEnd::NotStarted;
        }
    };
    let pid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return StepEnd::NotStarted;
    };
    let mut output = futures::stream::select(blocks(stdout, Pipe::Out), blocks(stderr, Pipe::Err));
    let (mut out, mut err) = (LineBuffer::default(), LineBuffer::default());
    let mut open = true;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let mut ended: Option<StepEnd> = None;
    while open {
        tokio::select! {
            block = output.next() => match block {
                Some((Pipe::Out, bytes)) => out.push(&bytes, |text| line("stdout", text)),
                Some((Pipe::Err, bytes)) => err.push(&bytes, |text| line("stderr", text)),
                None => open = false,
            },
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
    out.finish(|text| line("stdout", text));
    err.finish(|text| line("stderr", text));
    let status = child.wait().await;
    if let Some(end) = ended {
        return end;
    }
    match status {
        Ok(status) => StepEnd::Exited(status.code().unwrap_or(128 + status_signal(&status))),
        Err(_) => StepEnd::NotStarted,
    }
}

/// Which pipe a block came from.
#[derive(Clone, Copy)]
enum Pipe {
    Out,
    Err,
}

/// The blocks read from `pipe` until it closes (end of file or a read error).
fn blocks<R: AsyncRead + Unpin>(pipe: R, stream: Pipe) -> impl Stream<Item = (Pipe, BytesMut)> + Unpin {
    Box::pin(futures::stream::unfold(pipe, move |mut pipe| async move {
        let mut block = BytesMut::with_capacity(64 * 1024);
        match pipe.read_buf(&mut block).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(((stream, block), pipe)),
        }
    }))
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
