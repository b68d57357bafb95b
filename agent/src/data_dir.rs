//! The agent's data directory belongs to one running agent: [`lock`] holds an exclusive lock on
//! `DATA_DIR/agent.lock` for the life of the process, so a second agent started on the same
//! directory stops at once, before it can stop the first one's steps or sweep its workspaces.
//! [`sweep_work`] then removes what a previous run of the agent left in `DATA_DIR/work`:
//! the workspaces, outputs directories and webhook payloads of runs it never finished, and the
//! process executor's outputs files (`work/.outputs`), and nothing else (`work` may be a link
//! to a disk shared with other things).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::outputs::OUTPUTS_DIR;

/// The lock file's name in the data directory.
const LOCK_FILE: &str = "agent.lock";

/// What [`sweep_work`] keeps: the records of running steps, which `StepRecords` reads first.
pub const STEP_RECORDS: &str = ".steps";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("creating the data directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("opening the lock file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
    #[error(
        "another xene-agent{holder} is using the data directory {dir}; give each agent its own --data-dir, or stop that one first"
    )]
    InUse { dir: PathBuf, holder: String },
}

/// The data directory, held: dropping it (when the agent exits) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
}

/// Creates `dir` if needed and takes its lock, or says which process holds it.
pub fn lock(dir: &Path) -> Result<DataDirLock, DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| DataDirError::Create { path: dir.to_path_buf(), source })?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| DataDirError::Open { path: path.clone(), source })?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(DataDirError::InUse { dir: dir.to_path_buf(), holder });
        }
        Err((_, source)) => return Err(DataDirError::Lock { path, source }),
    };
    // Who holds it, for the message above; the lock is what counts, so a failure is no error.
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    Ok(DataDirLock { _file: file })
}

/// Whether `name` is one the runner gives what it keeps of a run in `work`: the run's ID
/// (`WORKFLOW.PIPELINE.` then 14 digits of time and 6 hex digits, `server/src/runs.rs`), alone
/// (the workspace) or followed by `.outputs` or `.event.json`.
fn is_run_artefact(name: &str) -> bool {
    let id = name.strip_suffix(".outputs").or_else(|| name.strip_suffix(".event.json")).unwrap_or(name);
    let mut parts = id.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(workflow), Some(pipeline), Some(stamp), None) => {
            xene_model::names::is_valid_name(workflow)
                && xene_model::names::is_valid_name(pipeline)
                && stamp.len() == 20
                && stamp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

/// Removes the runs' workspaces, outputs directories and payloads in `work`, and the outputs
/// files of the process executor ([`OUTPUTS_DIR`]), and says how many
/// entries went; call it with the lock held and after the leftover steps were stopped, before
/// any run starts. Anything else there is left alone. A failure to remove one entry is logged
/// and the rest still go.
pub fn sweep_work(work: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|name| is_run_artefact(name) || name == OUTPUTS_DIR) {
            continue;
        }
        let path = entry.path();
        // A link is removed, never followed.
        let result = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove what an earlier run of this agent left")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let held = lock(&data).expect("the first lock");
        let refused = lock(&data).expect_err("a second lock").to_string();
        assert!(refused.contains("another xene-agent"), "{refused}");
        assert!(refused.contains(&format!("(pid {})", std::process::id())), "{refused}");
        assert!(refused.contains(&data.display().to_string()), "{refused}");
        drop(held);
        lock(&data).expect("the lock again, once released");
    }

    #[test]
    fn the_sweep_removes_what_runs_left_and_nothing_else_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        let outside = dir.path().join("outside");
        let run = "hello.main.20261127003044ef7655";
        std::fs::create_dir_all(work.join(STEP_RECORDS)).expect("mkdir");
        std::fs::write(work.join(STEP_RECORDS).join("123"), "boot 1 2\n").expect("write");
        std::fs::create_dir_all(work.join(run).join("src")).expect("mkdir");
        std::fs::write(work.join(run).join("src").join("main.c"), "int main;").expect("write");
        std::fs::create_dir_all(work.join(format!("{run}.outputs"))).expect("mkdir");
        std::fs::write(work.join(format!("{run}.event.json")), "{}").expect("write");
        std::fs::create_dir_all(work.join(OUTPUTS_DIR)).expect("mkdir");
        std::fs::write(work.join(OUTPUTS_DIR).join("0"), "token=left over\n").expect("write");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("keep"), "mine").expect("write");
        std::os::unix::fs::symlink(&outside, work.join("ci.deploy.20261127003044ef7656")).expect("symlink");
        for other in ["notes.txt", "hello.main", "hello.main.2026112700304", "Hello.main.20261127003044ef7655"] {
            std::fs::write(work.join(other), "not a run's").expect("write");
        }

        assert_eq!(sweep_work(&work), 5);
        let mut left: Vec<String> = std::fs::read_dir(&work)
            .expect("read")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".steps", "Hello.main.20261127003044ef7655", "hello.main", "hello.main.2026112700304", "notes.txt"]
        );
        assert!(work.join(STEP_RECORDS).join("123").exists());
        assert!(outside.join("keep").exists(), "a link's target is not the agent's");
        assert_eq!(sweep_work(&dir.path().join("missing")), 0);
    }
}
