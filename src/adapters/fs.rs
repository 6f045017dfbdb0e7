//! Files written so that a reader sees the old contents or the new, never half, and a
//! crash or power loss right after the call keeps the new: the one atomic writer every
//! pass uses (artefacts, reports, the merge lease, post-deploy windows, the reconcile
//! cursor, the Prometheus file).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Makes everything this process (and what it starts) creates from now on private to its
/// user, whatever umask the caller had: files `0600`, directories `0700`. `main` calls it
/// first thing; the database holds raw Plane payloads.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Makes `path` private: a file `0600`; a directory `0700` with everything under it
/// (directories `0700`, files `0600`). Symbolic links are neither changed nor followed;
/// a missing path is nothing to do. `init` uses it on what earlier runs left behind.
///
/// # Errors
/// When a mode cannot be read or set.
pub fn make_private(path: &Path) -> Result<()> {
    restrict(path, &|is_dir, _| if is_dir { 0o700 } else { 0o600 })
}

/// Takes every permission of other users (neither owner nor group) from `path` and
/// everything under it, and keeps the rest: the owner's and the group's bits and a
/// directory's setgid. `init` uses it on the artefacts when agents run as a user of their
/// own (`ORCH_AGENT_USER`), whose group shares that tree by design (`2770`, run-job and
/// the package's tmpfiles.d): [`make_private`] would lock the agents out of it. Symbolic
/// links are neither changed nor followed; a missing path is nothing to do.
///
/// # Errors
/// When a mode cannot be read or set.
pub fn close_to_others(path: &Path) -> Result<()> {
    restrict(path, &|_, mode| mode & !0o007)
}

/// Sets the mode `want(is_dir, current mode)` on `path` and, for a directory, on
/// everything under it.
fn restrict(path: &Path, want: &dyn Fn(bool, u32) -> u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_dir() && !meta.is_file() {
        return Ok(());
    }
    let current = meta.permissions().mode() & 0o7777;
    let mode = want(meta.is_dir(), current);
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?
        {
            restrict(
                &entry
                    .with_context(|| format!("listing {}", path.display()))?
                    .path(),
                want,
            )?;
        }
    }
    Ok(())
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, synced,
/// renamed over the target, then the folder synced so the rename itself is on disk.
///
/// # Errors
/// When the folder cannot be created or the file written.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic_mode(path, contents, None)
}

/// [`write_atomic`] for a file other users must read (`0644`, whatever the umask: the
/// units run with `UMask=0077`), such as the metrics file node_exporter scrapes. The
/// mode is set on the temporary file, so the target is never seen with another.
///
/// # Errors
/// When the folder cannot be created or the file written.
pub fn write_atomic_readable(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic_mode(path, contents, Some(0o644))
}

/// Creates `path`'s folder if needed and returns it with the name of a temporary file
/// beside `path`, `.<name>.tmp.<pid>` (the form [`remove_stale_temps`] recognises).
///
/// # Errors
/// When the folder cannot be created.
pub fn temp_beside(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    Ok((dir.to_path_buf(), tmp))
}

/// [`write_atomic`] for a file the agent's group must read (`0640`, whatever the umask):
/// a feedback file in a task's setgid artefact folder, read by an agent that runs as
/// `ORCH_AGENT_USER` (docs/security.md).
///
/// # Errors
/// When the folder cannot be created or the file written.
pub fn write_atomic_group_readable(path: &Path, contents: &[u8]) -> Result<()> {
    write_atomic_mode(path, contents, Some(0o640))
}

