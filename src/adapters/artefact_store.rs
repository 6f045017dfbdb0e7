//! Where a task's artefacts live, chosen by engine ([`ArtefactStore`]).
//!
//! Under SQLite (one host) the folder `$ORCH_ARTEFACTS_DIR/<task key>/` is the state,
//! as it always was. Under PostgreSQL a gate may run on another host than the agent
//! that wrote its input, so the table `shared_files` (kind `artefact`, key
//! `<task key>/<file>`, or `<task key>/history/<file>` once set aside) is the state and
//! each host's folder is a copy of it that agents read and write:
//!
//! - `run-job` stores the task's Markdown files (`*.md` at the folder's top) when the
//!   agent exits, before the gate is applied ([`ArtefactStore::publish`]);
//! - before an agent starts, the stored files are written into the local folder
//!   ([`ArtefactStore::materialise`]), and a stage's artefact the table no longer has
//!   (another host set it aside) is removed, so agents keep reading files;
//! - gates and the feedback evidence read the table ([`ArtefactStore::read`]);
//! - orch's own writes (feedback files, the post-deploy log, the staging report) go to
//!   the folder and the table in one call ([`ArtefactStore::write`],
//!   [`ArtefactStore::sync_file`]), and a set-aside renames the row in the same call
//!   that renames the file ([`ArtefactStore::set_aside`]).
//!
//! Files only their own host reads stay local: the agent's usage file (`run-job` reads
//! it on the agent's host), temporary files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

use crate::adapters::artefacts::{read_bytes, set_aside, task_dir, MAX_ARTEFACT_BYTES};
use crate::adapters::db::shared_files::KIND_ARTEFACT;
use crate::adapters::db::{Db, Engine};
use crate::adapters::fs::{write_atomic, write_atomic_group_readable};
use crate::core::artefact::{stage_artefact, HISTORY_DIR};
use crate::core::stage::{self, Stage};
use crate::core::task::Task;

/// A task's artefacts: the local folder, and under PostgreSQL the database beside it.
#[derive(Clone, Copy)]
pub struct ArtefactStore<'a> {
    root: &'a Path,
    backing: Backing<'a>,
}

#[derive(Clone, Copy)]
enum Backing<'a> {
    /// The folder is the state (SQLite: one host).
    Files,
    /// `shared_files` is the state; the folder a copy (PostgreSQL: any number of hosts).
    Database(&'a Db),
}

/// How a file orch writes into a task's folder may be read by the agent's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// The writer's umask (the post-deploy log, the staging report).
    Private,
    /// `0640`: the agent's group reads it (feedback files; files another host stored).
    GroupReadable,
}

impl<'a> ArtefactStore<'a> {
    /// The store of `db`'s engine: files under SQLite, the database under PostgreSQL.
    pub fn new(root: &'a Path, db: &'a Db) -> Self {
        let backing = match db.engine() {
            Engine::Postgres => Backing::Database(db),
            Engine::Sqlite => Backing::Files,
        };
        ArtefactStore { root, backing }
    }

    /// The folder alone (a command without a database, the tests of the folder).
    pub fn files(root: &'a Path) -> Self {
        ArtefactStore {
            root,
            backing: Backing::Files,
        }
    }

    /// The local root folder.
    pub fn root(&self) -> &Path {
        self.root
    }

