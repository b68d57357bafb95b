//! The process executor (DESIGN §9.4): each step is `/bin/sh -c RUN` in the run's workspace
//! directory, in its own process group so a timeout or cancellation stops everything it
//! started: SIGTERM, a grace period, then SIGKILL (§9.6). Output goes through pipes of
//! [`PIPE_BYTES`], is read in blocks of up to [`BLOCK_BYTES`] into buffers reused for the whole
//! step, and is split into lines ([`LineBuffer`]) stamped with the time their block was read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// What a step's reads start with: most steps print a few lines, and a thousand one-line
/// tasks should not each zero two blocks of [`BLOCK_BYTES`] (PERF W5). A read that fills the
/// buffer doubles it, up to [`BLOCK_BYTES`].
const FIRST_BLOCK_BYTES: usize = 8 * 1024;

/// A buffer for a pipe's reads, reused for the whole step, that grows while reads fill it.
struct Block(Vec<u8>);

impl Block {
    fn new() -> Self {
        Block(vec![0; FIRST_BLOCK_BYTES])
    }

    /// After a read of `n` bytes: a full buffer means more is waiting, so the next read may
    /// take more.
    fn read(&mut self, n: usize) {
        if n == self.0.len() && n < BLOCK_BYTES {
            self.0.resize((n * 2).min(BLOCK_BYTES), 0);
        }
    }
}

/// How long a step runs before its group is noted on disk for an agent started after a crash
/// ([`StepRecords`]): most steps end sooner, and a file written and removed for each of a
/// thousand one-line tasks cost a 1,000-task DAG a tenth of its time (PERF W5).
const RECORD_AFTER: Duration = Duration::from_millis(250);

/// How long a step's output is still read after its shell has exited: lines a background
/// process, or the kernel's pipe buffer, delivers a moment late are kept, and a background
/// process holding the pipes open cannot keep the step from ending (as GitHub Actions does).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Runs one step, sending every line of its output to `sink`; its process group joins the
/// task attempt's `groups`.
pub async fn run_step(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    groups: &mut TaskGroups<'_>,
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
    if let Some(pid) = pid {
        groups.note(pid);
    }
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return StepEnd::NotStarted;
    };
    widen(&stdout);
    widen(&stderr);
    let (mut out, mut err) = (LineBuffer::for_sink(sink), LineBuffer::for_sink(sink));
    let (mut out_block, mut err_block) = (Block::new(), Block::new());
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
    let record_at = tokio::time::sleep(RECORD_AFTER);
    tokio::pin!(record_at);
    let mut recorded = pid.is_none();
    // The step ends when its shell does, not when its output closes: what the step left in
    // the background may hold the pipes open for as long as it runs. Once the shell has
    // exited, output still arriving is read for up to [`DRAIN_AFTER_EXIT`]; set when it has.
    let mut status: Option<std::io::Result<std::process::ExitStatus>> = None;
    let drain = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain);
    // Reading into a slice is cancel safe: a read that loses the race has taken nothing; and
    // so is waiting for the child.
    while status.is_none() || out_open || err_open {
        tokio::select! {
            read = stdout.read(&mut out_block.0), if out_open => match read {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    let ts = now_ms();
                    out.push_to(&out_block.0[..n], "stdout", ts, sink);
                    out_block.read(n);
                }
            },
            read = stderr.read(&mut err_block.0), if err_open => match read {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let ts = now_ms();
                    err.push_to(&err_block.0[..n], "stderr", ts, sink);
                    err_block.read(n);
                }
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited);
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            // The shell has exited and something it left behind still holds its output: the
            // step is over. Those processes run on until the task attempt ends (see
            // [`TaskGroups`]), as a later step may use them; what they print from now on is
            // read and dropped, so that they neither block on a full pipe nor die of SIGPIPE.
            _ = &mut drain, if status.is_some() => break,
            _ = until_due(sink.due()) => sink.flush(),
            _ = &mut record_at, if !recorded => {
                recorded = true;
                if let Some(pid) = pid {
                    groups.record(pid);
                }
            }
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
    if out_open {
        groups.discard(stdout);
    }
    if err_open {
        groups.discard(stderr);
    }
    let ts = now_ms();
    out.finish(|text| sink.line("stdout", text, ts));
    err.finish(|text| sink.line("stderr", text, ts));
    if let Some(end) = ended {
        return end;
    }
    match status {
        Some(Ok(status)) => StepEnd::Exited(status.code().unwrap_or(128 + status_signal(&status))),
        Some(Err(_)) | None => StepEnd::NotStarted,
    }
}

