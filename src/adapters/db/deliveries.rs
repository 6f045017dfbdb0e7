//! SQL for webhook deliveries (table `deliveries`, migration 2).
//!
//! A delivery row is committed before the sender is answered; it stays `pending` until
//! acting on it succeeds, so `reconcile` can replay it. A write a delivery causes
//! records its outcome in the write's own transaction (`recorder.rs`). No decisions
//! here.

use crate::adapters::db::sql::{params, OptionalExtension as _};
use anyhow::Result;

use crate::adapters::db::recorder::record_outcome_in;
use crate::adapters::db::updates::note_update_in;
use crate::adapters::db::{sql_limit, Db};
use crate::core::intake::{DeliveryOutcome, SeenUpdate};

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
    /// The work item update it tells of, when its time can be told: stored as the
    /// work item's newest seen update (max) in the same transaction, so a delivery
    /// stored but not yet acted on already makes older ones stale. Its `source` is
    /// set to the new row (`delivery N`).
    pub update: Option<&'a SeenUpdate>,
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

/// The number of outcomes whose `delivery_counts` row (kept by triggers, migration 9)
/// differs from counting the deliveries, either way: 0 unless a trigger is wrong. Tests
/// and diagnostics run it; no pass does.
pub const DELIVERY_COUNTS_DRIFT: &str = "SELECT
    (SELECT count(*) FROM (SELECT outcome AS o, count(*) AS n FROM deliveries GROUP BY 1) x
      LEFT JOIN delivery_counts c ON c.outcome = x.o WHERE c.n IS DISTINCT FROM x.n)
  + (SELECT count(*) FROM delivery_counts c
      WHERE c.n <> (SELECT count(*) FROM deliveries d WHERE d.outcome = c.outcome))";

const DELIVERY_COLUMNS: &str = "id, body_sha256, delivery_id, event, body, received_at, \
     outcome, detail, attempts, processed_at, error";