    /// Whether the database holds the state (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backing, Backing::Database(_))
    }

    /// Reads `file` of task `key`; `Ok(None)` when there is none. Under PostgreSQL from
    /// the table, whichever host wrote it.
    ///
    /// # Errors
    /// When the key cannot name a folder, the file cannot be read (see
    /// [`crate::adapters::artefacts::read`]), is larger than [`MAX_ARTEFACT_BYTES`], or
    /// (stored) is not UTF-8: refused unread like a file that cannot be read.
    pub fn read(&self, key: &str, file: &str) -> Result<Option<String>> {
        let db = match self.backing {
            Backing::Files => return crate::adapters::artefacts::read(self.root, key, file),
            Backing::Database(db) => db,
        };
        task_dir(self.root, key)?;
        let row = row_key(key, file);
        let Some(body) = db.shared_file(KIND_ARTEFACT, &row)? else {
            return Ok(None);
        };
        if body.len() as u64 > MAX_ARTEFACT_BYTES {
            bail!(
                "{row} (stored) is larger than {MAX_ARTEFACT_BYTES} bytes (the artefact size cap); refused unread"
            );
        }
        match String::from_utf8(body) {
            Ok(text) => Ok(Some(text)),
            Err(e) => bail!(
                "{row} (stored) is not UTF-8 text (invalid byte at {}); refused unread",
                e.utf8_error().valid_up_to()
            ),
        }
    }

    /// Writes `file` of task `key` (atomically) and, under PostgreSQL, stores it; returns
    /// the local path.
    ///
    /// # Errors
    /// When the key cannot name a folder, the file cannot be written or stored.
    pub fn write(
        &self,
        key: &str,
        file: &str,
        bytes: &[u8],
        mode: FileMode,
        now: i64,
    ) -> Result<PathBuf> {
        let path = task_dir(self.root, key)?.join(file);
        match mode {
            FileMode::Private => write_atomic(&path, bytes)?,
            FileMode::GroupReadable => write_atomic_group_readable(&path, bytes)?,
        }
        if let Backing::Database(db) = self.backing {
            db.put_shared_file(KIND_ARTEFACT, &row_key(key, file), bytes, now)
                .with_context(|| format!("storing {key}/{file} for the other hosts"))?;
        }
        Ok(path)
    }

    /// Under PostgreSQL, makes the stored `file` of task `key` what the local folder
    /// holds: stored when it is there, removed when it is not (a command wrote or
    /// removed it). Nothing under SQLite.
    ///
    /// # Errors
    /// When the file cannot be read or the database written.
    pub fn sync_file(&self, key: &str, file: &str, now: i64) -> Result<()> {
        let Backing::Database(db) = self.backing else {
            return Ok(());
        };
        let row = row_key(key, file);
        match read_bytes(self.root, key, file)? {
            Some(bytes) => db.put_shared_file(KIND_ARTEFACT, &row, &bytes, now)?,
            None => {
                db.delete_shared_file(KIND_ARTEFACT, &row)?;
            }
        }
        Ok(())
    }

    /// Under PostgreSQL, stores every Markdown file at the top of task `key`'s folder
    /// (what its agent wrote) for the gates of every host; returns how many. A file that
    /// cannot be read (a symlink, a FIFO, past the cap) is skipped with a warning: the
    /// gate then finds what the table held before, as a gate on this host would have
    /// failed to read it. Nothing under SQLite.
    ///
    /// # Errors
    /// When the folder cannot be listed or the database written.
    pub fn publish(&self, key: &str, now: i64) -> Result<usize> {
        let Backing::Database(db) = self.backing else {
            return Ok(0);
        };
        let dir = task_dir(self.root, key)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| safe_name(n) && n.ends_with(".md"))
            .collect();
        names.sort();
        let mut stored = 0;
        for name in names {
            match read_bytes(self.root, key, &name) {
                Ok(Some(bytes)) => {
                    db.put_shared_file(KIND_ARTEFACT, &row_key(key, &name), &bytes, now)
                        .with_context(|| format!("storing {key}/{name} for the other hosts"))?;
                    stored += 1;
                }
                Ok(None) => {}
                Err(e) => log::warn!("artefact {key}/{name} not stored: {e:#}"),
            }
        }
        Ok(stored)
    }

    /// Under PostgreSQL, writes the stored files of task `key` into its local folder
    /// (those already there unchanged are left alone), and removes a stage's artefact
    /// ([`stage_artefact`]) the table no longer holds (another host set it aside); returns
    /// how many files were written. A stored key that would leave the folder (`..`, a
    /// path, a hidden name) is refused with a warning and never written. Nothing under
    /// SQLite.
    ///
    /// # Errors
    /// When the key cannot name a folder, the database cannot be read or a file
    /// cannot be written.
    pub fn materialise(&self, key: &str) -> Result<usize> {
        let Backing::Database(db) = self.backing else {
            return Ok(0);
        };
        let dir = task_dir(self.root, key)?;
        let prefix = format!("{key}/");
        let rows = db.shared_files_under(KIND_ARTEFACT, &prefix)?;
        let mut written = 0;
        let mut present: Vec<String> = Vec::new();
        for (row, body) in rows {
            let rel = row.strip_prefix(&prefix).unwrap_or_default();
            let Some(path) = stored_path(&dir, rel) else {
                log::warn!(
                    "stored artefact {row:?} refused: it does not name a file of the task's folder"
                );
                continue;
            };
            present.push(rel.to_string());
            let same = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
                && std::fs::read(&path).is_ok_and(|b| b == body);
            if same {
                continue;
            }
            write_atomic_group_readable(&path, &body)
                .with_context(|| format!("writing stored artefact {row}"))?;
            written += 1;
        }
        for stage in Stage::ALL {
            let Some(file) = stage_artefact(stage) else {
                continue;
            };
            if present.iter().any(|p| p == file) {
                continue;
            }
            let path = dir.join(file);
            if std::fs::symlink_metadata(&path).is_ok() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {} (set aside)", path.display()))?;
                log::info!("artefact {key}/{file}: set aside on another host; removed here");
            }
        }
        Ok(written)
    }

    /// Moves `file` of task `key` into `history/` (see
    /// [`crate::adapters::artefacts::set_aside`]); under PostgreSQL the stored row is
    /// renamed to the same history name in the same call (the stored file is first
    /// written locally: the table is the state). `None` when there is nothing to move.
    ///
    /// # Errors
    /// When the key cannot name a folder, the file cannot be moved, or the database
    /// cannot be read or written.
    pub fn set_aside(
        &self,
        key: &str,
        file: &str,
        round: u32,
        now: i64,
    ) -> Result<Option<PathBuf>> {
        let dir = task_dir(self.root, key)?;
        let Backing::Database(db) = self.backing else {
            return set_aside(&dir, file, round, now);
        };
        let row = row_key(key, file);
        let stored = db.shared_file(KIND_ARTEFACT, &row)?;
        if let Some(body) = &stored {
            write_atomic_group_readable(&dir.join(file), body)
                .with_context(|| format!("writing stored artefact {row} before moving it aside"))?;
        }
        let moved = set_aside(&dir, file, round, now)?;
        if let (Some(to), Some(_)) = (&moved, &stored) {
            let name = to.file_name().unwrap_or_default().to_string_lossy();
            let history = row_key(key, &format!("{HISTORY_DIR}/{name}"));
            db.rename_shared_file(KIND_ARTEFACT, &row, &history, now)
                .with_context(|| format!("moving stored {row} aside"))?;
        } else if stored.is_some() {
            // Another pass moved the file meanwhile; the row must not outlive it.
            db.delete_shared_file(KIND_ARTEFACT, &row)?;
        }
        Ok(moved)
    }

    /// Moves aside, before `task` enters `to`, the artefact `to`'s agent writes and its
    /// gate reads ([`stage_artefact`]), when an earlier visit left one; returns where it
    /// went. `None` when `to` has no such artefact, none is there, the table does not
    /// allow the move (the database refuses it; nothing is touched), or the key cannot
    /// name an artefact folder (nothing can be in one).
    ///
    /// Called before the move's database commit: a crash in between leaves the task where
    /// it was with the file already in `history/`, and the pass that moves it again finds
    /// nothing to set aside. The other order could leave the task in `to` with the last
    /// visit's verdict in place for the gate to read (the crash point
    /// `artefact-set-aside` sits between the two).
    ///
    /// # Errors
    /// When the file is there but cannot be moved aside: the caller must then not commit
    /// the move, so the gate of `to` never reads a stale file.
    pub fn set_aside_on_entry(&self, task: &Task, to: Stage, now: i64) -> Result<Option<PathBuf>> {
        let Some(file) = stage_artefact(to) else {
            return Ok(None);
        };
        if stage::transition(task.stage, to).is_none() {
            return Ok(None);
        }
        if task_dir(self.root, &task.key).is_err() {
            return Ok(None);
        }
        let moved = self
            .set_aside(&task.key, file, task.round, now)
            .with_context(|| {
                format!(
                    "task {} cannot enter {to}: moving aside the {file} of an earlier visit",
                    task.key
                )
            })?;
        if let Some(path) = &moved {
            log::info!(
                "task {}: {file} of an earlier visit moved aside to {HISTORY_DIR}/{} before it enters {to}",
                task.key,
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            crate::crash::point("artefact-set-aside");
        }
        Ok(moved)
    }
}