/// Where the process executor notes the steps it runs (a file per step's process group, named
/// by its ID and holding the boot, the start time of its leader and the agent's session), so
/// that an agent started again after a crash stops what the dead one left running (DESIGN
/// §9.3; the container executor finds its leftovers by label). A step's processes die with their agent only if
/// they write to their closed output; one that never writes would otherwise run on.
pub struct StepRecords {
    dir: PathBuf,
}

impl StepRecords {
    pub fn new(dir: PathBuf) -> Self {
        StepRecords { dir }
    }

    /// The groups of one task attempt's steps.
    pub fn task(&self) -> TaskGroups<'_> {
        TaskGroups { records: self, noted: Vec::new(), discarding: Vec::new() }
    }

    /// Writes the record of the step whose process group `pid` leads; its path.
    fn write(&self, pid: u32, noted: Noted) -> Option<PathBuf> {
        let path = self.dir.join(pid.to_string());
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&path, format!("{} {} {}\n", boot_id(), noted.start, noted.session)));
        match written {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not note a running step; a crash of this agent would leave it running");
                None
            }
        }
    }

    /// SIGKILLs the process groups of the noted steps that still run, forgets every record,
    /// and says how many groups it stopped. A group is only signalled when its record is of
    /// this boot and it is still the one noted ([`kill_noted`]).
    pub fn stop_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let boot = boot_id();
        let mut stopped = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let pid = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()).filter(|pid| *pid > 1);
            let noted = std::fs::read_to_string(&path).unwrap_or_default();
            let mut fields = noted.split_whitespace();
            let noted_boot = fields.next();
            let start = fields.next().and_then(|t| t.parse::<u64>().ok());
            let session = fields.next().and_then(|t| t.parse::<i32>().ok());
            if let (Some(pid), Some(start), Some(session)) = (pid, start, session) {
                if noted_boot == Some(boot.as_str()) && kill_noted(pid, Noted { start, session }) {
                    stopped += 1;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        stopped
    }
}

/// The process groups of one task attempt's steps. When the attempt ends (this is dropped),
/// what is left of them — processes a step put in the background — is SIGKILLed and their
/// records forgotten, as removing the task's container does for the container executor; a
/// later step of the same attempt may still use what an earlier one started.
pub struct TaskGroups<'a> {
    records: &'a StepRecords,
    /// Each step's group, who led it, and its record once written.
    noted: Vec<(u32, Noted, Option<PathBuf>)>,
    /// Readers that drop the output of what ended steps left running; stopped with them.
    discarding: Vec<tokio::task::AbortHandle>,
}

impl TaskGroups<'_> {
    /// A step's group, as it starts: kept in memory.
    fn note(&mut self, pid: u32) {
        if let Some(stat) = Stat::of(pid) {
            self.noted.push((pid, Noted { start: stat.start, session: stat.session }, None));
        }
    }

    /// Reads and drops what comes out of `pipe` until it closes or the attempt ends.
    fn discard(&mut self, mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let reader = tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut pipe, &mut sink).await;
        });
        self.discarding.push(reader.abort_handle());
    }

    /// A step's group, once it has run a while: noted on disk too.
    fn record(&mut self, pid: u32) {
        if let Some((_, noted, record @ None)) = self.noted.iter_mut().find(|(p, _, _)| *p == pid) {
            *record = self.records.write(pid, *noted);
        }
    }
}

impl Drop for TaskGroups<'_> {
    fn drop(&mut self) {
        for (pid, noted, record) in self.noted.drain(..) {
            if let Ok(pid) = i32::try_from(pid) {
                kill_noted(pid, noted);
            }
            if let Some(path) = record {
                let _ = std::fs::remove_file(path);
            }
        }
        for reader in self.discarding.drain(..) {
            reader.abort();
        }
    }
}

/// Who a step's group leader was: its start time, and its session (the agent's, which the
/// step's processes inherit).
#[derive(Debug, Clone, Copy)]
struct Noted {
    start: u64,
    session: i32,
}