fn write_atomic_mode(path: &Path, contents: &[u8], mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, tmp) = temp_beside(path)?;
    // What an earlier writer of this same file left when it died mid-write.
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        sweep_temps(&dir, Some(name), std::time::SystemTime::now());
    }
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Removes the temporary files [`write_atomic`] (and [`temp_beside`]'s users) left in
/// `dir` when their process died between creating and renaming them (`kill -9`, a
/// crash): see [`sweep_temps`]. Returns how many were removed; a folder that cannot be
/// listed removes nothing.
pub fn remove_stale_temps(dir: &Path) -> usize {
    sweep_temps(dir, None, std::time::SystemTime::now())
}

/// Removes stale temporary files of orch's pattern in `dir`, `.<name>.tmp.<pid>` (with
/// SQLite's `-journal`, `-wal` or `-shm` after the pid for a backup's copy), of the
/// target `only` when given: a file last written before `started` (the pass's or the
/// write's start) whose writer is gone, its `<pid>` no longer running or running a
/// process that started after the file was written (a reused pid). A live writer's file,
/// a newer one and every other name are left alone.
pub fn sweep_temps(dir: &Path, only: Option<&str>, started: std::time::SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some((target, pid)) = name.to_str().and_then(temp_of) else {
            continue;
        };
        if only.is_some_and(|o| o != target) {
            continue;
        }
        let Ok(written) = e.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if written < started && writer_gone(pid, written) && std::fs::remove_file(e.path()).is_ok()
        {
            log::info!("removed {}, left by a writer that died", e.path().display());
            removed += 1;
        }
    }
    removed
}

/// The target name and writer pid of a temporary file name of orch's pattern.
fn temp_of(name: &str) -> Option<(&str, u32)> {
    let (target, tail) = name.strip_prefix('.')?.rsplit_once(".tmp.")?;
    let digits = ["-journal", "-wal", "-shm"]
        .iter()
        .find_map(|s| tail.strip_suffix(s))
        .unwrap_or(tail);
    if target.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((target, digits.parse().ok()?))
}

/// Whether the process that wrote a temporary file at `written` is gone: `pid` is not
/// running, or runs a process started after the write (the pid was reused).
fn writer_gone(pid: u32, written: std::time::SystemTime) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let Some(ticks) = crate::adapters::process::start_time(i64::from(pid)) else {
        return true;
    };
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<u64>().ok())
    });
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let (Some(boot), Ok(ticks)) = (boot, u64::try_from(ticks)) else {
        return false;
    };
    let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(boot + ticks / hz);
    // Whole seconds on both sides: only a start clearly after the write is a reuse.
    started > written + std::time::Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_of_orchs_pattern_only() {
        assert_eq!(temp_of(".window.json.tmp.42"), Some(("window.json", 42)));
        assert_eq!(temp_of(".orch.db.tmp.7-journal"), Some(("orch.db", 7)));
        for other in [
            ".notes.tmp.txt",
            "window.json.tmp.42",
            ".x.tmp.",
            ".tmp.4",
            ".a.tmp.4-x",
        ] {
            assert_eq!(temp_of(other), None, "{other}");
        }
    }

    #[test]
    fn a_reused_pid_or_a_dead_one_is_a_gone_writer_and_a_newer_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        // pid 1 runs, but started long after 2001: the writer of a 2001 file is gone.
        let reused = dir.path().join(".lease.json.tmp.1");
        std::fs::write(&reused, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&reused)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        // Written after the sweep started: a writer of this pass, kept.
        let fresh = dir.path().join(".lease.json.tmp.99999999");
        std::fs::write(&fresh, b"x").unwrap();
        assert_eq!(sweep_temps(dir.path(), Some("lease.json"), long_ago), 0);
        assert_eq!(
            sweep_temps(
                dir.path(),
                Some("other"),
                std::time::SystemTime::now() + std::time::Duration::from_secs(5)
            ),
            0
        );
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        assert_eq!(sweep_temps(dir.path(), Some("lease.json"), later), 2);
        assert!(!reused.exists() && !fresh.exists());
    }

    #[test]
    fn a_dead_writers_temporary_file_is_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (4194304) is never running.
        let dead = dir.path().join(".window.json.tmp.99999999");
        let live = dir
            .path()
            .join(format!(".window.json.tmp.{}", std::process::id()));
        let other = dir.path().join(".notes.tmp.txt");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()), 1);
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn writes_whole_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/file.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.txt")]);
    }

    #[test]
    fn a_target_that_is_a_folder_is_an_error_naming_it_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(format!("{err:#}").contains("taken"), "{err:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