/// The stored key of `file` of task `key`.
fn row_key(key: &str, file: &str) -> String {
    format!("{key}/{file}")
}

/// Whether `name` is one file name orch writes or reads in a task's folder: letters,
/// digits, `-`, `_`, `.`, not hidden (temporary files are), not `.`/`..`.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The local path of stored file `rel` (the key's part after `<task key>/`): a
/// [`safe_name`] at the top of the folder, or one in `history/`. `None` otherwise: a
/// key that would leave the folder is never written.
fn stored_path(dir: &Path, rel: &str) -> Option<PathBuf> {
    match rel.split_once('/') {
        None if safe_name(rel) => Some(dir.join(rel)),
        Some((HISTORY_DIR, name)) if safe_name(name) => Some(dir.join(HISTORY_DIR).join(name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_keys_that_would_leave_the_folder_are_refused() {
        let dir = Path::new("/a/K-1");
        for bad in [
            "",
            ".",
            "..",
            "../x.md",
            "../../etc/passwd",
            "/etc/passwd",
            "a/b.md",
            "history/../x.md",
            "history/",
            "history/sub/x.md",
            ".hidden.md",
            "history/.x",
            "a\0b",
            "ключ.md",
            "x\\..\\y",
        ] {
            assert_eq!(stored_path(dir, bad), None, "{bad:?}");
        }
        assert_eq!(
            stored_path(dir, "05-review.md"),
            Some(dir.join("05-review.md"))
        );
        assert_eq!(
            stored_path(dir, "history/05-review.round-1.20261125T030000Z.md"),
            Some(dir.join("history/05-review.round-1.20261125T030000Z.md"))
        );
    }
}
