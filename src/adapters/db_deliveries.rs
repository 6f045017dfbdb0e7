//! SQL for webhook deliveries and the per-project Plane state cache (tables
//! `deliveries` and `plane_states`, migration 2).
//!
//! A delivery row is committed before the sender is answered; it stays `pending` until
//! acting on it succeeds, so `reconcile` can replay it. The state cache is keyed by the
//! Plane project id: a state id is only ever resolved within its own project. No
//! decisions here.

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::adapters::db::Db;
use crate::core::intake::{Outcome, PlaneState};

/// The outcome column of a delivery not yet acted on.
pub const PENDING: &str = "pending";

/// A delivery to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery<'a> {
    /// Lowercase hex SHA-256 of the raw body (the de-duplication key).
    pub body_sha256: &'a str,
    /// `X-Plane-Delivery`, kept for the log (new on every retry).
    pub delivery_id: Option<&'a str>,
    /// The `event` of the body.
    pub event: &'a str,
    /// The raw body as received.
    pub body: &'a [u8],
    /// When it was received (unix seconds).
    pub received_at: i64,
}

/// What storing a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A new row.
    New(i64),
    /// The same bytes were stored before (a retry or a replay).
    Duplicate {
        /// The earlier row.
        id: i64,
        /// The earlier delivery id.
        delivery_id: Option<String>,
        /// The earlier row's outcome so far.
        outcome: String,
    },
}

/// One stored delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRow {
    /// Row id.
    pub id: i64,
    /// Hash of the raw body.
    pub body_sha256: String,
    /// `X-Plane-Delivery` of the first copy.
    pub delivery_id: Option<String>,
    /// The body's `event`.
    pub event: Option<String>,
    /// The raw body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Received (unix seconds).
    pub received_at: i64,
    /// `pending`, or the recorded outcome.
    pub outcome: String,
    /// The outcome's detail (what was done, or why nothing was).
    pub detail: Option<String>,
    /// How many times acting on it was tried.
    pub attempts: i64,
    /// When the outcome was recorded.
    pub processed_at: Option<i64>,
    /// The last error while acting.
    pub error: Option<String>,
}

/// The delivery already has an outcome (another process recorded it first): the write
/// that would have recorded it again was rolled back with everything it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery {0} already has an outcome (another process recorded it first)")]
pub struct AlreadyRecorded(pub i64);

/// A delivery whose outcome a write records in its own transaction, so that the
/// delivery's effects and its outcome are committed together or not at all: a crash
/// leaves either nothing (a replay does it all) or everything (a replay finds the
/// outcome and does nothing).
pub struct Recorder<'a, T> {
    /// The delivery row.
    pub delivery: i64,
    /// When the outcome is recorded (unix seconds).
    pub now: i64,
    /// The outcome, from what the write did (pure: it is also used to report it).
    pub describe: &'a dyn Fn(&T) -> Outcome,
}

impl<T> Recorder<'_, T> {
    /// Records the outcome of `done` inside the write's open transaction.
    ///
    /// # Errors
    /// [`AlreadyRecorded`] (inside `anyhow`) when the delivery is no longer pending: the
    /// caller returns it, which rolls the whole transaction back. SQL errors otherwise.
    pub(crate) fn record_in(&self, conn: &Connection, done: &T) -> Result<()> {
        let outcome = (self.describe)(done);
        record_outcome_in(conn, self.delivery, &outcome, self.now)
    }
}

/// Records a pending delivery's outcome; [`AlreadyRecorded`] when it is not pending.
fn record_outcome_in(conn: &Connection, id: i64, outcome: &Outcome, now: i64) -> Result<()> {
    // The effects are written, the outcome not yet: a kill here rolls both back.
    crate::crash::point("delivery-acted");
    let n = conn.execute(
        "UPDATE deliveries SET outcome = ?2, detail = ?3, processed_at = ?4, error = NULL
         WHERE id = ?1 AND outcome = 'pending'",
        params![id, outcome.kind.as_str(), outcome.detail, now],
    )?;
    if n == 1 {
        Ok(())
    } else {
        Err(AlreadyRecorded(id).into())
    }
}

