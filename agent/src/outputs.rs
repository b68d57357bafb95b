//! The process executor's outputs files (`$XENE_OUTPUT`, DESIGN §10): one per task attempt,
//! empty when the attempt starts, read after each of its steps.
//!
//! The files are kept in `work/.outputs` and reused, emptied in place: a task attempt takes
//! one and gives it back, emptied, when it ends (after what its steps left running was
//! stopped), so an agent has at most as many as it runs tasks at once, and what a step wrote
//! stays on disk no longer than its attempt. A file found written to while it was free (by a
//! process that escaped its step's group) is not given out again. The agent's start-up sweep
//! removes the directory ([`crate::data_dir::sweep_work`]).
//! Making a new file costs far more than emptying one on a file system that looks past its
//! recently deleted inodes to allocate another (ext4 without a journal, as on the benchmark
//! machine): a 1,000-task run that made and removed a file per task spent three quarters of
//! its agent's time there (PERF W5).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use xene_model::status::ErrorReason;

/// The directory of the outputs files in the agent's `work`.
pub const OUTPUTS_DIR: &str = ".outputs";

/// The agent's outputs files, the free ones ready to be taken.
pub struct OutputFiles {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    /// Files named so far (named `0`, `1`, ...).
    named: AtomicUsize,
}

/// An empty outputs file held by one task attempt; back to its pool when dropped.
pub struct OutputFile {
    path: PathBuf,
    pool: Arc<OutputFiles>,
}

impl OutputFiles {
    pub fn new(dir: PathBuf) -> Arc<Self> {
        Arc::new(OutputFiles { dir, free: Mutex::default(), named: AtomicUsize::new(0) })
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty outputs file for one task attempt: a free one, or a new one. A free file that
    /// is no longer empty, or no longer there as it was left, is dropped for a new name; only
    /// a failure to make a new file is an error.
    pub fn take(self: &Arc<Self>) -> std::io::Result<OutputFile> {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(path) = free {
            match still_empty(&path) {
                Ok(true) => return Ok(OutputFile { path, pool: Arc::clone(self) }),
                Ok(false) => {
                    tracing::warn!(
                        path = %path.display(),
                        "an outputs file was written to while no task held it (a process a step left \
                         running outside its group?); it is not used again"
                    );
                    // Whatever it now is, its content is no task's.
                    remove_any(&path);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "an outputs file is gone; making another"),
            }
        }
        // The directory itself, never a link to one that a step put in its place.
        match std::fs::symlink_metadata(&self.dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&self.dir)?;
                std::fs::create_dir_all(&self.dir)?;
            }
            Err(_) => std::fs::create_dir_all(&self.dir)?,
        }
        let path = self.dir.join(self.named.fetch_add(1, Ordering::Relaxed).to_string());
        empty_outputs_file(&path)?;
        Ok(OutputFile { path, pool: Arc::clone(self) })
    }
}

/// Whether the file at `path` is the empty regular file it was left as: the directory still a
/// directory, not a link.
fn still_empty(path: &Path) -> std::io::Result<bool> {
    let dir = path.parent().map(std::fs::symlink_metadata).transpose()?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(dir.is_some_and(|d| d.is_dir()) && meta.is_file() && meta.nlink() == 1 && meta.len() == 0)
}

impl OutputFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputFile {
    /// Empties the file and gives it back; one that cannot be emptied is removed instead.
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        match empty_outputs_file(&path) {
            Ok(()) => self.pool.free.lock().unwrap_or_else(|p| p.into_inner()).push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not empty an outputs file; removing it");
                remove_any(&path);
            }
        }
    }
}

