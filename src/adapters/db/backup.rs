//! A consistent copy of the database while the timers write to it: SQLite's online
//! backup API (never a file copy, which can tear across the WAL), into a temporary file
//! beside the target, checked, synced, then renamed over it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::adapters::db::BUSY_TIMEOUT;
use crate::adapters::fs::temp_beside;

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupDone {
    /// The schema version (`user_version`) of the copy.
    pub schema_version: i64,
    /// Pages copied.
    pub pages: i64,
    /// The copy's size in bytes.
    pub bytes: u64,
}

/// Copies the database at `src` into `dst` as one consistent snapshot (one backup step
/// over every page, inside one read transaction: a writer in WAL mode is not blocked,
/// and nothing it commits meanwhile is half in the copy). The copy is a self-contained
/// file (rollback journal, not WAL), checked with `PRAGMA integrity_check` before it
/// replaces `dst`. The source is opened without migrating: a backup taken before an
/// upgrade keeps the old schema.
///
/// # Errors
/// When `src` is missing or unreadable, the copy fails its check, or `dst` cannot be
/// written.
pub fn backup_database(src: &Path, dst: &Path) -> Result<BackupDone> {
    if !src.exists() {
        bail!(
            "no database at {} (run `orch init` first, or point --db at it)",
            src.display()
        );
    }
    let from = Connection::open_with_flags(
        src,
        // Read-write (never written): a read-only handle on a WAL database needs its
        // -shm file to exist already.
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening database {}", src.display()))?;
    from.busy_timeout(BUSY_TIMEOUT)?;
    let (dir, tmp) = temp_beside(dst)?;
    let _ = std::fs::remove_file(&tmp);
    // What an earlier backup to the same file left when it died mid-copy.
    if let Some(name) = dst.file_name().and_then(|n| n.to_str()) {
        crate::adapters::fs::sweep_temps(&dir, Some(name), std::time::SystemTime::now());
    }
    let result = copy_checked(&from, &tmp).and_then(|done| {
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dst)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(done)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("backing up {} to {}", src.display(), dst.display()))
}

fn copy_checked(from: &Connection, tmp: &Path) -> Result<BackupDone> {
    let mut to = Connection::open(tmp)?;
    {
        let backup = Backup::new(from, &mut to)?;
        // All pages in one step: one read transaction, so one snapshot. Busy or Locked
        // only while another connection holds an exclusive lock (a checkpoint
        // truncating the WAL): retry within the busy timeout.
        let started = Instant::now();
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked
                    if started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => bail!("the backup did not finish within {BUSY_TIMEOUT:?}: {other:?}"),
            }
        }
    }
    to.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the copy fails PRAGMA integrity_check: {check}");
    }
    let schema_version: i64 = to.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let pages: i64 = to.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    drop(to);
    Ok(BackupDone {
        schema_version,
        pages,
        bytes: std::fs::metadata(tmp)?.len(),
    })
}
