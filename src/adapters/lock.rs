//! File locks (the standard library's `File::try_lock`, an exclusive `flock(2)` on
//! Linux): one per pass, so two copies of a pass never overlap.
//!
//! A lock is held by an open file description; the kernel drops it when the process
//! dies, so a crashed pass never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is held by another process", .0.display())]
    Busy(PathBuf),
    /// The lock file could not be opened.
    #[error("opening lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Returns the lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// A lock file on disk.
pub struct LockFile;

impl LockFile {
    /// Takes the exclusive lock at `path` without waiting, creating the file (and its
    /// directory) when needed.
    ///
    /// # Errors
    /// [`LockError::Busy`] when another process holds it; [`LockError::Io`] otherwise.
    pub fn try_acquire(path: &Path) -> Result<LockGuard, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => Ok(LockGuard {
                file,
                path: path.to_path_buf(),
            }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy(path.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_busy_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/reap.lock");
        let first = LockFile::try_acquire(&path).unwrap();
        assert!(matches!(
            LockFile::try_acquire(&path),
            Err(LockError::Busy(_))
        ));
        drop(first);
        assert!(LockFile::try_acquire(&path).is_ok());
    }

    #[test]
    fn an_unwritable_place_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            LockFile::try_acquire(&file.join("x.lock")),
            Err(LockError::Io { .. })
        ));
    }
}
