//! A webhook delivery's outcome recorded inside the transaction of the write it caused
//! (a start, a move, a requeue): the one piece of delivery SQL the other tables' writes
//! share. A leaf: it imports nothing else of the store.

use anyhow::Result;
use rusqlite::{params, Connection};

use crate::core::intake::DeliveryOutcome;

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
    pub describe: &'a dyn Fn(&T) -> DeliveryOutcome,
}

impl<'a, T> Recorder<'a, T> {
    /// The recorder of delivery `delivery`'s outcome, recorded at `now`, as `describe`
    /// says it from what the write did.
    pub fn new(
        delivery: i64,
        now: i64,
        describe: &'a dyn Fn(&T) -> DeliveryOutcome,
    ) -> Recorder<'a, T> {
        Recorder {
            delivery,
            now,
            describe,
        }
    }

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
pub(super) fn record_outcome_in(
    conn: &Connection,
    id: i64,
    outcome: &DeliveryOutcome,
    now: i64,
) -> Result<()> {
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