const DELIVERY_COLUMNS: &str = "id, body_sha256, delivery_id, event, body, received_at, \
     outcome, detail, attempts, processed_at, error";

fn delivery_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        body_sha256: r.get(1)?,
        delivery_id: r.get(2)?,
        event: r.get(3)?,
        body: r.get(4)?,
        received_at: r.get(5)?,
        outcome: r.get(6)?,
        detail: r.get(7)?,
        attempts: r.get(8)?,
        processed_at: r.get(9)?,
        error: r.get(10)?,
    })
}

impl Db {
    /// Stores a delivery once per body: a body stored before is a [`Stored::Duplicate`].
    /// The row is committed when this returns.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn insert_delivery(&mut self, d: &NewDelivery<'_>) -> Result<Stored> {
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            "INSERT INTO deliveries (body_sha256, delivery_id, event, body, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (body_sha256) DO NOTHING",
            params![d.body_sha256, d.delivery_id, d.event, d.body, d.received_at],
        )?;
        let out = if inserted == 1 {
            Stored::New(tx.last_insert_rowid())
        } else {
            let (id, delivery_id, outcome) = tx.query_row(
                "SELECT id, delivery_id, outcome FROM deliveries WHERE body_sha256 = ?1",
                [d.body_sha256],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Stored::Duplicate {
                id,
                delivery_id,
                outcome,
            }
        };
        tx.commit()?;
        Ok(out)
    }

    /// Returns one delivery.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"),
                [id],
                delivery_from_row,
            )
            .optional()?)
    }

    /// Lists deliveries still `pending`, oldest first, at most `limit` (reconcile replays them).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn pending_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE outcome = 'pending'
             ORDER BY received_at, id LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], delivery_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Counts one more attempt at acting on a delivery.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn count_delivery_attempt(&self, id: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Records a delivery's outcome; `false` when it was no longer pending (another
    /// process recorded one first).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn finish_delivery(&self, id: i64, outcome: &str, detail: &str, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE deliveries SET outcome = ?2, detail = ?3, processed_at = ?4, error = NULL
             WHERE id = ?1 AND outcome = 'pending'",
            params![id, outcome, detail, now],
        )?;
        Ok(n == 1)
    }

    /// Records the outcome of a delivery that has no effect in the database (`no
    /// pipeline action`, or effects already done).
    ///
    /// # Errors
    /// [`AlreadyRecorded`] when it was no longer pending; SQL errors.
    pub fn record_outcome(&self, id: i64, outcome: &Outcome, now: i64) -> Result<()> {
        record_outcome_in(self.conn(), id, outcome, now)
    }

    /// Records why acting on a delivery failed; it stays `pending` for reconcile.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn fail_delivery(&self, id: i64, error: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE deliveries SET error = ?2 WHERE id = ?1 AND outcome = 'pending'",
            params![id, error],
        )?;
        Ok(())
    }

    /// Returns a cached state of a Plane project (by Plane project id).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn plane_state(
        &self,
        plane_project_id: &str,
        state_id: &str,
    ) -> Result<Option<PlaneState>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT state_id, name, state_group FROM plane_states
                 WHERE project = ?1 AND state_id = ?2 COLLATE NOCASE",
                params![plane_project_id, state_id],
                |r| {
                    Ok(PlaneState {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        group: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Returns every cached state of a Plane project, by name.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn plane_states(&self, plane_project_id: &str) -> Result<Vec<PlaneState>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT state_id, name, state_group FROM plane_states WHERE project = ?1
             ORDER BY name, state_id",
        )?;
        let rows = stmt.query_map([plane_project_id], |r| {
            Ok(PlaneState {
                id: r.get(0)?,
                name: r.get(1)?,
                group: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Replaces a project's cached states with a fresh list from the States API.
    ///
    /// # Errors
    /// On SQL errors (nothing changes then).
    pub fn replace_plane_states(
        &mut self,
        plane_project_id: &str,
        states: &[PlaneState],
        now: i64,
    ) -> Result<()> {
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM plane_states WHERE project = ?1",
            [plane_project_id],
        )?;
        for s in states {
            tx.execute(
                "INSERT OR REPLACE INTO plane_states (project, state_id, name, state_group, fetched_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![plane_project_id, s.id, s.name, s.group, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Caches one state of a project (as a delivery described it).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn upsert_plane_state(
        &self,
        plane_project_id: &str,
        s: &PlaneState,
        now: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO plane_states (project, state_id, name, state_group, fetched_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (project, state_id) DO UPDATE
               SET name = excluded.name, state_group = excluded.state_group,
                   fetched_at = excluded.fetched_at
             WHERE name <> excluded.name OR state_group <> excluded.state_group",
            params![plane_project_id, s.id, s.name, s.group, now],
        )?;
        Ok(())
    }
}

/// Reads every cached Plane state, as `(plane project id, state)`, from the database
/// at `path` opened read-only (for `config check`, which changes nothing). Empty when
/// the file or the table does not exist yet.
///
/// # Errors
/// When the file exists but cannot be read as an `orch` database.
pub fn read_cached_states(path: &std::path::Path) -> Result<Vec<(String, PlaneState)>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'plane_states'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT project, state_id, name, state_group FROM plane_states ORDER BY project, name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            PlaneState {
                id: r.get(1)?,
                name: r.get(2)?,
                group: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_body_is_stored_once() {
        let (_d, mut db) = db();
        let new = |id| NewDelivery {
            body_sha256: "abc",
            delivery_id: Some(id),
            event: "issue",
            body: b"{}",
            received_at: 10,
        };
        let Stored::New(first) = db.insert_delivery(&new("d1")).unwrap() else {
            panic!("new")
        };
        assert_eq!(
            db.insert_delivery(&new("d2")).unwrap(),
            Stored::Duplicate {
                id: first,
                delivery_id: Some("d1".into()),
                outcome: PENDING.into()
            }
        );
        assert_eq!(db.pending_deliveries(10).unwrap().len(), 1);
        db.count_delivery_attempt(first).unwrap();
        db.fail_delivery(first, "gitea down").unwrap();
        let row = db.delivery(first).unwrap().unwrap();
        assert_eq!((row.outcome.as_str(), row.attempts), (PENDING, 1));
        assert_eq!(row.error.as_deref(), Some("gitea down"));
        assert!(db.finish_delivery(first, "started", "task X", 11).unwrap());
        assert!(!db.finish_delivery(first, "started", "again", 12).unwrap());
        let row = db.delivery(first).unwrap().unwrap();
        assert_eq!((row.detail.as_deref(), row.error), (Some("task X"), None));
        assert!(db.pending_deliveries(10).unwrap().is_empty());
    }

    #[test]
    fn states_are_cached_per_project() {
        let (_d, mut db) = db();
        let s = |id: &str, name: &str| PlaneState {
            id: id.into(),
            name: name.into(),
            group: "started".into(),
        };
        db.replace_plane_states("p1", &[s("a", "In Progress"), s("b", "Doing")], 1)
            .unwrap();
        assert_eq!(
            db.plane_state("p1", "a").unwrap(),
            Some(s("a", "In Progress"))
        );
        assert_eq!(db.plane_state("p2", "a").unwrap(), None, "never borrowed");
        db.replace_plane_states("p1", &[s("b", "Doing")], 2)
            .unwrap();
        assert_eq!(db.plane_state("p1", "a").unwrap(), None);
        db.upsert_plane_state("p1", &s("b", "Renamed"), 3).unwrap();
        assert_eq!(db.plane_states("p1").unwrap(), vec![s("b", "Renamed")]);
    }
}
