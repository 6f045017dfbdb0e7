//! A webhook delivery's outcome recorded inside the transaction of the write it caused
//! (a start, a move, a requeue): the one piece of delivery SQL the other tables' writes
//! share, guarded by the newest update seen of the delivery's work item. Imports only
//! `updates.rs` of the store.

use crate::adapters::db::sql::{params, Conn};
use anyhow::Result;

use crate::adapters::db::updates::{newest_update_in, note_update_in};
use crate::core::intake::{DeliveryOutcome, SeenUpdate};

/// The delivery already has an outcome (another process recorded it first): the write
/// that would have recorded it again was rolled back with everything it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delivery {0} already has an outcome (another process recorded it first)")]
pub struct AlreadyRecorded(pub i64);

/// A strictly newer update of the delivery's work item became known before its write
/// committed (another delivery or a listing stored it meanwhile): the write was rolled
/// back with everything it did, and the delivery is stale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("work item {} has a newer update ({}, {}) than this delivery's", .newest.work_item_id, .newest.text, .newest.source)]
pub struct Superseded {
    /// The newest update seen.
    pub newest: SeenUpdate,
}

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
    /// The work item update the delivery tells of, when its time can be told: the
    /// write commits only while nothing strictly newer is known.
    pub update: Option<&'a SeenUpdate>,
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
            update: None,
        }
    }

    /// Guards the write by the delivery's work item update (see [`Superseded`]).
    pub fn guarded(mut self, update: Option<&'a SeenUpdate>) -> Recorder<'a, T> {
        self.update = update;
        self
    }

    /// Records the outcome of `done` inside the write's open transaction.
    ///
    /// # Errors
    /// [`AlreadyRecorded`] (inside `anyhow`) when the delivery is no longer pending: the
    /// caller returns it, which rolls the whole transaction back; [`Superseded`] the
    /// same way when a strictly newer update of the work item is known. SQL errors
    /// otherwise.
    pub(crate) fn record_in(&self, conn: &Conn, done: &T) -> Result<()> {
        if let Some(u) = self.update {
            note_update_in(conn, u, self.now)?;
            if let Some(newest) = newest_update_in(conn, &u.work_item_id)? {
                if crate::core::intake::is_superseded(u.micros, &newest) {
                    return Err(Superseded { newest }.into());
                }
            }
        }
        let outcome = (self.describe)(done);
        record_outcome_in(conn, self.delivery, &outcome, self.now)
    }
}

/// Records a pending delivery's outcome; [`AlreadyRecorded`] when it is not pending.
pub(super) fn record_outcome_in(
    conn: &Conn,
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
