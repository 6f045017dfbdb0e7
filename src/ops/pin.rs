//! The pin's I/O: reading a task's PR head from Gitea through the forge (recording the
//! PR number it finds) and clearing a task's validated revision. Whether a head may be
//! pinned is `core::pin`'s.

use crate::adapters::db::Db;
use crate::adapters::forge::Forge;
use crate::adapters::gitea::GiteaClient;
use crate::core::gate::Need;
use crate::core::pin::{head_at_start, HeadError, PrHead};
use crate::core::stage::Stage;
use crate::core::task::Task;

/// Reads the task's PR head through the forge (its recorded PR, else the open PR of its
/// branch, whose number is then recorded) and judges it.
///
/// # Errors
/// Every failed read is [`HeadError::Unreadable`]: the forge's `Err` is always a Gitea
/// call that gave no usable answer. [`HeadError::Refused`] as `core::pin::head_at_start`
/// says.
pub fn read_pr_head(
    gitea: &GiteaClient,
    task: &Task,
    db: Option<&Db>,
    now: i64,
) -> Result<PrHead, HeadError> {
    let mut forge = Forge::new(Some(gitea));
    let facts = forge.facts(task, Stage::DeployStaging, &[Need::Pr]);
    let recorded = task.pr_number.and_then(|n| u64::try_from(n).ok());
    let head = head_at_start(&facts.pr, &task.key, &task.branch, recorded)?;
    if let (Some(n), Some(db)) = (facts.new_pr_number, db) {
        let number = i64::try_from(n).unwrap_or(i64::MAX);
        match db.set_pr_number(task.id, task.round, number, now) {
            Ok(false) => log::info!(
                "staging-check: PR #{n} not recorded on task {}: it started another round meanwhile",
                task.key
            ),
            Ok(true) => log::info!(
                "staging-check: recorded PR #{n} on task {} (head branch {})",
                task.key,
                task.branch
            ),
            Err(e) => log::warn!(
                "staging-check: recording PR #{n} on task {}: {e:#}",
                task.key
            ),
        }
    }
    Ok(head)
}

/// Clears the task's validated revision for this round (`why` ends the warning: `this
/// run failed`), so nothing older may be merged on the word of a run that did not
/// validate it. A failure is logged, not returned: the run's answer stands.
pub fn clear_validated(db: &Db, task: &Task, now: i64, why: &str) {
    match db.clear_validated_revision(task.id, task.round, now) {
        Ok(true) => log::warn!(
            "staging-check: task {} no longer has a validated revision (was {}): {why}",
            task.key,
            task.validated_revision.as_deref().unwrap_or("?")
        ),
        Ok(false) => {}
        Err(e) => log::error!(
            "staging-check: clearing task {}'s validated revision: {e:#}",
            task.key
        ),
    }
}