/// SIGKILLs process group `pid` if it is still the one noted, and says whether it did. While
/// the leader lives, its start time tells. Once it is gone the group, if any, is the noted one
/// unless its ID was reused by a leader that has exited in turn: the group is only signalled
/// when every member is in the noted session (a process ID is not reused while a group of that
/// ID has members, and the agent's own steps are the only groups in its session).
fn kill_noted(pid: i32, noted: Noted) -> bool {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if pid <= 1 {
        return false;
    }
    let group = Pid::from_raw(pid);
    let ours = match Stat::of(pid as u32) {
        Some(leader) => leader.start == noted.start,
        // Signal 0 first: the group is usually gone with its leader, and then /proc is not read.
        None => killpg(group, None).is_ok() && group_in_session(pid, noted.session),
    };
    ours && killpg(group, Signal::SIGKILL).is_ok()
}

/// Whether group `pgid` has members and all of them are in session `session`.
fn group_in_session(pgid: i32, session: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    let mut members = 0;
    for entry in entries.flatten() {
        let Some(stat) = entry.file_name().to_str().and_then(|name| name.parse().ok()).and_then(Stat::of) else {
            continue;
        };
        if stat.group == pgid {
            if stat.session != session {
                return false;
            }
            members += 1;
        }
    }
    members > 0
}

/// What `/proc/PID/stat` says of a process: its group (field 5), session (6) and start time
/// in clock ticks after boot (22).
struct Stat {
    group: i32,
    session: i32,
    start: u64,
}

impl Stat {
    fn of(pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Stat {
            group: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }
}

/// This boot's identity.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
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

    /// A step left running by a dead agent (its group noted) is stopped by the next agent;
    /// a record whose process ID now names another process (another start time) is not acted
    /// on, and every record is forgotten.
    #[test]
    fn leftover_steps_are_stopped_and_strangers_spared() {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        let dir = tempfile::tempdir().expect("temporary directory");
        let records = StepRecords::new(dir.path().join("steps"));
        let spawn = || {
            std::process::Command::new("/bin/sh")
                .args(["-c", "sleep 60 & wait"])
                .process_group(0)
                .spawn()
                .expect("spawn sh")
        };
        let (mut left, mut stranger) = (spawn(), spawn());
        let noted = |pid: u32| Stat::of(pid).map(|s| Noted { start: s.start, session: s.session }).expect("stat");
        assert!(records.write(left.id(), noted(left.id())).is_some());
        let mut wrong = noted(stranger.id());
        wrong.start += 1;
        assert!(records.write(stranger.id(), wrong).is_some(), "a record whose PID now names another process");
        assert_eq!(records.stop_leftovers(), 1);
        assert_eq!(left.wait().expect("wait").signal(), Some(9), "the leftover was SIGKILLed");
        assert_eq!(stranger.try_wait().expect("try_wait"), None, "the stranger runs on");
        assert_eq!(std::fs::read_dir(dir.path().join("steps")).expect("dir").count(), 0, "records forgotten");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(stranger.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = stranger.wait();
    }

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
        let dir = tempfile::tempdir().expect("temporary directory");
        let records = StepRecords::new(dir.path().join("steps"));
        let mut groups = records.task();
        let end = run_step(script, dir.path(), &BTreeMap::new(), None, &cancel, &mut groups, &mut sink).await;
        assert_eq!(end, StepEnd::Exited(0));
        assert_eq!(err, 200_000);
        assert_eq!(out.len(), 300_000);
        assert!(out.iter().enumerate().all(|(i, n)| *n == i as u64 + 1), "stdout lines out of order or altered");
    }

