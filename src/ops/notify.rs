//! Operator notifications: recorded once per dedupe key in the `notifications` table,
//! then delivered to Telegram when it is configured.
//!
//! The row is inserted first and the message sent only when the insert was new, so two
//! passes (or a pass repeated after a crash) never announce the same thing twice. A
//! failed delivery is recorded on the row (`error`) and not retried here: the operator
//! sees it in the log and the table. Post-deploy and reconcile share this module.

use anyhow::Result;

use crate::adapters::db::Db;
use crate::ops::pass::PassContext;

/// What announcing did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Announced {
    /// Recorded now and delivered to Telegram.
    Sent,
    /// Recorded now; no channel is configured, so the table and the log are the record.
    Recorded,
    /// Recorded now; delivery failed with this error (kept on the row).
    Failed(String),
    /// The dedupe key was already recorded: nothing done.
    AlreadyAnnounced,
}

/// Announces `message` once per `key`.
///
/// # Errors
/// When the database cannot be written or the Telegram client cannot be built.
pub fn announce(
    ctx: &PassContext,
    db: &Db,
    key: &str,
    kind: &str,
    task_id: Option<i64>,
    message: &str,
) -> Result<Announced> {
    let now = ctx.now_secs();
    let Some(id) = db.insert_notification(key, kind, task_id, message, now)? else {
        log::debug!("notification already announced: {key}");
        return Ok(Announced::AlreadyAnnounced);
    };
    let Some(telegram) = ctx.telegram()? else {
        log::warn!("{kind}: {message}");
        return Ok(Announced::Recorded);
    };
    match telegram.send(message) {
        Ok(()) => {
            db.mark_notification(id, "telegram", Some(now), None)?;
            log::info!("notified telegram: {kind} {key}");
            Ok(Announced::Sent)
        }
        Err(e) => {
            let error = e.to_string();
            db.mark_notification(id, "telegram", None, Some(&error))?;
            log::warn!("telegram notification {key} failed: {error}");
            Ok(Announced::Failed(error))
        }
    }
}
