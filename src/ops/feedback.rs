//! Writing a rollback's feedback file (`core::feedback`) when a task is moved back to
//! development, and finding the newest one for the developer's next job.
//!
//! [`write_on_rollback`] runs inside `ops::moves::move_task`, after the move is known to
//! be made and before its database commit, like setting an artefact aside: the file is
//! written atomically (a temporary file renamed over the name) under a number derived
//! from the database (the task's moves back to development so far, plus one), so a
//! retry after a crash between the file and the commit rewrites the same file, and a
//! replay of a move already made (the task is no longer where the caller read it)
//! writes nothing. The crash point `feedback-written` sits between the two.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::adapters::artefacts::{self, task_dir};
use crate::adapters::db::Db;
use crate::adapters::fs::write_atomic_group_readable;
use crate::clock::format_unix;
use crate::core::feedback::{self, Feedback, Kind};
use crate::core::stage::{self, Actor, Stage};
use crate::core::task::Task;

/// Writes the feedback of `task`'s move to `to` when it is a move back to development;
/// returns the file written. `None` when the move is not one, the table does not allow
/// it, the task is no longer at the stage the caller read (the move will be refused),
/// or its key cannot name an artefact folder.
///
/// # Errors
/// When the database cannot be read or the file cannot be written: the caller must
/// then not commit the move, so no rollback goes without its feedback.
pub fn write_on_rollback(
    root: &Path,
    db: &Db,
    task: &Task,
    to: Stage,
    reason: &str,
    actor: Actor,
    now: i64,
) -> Result<Option<PathBuf>> {
    let Some(kind) = Kind::of_move(task.stage, to) else {
        return Ok(None);
    };
    if stage::transition(task.stage, to).is_none() {
        return Ok(None);
    }
    match db.task(task.id)? {
        Some(current) if current.stage == task.stage => {}
        _ => return Ok(None),
    }
    let Ok(dir) = task_dir(root, &task.key) else {
        return Ok(None);
    };
    let number = db.rollbacks_to_development(task.id)? + 1;
    let file = kind.evidence_file();
    let evidence = match artefacts::read(root, &task.key, file) {
        Ok(text) => text,
        Err(e) => Some(format!("(it could not be read: {e:#})\n")),
    };
    let at = format_unix(now);
    let text = feedback::render(&Feedback {
        number,
        kind,
        key: &task.key,
        round: task.round,
        reason,
        actor: actor.as_str(),
        at: &at,
        evidence: evidence.as_deref(),
    });
    let path = dir.join(feedback::file_name(number));
    // The developer may run as the agent user: its group reads the file (the task's
    // folder is setgid to that group).
    write_atomic_group_readable(&path, text.as_bytes()).with_context(|| {
        format!(
            "task {} cannot go back to development: writing its feedback {}",
            task.key,
            path.display()
        )
    })?;
    log::info!(
        "task {}: feedback {} ({}) written for the developer's next job",
        task.key,
        feedback::file_name(number),
        kind.as_str()
    );
    crate::crash::point("feedback-written");
    Ok(Some(path))
}

/// Returns the task's newest feedback file: the one its last recorded move back to
/// development wrote (`feedback-<n>.md`, n = the moves back recorded in the database),
/// `None` before the first (its first round) or when the key cannot name an artefact
/// folder. The number comes from the record, never from the folder: agents write the
/// folder, and a planted `feedback-999.md` must not hide the real one.
///
/// # Errors
/// When the database cannot be read.
pub fn newest(db: &Db, root: &Path, task_id: i64, key: &str) -> Result<Option<PathBuf>> {
    let n = db.rollbacks_to_development(task_id)?;
    if n == 0 {
        return Ok(None);
    }
    let Ok(dir) = task_dir(root, key) else {
        return Ok(None);
    };
    let path = dir.join(feedback::file_name(n));
    Ok(path.is_file().then_some(path))
}