    /// Whether a process of group `pgid` runs (zombies, which need not be reaped at once, do not count).
    fn group_runs(pgid: u32) -> bool {
        let Ok(entries) = std::fs::read_dir("/proc") else { return false };
        entries.flatten().any(|entry| {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
    }

    /// A step ends when its shell exits, with the shell's status, even while what it left in
    /// the background holds its output open (`redis-server &`); a line that comes a moment
    /// after the shell exits is kept. What was left runs on until the attempt ends, printing
    /// as it likes (its output is dropped, not refused with SIGPIPE).
    #[tokio::test]
    async fn a_step_ends_with_its_shell_while_a_background_process_holds_its_output() {
        type Lines = &'static [(&'static str, &'static str)];
        let cases: [(&str, StepEnd, Lines); 3] = [
            (
                "sleep 30 & (sleep 0.3; echo late >&2) & echo hi",
                StepEnd::Exited(0),
                &[("stdout", "hi"), ("stderr", "late")],
            ),
            ("sleep 30 & echo bye; exit 3", StepEnd::Exited(3), &[("stdout", "bye")]),
            ("(while echo tick; do sleep 0.05; done) & exit 0", StepEnd::Exited(0), &[]),
        ];
        for (script, want, want_lines) in cases {
            let dir = tempfile::tempdir().expect("temporary directory");
            let records = StepRecords::new(dir.path().join("steps"));
            let mut groups = records.task();
            let mut lines: Vec<(&'static str, String)> = Vec::new();
            let mut sink = |stream: &'static str, text: &str, _ts_ms: u64| lines.push((stream, text.to_string()));
            let cancel = CancellationToken::new();
            let began = std::time::Instant::now();
            let env = BTreeMap::new();
            let step = run_step(script, dir.path(), &env, None, &cancel, &mut groups, &mut sink);
            let end = tokio::time::timeout(Duration::from_secs(10), step).await;
            let took = began.elapsed();
            assert_eq!(end, Ok(want), "{script:?}: the step must end with its shell (after {took:?})");
            assert!(took < Duration::from_secs(5), "{script:?} took {took:?}");
            let got: Vec<(&str, &str)> = lines
                .iter()
                .filter(|(_, text)| text != "tick")
                .map(|(stream, text)| (*stream, text.as_str()))
                .collect();
            assert_eq!(got, want_lines, "{script:?}");
            let leader = groups.noted.first().map(|(leader, _, _)| *leader).expect("the step's group is noted");
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(group_runs(leader), "{script:?}: what the step left in the background runs on");
            drop(groups);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while group_runs(leader) {
                assert!(std::time::Instant::now() < deadline, "{script:?}: the background sleep was not stopped");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// A group whose leader is gone is only signalled while all its members are in the noted
    /// session: the agent's steps share the agent's; a group elsewhere is left alone.
    #[test]
    fn a_leaderless_group_in_another_session_is_left_alone() {
        use std::os::unix::process::CommandExt;
        let ours = nix::unistd::getsid(None).expect("getsid").as_raw();
        let quiet = |command: &mut std::process::Command| {
            command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn")
        };
        let mut own = quiet(std::process::Command::new("/bin/sh").args(["-c", "sleep 60"]).process_group(0));
        let mut other = quiet(std::process::Command::new("setsid").args(["sleep", "60"]));
        std::thread::sleep(Duration::from_millis(200));
        let (own_id, other_id) = (own.id() as i32, other.id() as i32);
        assert!(group_in_session(own_id, ours), "a group of ours");
        assert!(!group_in_session(other_id, ours), "a group in its own session is not ours");
        assert!(!group_in_session(i32::MAX, ours), "no such group");
        for child in [&mut own, &mut other] {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// What a step leaves in the background outlives the step (a later step may use it) and
    /// is stopped when the task attempt ends.
    #[tokio::test]
    async fn background_processes_are_stopped_when_the_attempt_ends() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let records = StepRecords::new(dir.path().join("steps"));
        let mut groups = records.task();
        let mut pid = None;
        let mut sink = |_: &'static str, text: &str, _ts_ms: u64| pid = text.parse::<u32>().ok();
        let cancel = CancellationToken::new();
        let script = "sleep 60 > /dev/null 2>&1 & echo $!; sleep 0.4";
        let end = run_step(script, dir.path(), &BTreeMap::new(), None, &cancel, &mut groups, &mut sink).await;
        assert_eq!(end, StepEnd::Exited(0));
        let pid = pid.expect("the step printed its background PID");
        let running = || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        let leader = groups.noted.first().map(|(leader, _, _)| *leader).expect("the step's group is noted");
        assert!(Stat::of(leader).is_none(), "the step's shell has exited and was reaped");
        assert!(running(), "the background process outlives its step");
        let steps = dir.path().join("steps");
        assert_eq!(std::fs::read_dir(&steps).expect("dir").count(), 1, "noted while the attempt runs");
        drop(groups);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running() {
            assert!(std::time::Instant::now() < deadline, "the background process was not stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_dir(&steps).expect("dir").count(), 0, "records forgotten");
    }
}