/// Makes `path` an empty regular file. A regular file with no other name is emptied in place;
/// anything else a step may have left there (a symbolic link, a hard link to another file, a
/// directory, a FIFO) is removed, never followed or emptied, and a new file made.
fn empty_outputs_file(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.nlink() == 1 => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(path);
            // Checked again on what was opened: the name may have changed in between.
            if let Ok(file) = file {
                let opened = file.metadata()?;
                if opened.is_file() && opened.nlink() == 1 && opened.ino() == meta.ino() {
                    return file.set_len(0);
                }
            }
            gone(std::fs::remove_file(path))?;
        }
        Ok(meta) if meta.is_dir() => gone(std::fs::remove_dir_all(path))?,
        Ok(_) => gone(std::fs::remove_file(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new().write(true).create_new(true).open(path).map(|_| ())
}

/// Removes whatever is at `path` (a link itself, never what it points to), as far as it can.
fn remove_any(path: &Path) {
    let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
}

/// A removal that found nothing to remove did what was asked.
fn gone(removed: std::io::Result<()>) -> std::io::Result<()> {
    match removed {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The outputs file at `path`, at most `limit + 1` bytes of it (so that more is seen as too
/// much); empty when the step removed it. Anything but a regular file (a directory, a symlink,
/// a FIFO a step made in its place) is refused rather than followed or waited on.
pub fn read_outputs_file(path: &Path, limit: usize) -> Result<Vec<u8>, (ErrorReason, String)> {
    let failed = |what: String| (ErrorReason::Failed, format!("$XENE_OUTPUT ({}): {what}", path.display()));
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(failed("a step replaced it with a symbolic link; append to the file instead".into()))
        }
        Err(e) => return Err((ErrorReason::InfrastructureError, format!("reading {}: {e}", path.display()))),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(failed(
                "a step replaced it with something other than a file; append to the file instead".into(),
            ))
        }
        Err(e) => return Err((ErrorReason::InfrastructureError, format!("reading {}: {e}", path.display()))),
    }
    let mut text = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| (ErrorReason::InfrastructureError, format!("reading {}: {e}", path.display())))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outputs_file_is_read_as_a_plain_file_only_and_replaced_fresh() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("task");
        assert_eq!(read_outputs_file(&path, 64), Ok(Vec::new()), "removed by a step: nothing written");
        std::fs::write(&path, vec![b'x'; 100]).expect("write");
        assert_eq!(read_outputs_file(&path, 10).map(|t| t.len()), Ok(11), "at most limit + 1 bytes");

        // A symbolic link or a directory a step put in its place is refused, not followed,
        // and the next attempt's fresh file replaces it without touching what it pointed to.
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me").expect("write");
        std::fs::remove_file(&path).expect("remove");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let (reason, message) = read_outputs_file(&path, 64).expect_err("a link");
        assert_eq!(reason, ErrorReason::Failed);
        assert!(message.contains("symbolic link"), "{message}");
        empty_outputs_file(&path).expect("reset over a link");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
        assert_eq!(std::fs::read(&path).expect("read"), b"");

        // A hard link to another file is replaced too, not emptied.
        std::fs::remove_file(&path).expect("remove");
        std::fs::hard_link(&target, &path).expect("hard link");
        empty_outputs_file(&path).expect("reset over a hard link");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
        assert_eq!(std::fs::read(&path).expect("read"), b"");

        std::fs::remove_file(&path).expect("remove");
        std::fs::create_dir(&path).expect("dir");
        let (reason, message) = read_outputs_file(&path, 64).expect_err("a directory");
        assert_eq!(reason, ErrorReason::Failed);
        assert!(message.contains("something other than a file"), "{message}");
        empty_outputs_file(&path).expect("reset over a directory");
        assert!(std::fs::metadata(&path).expect("stat").is_file());
    }

    /// A file given back is emptied in place for the next attempt (the same inode, no new
    /// file), and attempts at once hold files of their own.
    #[test]
    fn outputs_files_are_reused_emptied_and_never_shared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = OutputFiles::new(dir.path().join(OUTPUTS_DIR));
        let first = pool.take().expect("take");
        let second = pool.take().expect("take");
        assert_ne!(first.path(), second.path());
        std::fs::write(first.path(), "secret=1\n").expect("write");
        let (path, inode) = (first.path().to_path_buf(), std::fs::metadata(first.path()).expect("stat").ino());
        drop(first);
        assert_eq!(std::fs::read(&path).expect("read"), b"", "emptied as soon as the attempt gave it back");
        let again = pool.take().expect("take");
        assert_eq!(again.path(), path);
        assert_eq!(std::fs::metadata(again.path()).expect("stat").ino(), inode, "emptied in place");
        assert_eq!(std::fs::read_dir(dir.path().join(OUTPUTS_DIR)).expect("dir").count(), 2);

        // Written to while free (a process that outlived its task): not given out again.
        drop(again);
        std::fs::write(&path, "late=1\n").expect("write");
        let fresh = pool.take().expect("take");
        assert_ne!(fresh.path(), path);
        assert!(!path.exists(), "the file written to while free is removed");
        assert_eq!(std::fs::read(fresh.path()).expect("read"), b"");

        // The directory removed, or replaced by a link, while files were free: a new file in a
        // real directory, and what the link pointed to untouched.
        drop((fresh, second));
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("9"), "keep me").expect("write");
        std::fs::remove_dir_all(dir.path().join(OUTPUTS_DIR)).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join(OUTPUTS_DIR)).expect("symlink");
        let taken = pool.take().expect("take");
        assert!(std::fs::symlink_metadata(dir.path().join(OUTPUTS_DIR)).expect("stat").is_dir());
        assert_eq!(std::fs::read(taken.path()).expect("read"), b"");
        assert_eq!(std::fs::read_to_string(elsewhere.join("9")).expect("read"), "keep me");
    }
}
