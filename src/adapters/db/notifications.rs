//! The `notifications` table: what was announced, keyed by a dedupe key so nothing is
//! announced twice. SQL only; `notify` decides what to send.

use crate::adapters::db::sql::{params, OptionalExtension as _};
use anyhow::Result;

use crate::adapters::db::Db;

/// One stored notification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    /// Row id.
    pub id: i64,
    /// The dedupe key.
    pub dedupe_key: String,
    /// What kind (`post-deploy-degraded` ...).
    pub kind: String,
    /// The task, if any.
    pub task_id: Option<i64>,
    /// The text.
    pub message: String,
    /// Recorded at (unix seconds).
    pub created_at: i64,
    /// Delivered at, if delivered.
    pub sent_at: Option<i64>,
    /// The channel it went to (`telegram`).
    pub channel: Option<String>,
    /// Why delivery failed, if it did.
    pub error: Option<String>,
}

impl Db {
    /// Records a notification unless its dedupe key exists; returns the new row id, or
    /// `None` when it was already recorded.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn insert_notification(
        &self,
        dedupe_key: &str,
        kind: &str,
        task_id: Option<i64>,
        message: &str,
        now: i64,
    ) -> Result<Option<i64>> {
        Ok(self
            .conn()
            .query_row(
                "INSERT INTO notifications (dedupe_key, kind, task_id, message, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                params![dedupe_key, kind, task_id, message, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records the delivery of a notification: `sent_at` on success, `error` otherwise.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn mark_notification(
        &self,
        id: i64,
        channel: &str,
        sent_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE notifications SET channel = ?2, sent_at = ?3, error = ?4 WHERE id = ?1",
            params![id, channel, sent_at, error],
        )?;
        Ok(())
    }

    /// Returns the notification with this dedupe key.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn notification(&self, dedupe_key: &str) -> Result<Option<Notification>> {
        self.query_one(
            "SELECT id, dedupe_key, kind, task_id, message, created_at, sent_at, channel, error
             FROM notifications WHERE dedupe_key = ?1",
            [dedupe_key],
            |r| {
                Ok(Notification {
                    id: r.get(0)?,
                    dedupe_key: r.get(1)?,
                    kind: r.get(2)?,
                    task_id: r.get(3)?,
                    message: r.get(4)?,
                    created_at: r.get(5)?,
                    sent_at: r.get(6)?,
                    channel: r.get(7)?,
                    error: r.get(8)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let id = db
            .insert_notification("k", "kind", None, "hello", 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            db.insert_notification("k", "kind", None, "again", 6)
                .unwrap(),
            None
        );
        db.mark_notification(id, "telegram", None, Some("HTTP 401"))
            .unwrap();
        let n = db.notification("k").unwrap().unwrap();
        assert_eq!(
            (n.message.as_str(), n.error.as_deref()),
            ("hello", Some("HTTP 401"))
        );
        assert_eq!(db.notification("other").unwrap(), None);
    }
}
