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
//!
//! [`write_on_ci_rerun`] does the same for a developer job reconcile re-runs because CI
//! failed on the PR head (no move: the task is at development): the file is written under
//! the next number before the re-run commits, and the re-run counts it on the task in its
//! own transaction (`Db::rerun_job_with_ci_feedback`; crash point `ci-feedback-written`).
//! Both kinds share one numbering, `Db::feedback_count`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::adapters::artefact_store::FileMode;
use crate::adapters::artefacts::{task_dir, ArtefactStore};
use crate::adapters::db::Db;
use crate::clock::format_unix;
use crate::core::facts::CiFailure;
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
    if task_dir(root, &task.key).is_err() {
        return Ok(None);
    }
    let store = ArtefactStore::new(root, db);
    let number = db.feedback_count(task.id)? + 1;
    let evidence = match kind.evidence_file() {
        Some(file) => match store.read(&task.key, file) {
            Ok(text) => text,
            Err(e) => Some(format!("(it could not be read: {e:#})\n")),
        },
        None => None,
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
        ci_head: None,
    });
    let name = feedback::file_name(number);
    // The developer may run as the agent user: its group reads the file (the task's
    // folder is setgid to that group). Under PostgreSQL it is stored too: the
    // developer may run on another host.
    let path = store
        .write(
            &task.key,
            &name,
            text.as_bytes(),
            FileMode::GroupReadable,
            now,
        )
        .with_context(|| {
            format!(
                "task {} cannot go back to development: writing its feedback {name}",
                task.key
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

/// Writes the feedback of reconcile re-running `task`'s developer job `job_id` (ended at `attempt`)
/// because CI failed on the PR head: the failing contexts with their target URLs, under
/// the task's next feedback number. Returns the file written, `None` when the task is
/// not at development, the job is not ended at `attempt` any more (the re-run will not
/// be made), or the key cannot name an artefact folder. The caller then makes the re-run
/// with `Db::rerun_job_with_ci_feedback`, which counts the file.
///
/// # Errors
/// When the database cannot be read or the file cannot be written: the caller must
/// then not re-run the job, so no re-run for red CI goes without its feedback.
pub fn write_on_ci_rerun(
    root: &Path,
    db: &Db,
    task: &Task,
    (job_id, attempt): (i64, u32),
    failure: &CiFailure,
    reason: &str,
    now: i64,
) -> Result<Option<PathBuf>> {
    if task.stage != Stage::Development {
        return Ok(None);
    }
    match db.job(job_id)? {
        Some(j) if j.attempt == attempt && j.status.is_terminal() => {}
        _ => return Ok(None),
    }
    if task_dir(root, &task.key).is_err() {
        return Ok(None);
    }
    let number = db.feedback_count(task.id)? + 1;
    let evidence = feedback::render_ci_failure(failure);
    let at = format_unix(now);
    let text = feedback::render(&Feedback {
        number,
        kind: Kind::CiFailed,
        key: &task.key,
        round: task.round,
        reason,
        // Only reconcile re-runs a stage's job.
        actor: Actor::Reconcile.as_str(),
        at: &at,
        evidence: Some(&evidence),
        ci_head: Some(&failure.head_sha),
    });
    let name = feedback::file_name(number);
    let path = ArtefactStore::new(root, db)
        .write(&task.key, &name, text.as_bytes(), FileMode::GroupReadable, now)
        .with_context(|| {
            format!(
                "task {}: developer job {job_id} not re-run for red CI: writing its feedback {name}",
                task.key
            )
        })?;
    log::info!(
        "task {}: feedback {} (ci-failed, {} failing context(s)) written for the developer's re-run",
        task.key,
        feedback::file_name(number),
        failure.contexts.len()
    );
    crate::crash::point("ci-feedback-written");
    Ok(Some(path))
}

/// Returns the task's newest feedback file: the one its last recorded move back to
/// development or red-CI re-run wrote (`feedback-<n>.md`, n = those recorded in the
/// database, `Db::feedback_count`),
/// `None` before the first (its first round) or when the key cannot name an artefact
/// folder. The number comes from the record, never from the folder: agents write the
/// folder, and a planted `feedback-999.md` must not hide the real one.
///
/// # Errors
/// When the database cannot be read.
pub fn newest(db: &Db, root: &Path, task_id: i64, key: &str) -> Result<Option<PathBuf>> {
    let n = db.feedback_count(task_id)?;
    if n == 0 {
        return Ok(None);
    }
    let Ok(dir) = task_dir(root, key) else {
        return Ok(None);
    };
    let path = dir.join(feedback::file_name(n));
    Ok(path.is_file().then_some(path))
}