fn delivery_from_row(
    r: &crate::adapters::db::sql::Row<'_>,
) -> crate::adapters::db::sql::Result<DeliveryRow> {
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
        let tx = self.immediate()?;
        let inserted: Option<i64> = tx
            .query_row(
                "INSERT INTO deliveries (body_sha256, delivery_id, event, body, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (body_sha256) DO NOTHING RETURNING id",
                params![d.body_sha256, d.delivery_id, d.event, d.body, d.received_at],
                |r| r.get(0),
            )
            .optional()?;
        let out = if let Some(id) = inserted {
            if let Some(u) = d.update {
                let source = format!("delivery {id}");
                note_update_in(
                    &tx,
                    &SeenUpdate {
                        source,
                        ..u.clone()
                    },
                    d.received_at,
                )?;
            }
            Stored::New(id)
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

    /// [`Db::insert_delivery`] whose commit waits for the WAL's fsync
    /// (`synchronous=FULL` for this one commit, then back to `NORMAL`): for a delivery
    /// whose sender is answered 200 next and never sends it again, so the row must be on
    /// disk first. Every other commit of the connection stays `NORMAL`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn insert_delivery_durably(&mut self, d: &NewDelivery<'_>) -> Result<Stored> {
        // PostgreSQL's commits wait for its WAL's flush already (`synchronous_commit`
        // on, its default).
        let Some(conn) = self.conn().as_sqlite() else {
            return self.insert_delivery(d);
        };
        conn.pragma_update(None, "synchronous", "FULL")?;
        let stored = self.insert_delivery(d);
        if let Some(conn) = self.conn().as_sqlite() {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        stored
    }

    /// Returns one delivery.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>> {
        self.query_one(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"),
            [id],
            delivery_from_row,
        )
    }

    /// Lists deliveries still `pending`, oldest first, at most `limit` (reconcile replays them).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn pending_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRow>> {
        self.query_all(
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE outcome = 'pending'
                 ORDER BY attempts, received_at, id LIMIT ?1"
            ),
            [sql_limit(limit)],
            delivery_from_row,
        )
    }

    /// Counts the deliveries `pending` and `stale`, from `delivery_counts` (kept by
    /// triggers: migration 9), whatever the history.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn delivery_counts(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT coalesce(sum(n), 0) FROM delivery_counts WHERE outcome = ?1")?;
        let mut out = std::collections::BTreeMap::new();
        for outcome in [PENDING, "stale"] {
            let n: i64 = stmt.query_row([outcome], |r| r.get(0))?;
            out.insert(outcome.to_string(), n);
        }
        Ok(out)
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

    /// Records the outcome of a delivery that has no effect in the database (`no
    /// pipeline action`, or effects already done).
    ///
    /// # Errors
    /// [`AlreadyRecorded`](crate::adapters::db::AlreadyRecorded) when it was no longer
    /// pending; SQL errors.
    pub fn record_outcome(&self, id: i64, outcome: &DeliveryOutcome, now: i64) -> Result<()> {
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

    /// Gives a pending delivery up (`given_up`, never replayed again), keeping its last
    /// error. Returns whether this call did it (false: no longer pending).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn give_up_delivery(&self, id: i64, detail: &str, error: &str, now: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE deliveries SET outcome = 'given_up', detail = ?2, error = ?3, processed_at = ?4
             WHERE id = ?1 AND outcome = 'pending'",
            params![id, detail, error, now],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::adapters::db::test_support::db;

    #[test]
    fn a_body_is_stored_once() {
        let (_d, mut db) = db();
        let new = |id| NewDelivery {
            body_sha256: "abc",
            delivery_id: Some(id),
            event: "issue",
            body: b"{}",
            received_at: 10,
            update: None,
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
        let started =
            |detail: &str| DeliveryOutcome::new(crate::core::intake::OutcomeKind::Started, detail);
        assert!(db.record_outcome(first, &started("task X"), 11).is_ok());
        let again = db.record_outcome(first, &started("again"), 12).unwrap_err();
        assert!(
            again.is::<crate::adapters::db::AlreadyRecorded>(),
            "{again:#}"
        );
        let row = db.delivery(first).unwrap().unwrap();
        assert_eq!((row.detail.as_deref(), row.error), (Some("task X"), None));
        assert!(db.pending_deliveries(10).unwrap().is_empty());
    }

    #[track_caller]
    fn assert_delivery_counts_match(db: &Db, after: &str) {
        let off: i64 = db
            .conn()
            .query_row(DELIVERY_COUNTS_DRIFT, [], |r| r.get(0))
            .unwrap();
        assert_eq!(off, 0, "delivery_counts differ from count(*) after {after}");
        for (outcome, n) in db.delivery_counts().unwrap() {
            let rows: i64 = db
                .conn()
                .query_row(
                    "SELECT count(*) FROM deliveries WHERE outcome = ?1",
                    [&outcome],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, rows, "{outcome} deliveries after {after}");
        }
    }

    #[test]
    fn kept_delivery_counts_match_count_star_after_every_kind_of_change() {
        let (_d, mut db) = db();
        let new = |sha| NewDelivery {
            body_sha256: sha,
            delivery_id: None,
            event: "issue",
            body: b"{}",
            received_at: 10,
            update: None,
        };
        assert_delivery_counts_match(&db, "nothing");
        let Stored::New(a) = db.insert_delivery(&new("a")).unwrap() else {
            panic!("new")
        };
        let Stored::New(b) = db.insert_delivery_durably(&new("b")).unwrap() else {
            panic!("new")
        };
        db.insert_delivery(&new("a")).unwrap();
        assert_delivery_counts_match(&db, "inserts (and a duplicate)");
        assert_eq!(db.delivery_counts().unwrap()["pending"], 2);
        let sync: i64 = db
            .conn()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL again after the durable insert");
        let stale = DeliveryOutcome::new(crate::core::intake::OutcomeKind::Stale, "older");
        db.record_outcome(a, &stale, 11).unwrap();
        db.fail_delivery(b, "gitea down").unwrap();
        assert_delivery_counts_match(&db, "recording an outcome");
        {
            let tx = db.conn_mut().transaction().unwrap();
            tx.execute("UPDATE deliveries SET outcome = 'ignored'", [])
                .unwrap();
            drop(tx);
        }
        assert_delivery_counts_match(&db, "a rolled-back transaction");
        db.conn()
            .execute("DELETE FROM deliveries WHERE id = ?1", [b])
            .unwrap();
        assert_delivery_counts_match(&db, "a delete");
        let counts = db.delivery_counts().unwrap();
        assert_eq!((counts["pending"], counts["stale"]), (0, 1));
    }
}
