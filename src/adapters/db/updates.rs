//! SQL for the newest update seen of each work item (table `work_item_updates`,
//! migration 6): one row per work item, only ever raised (max()), by a stored delivery
//! (in the transaction that stores it, and again in the one that acts on it) and by a
//! listing. A leaf: it imports nothing else of the store. No decisions here
//! (`core::intake::freshness` decides).

use crate::adapters::db::sql::{params, Conn, OptionalExtension};
use anyhow::Result;

use crate::adapters::db::Db;
use crate::core::intake::SeenUpdate;

/// Raises the work item's newest seen update to `u` when `u` is strictly newer (or
/// the first one seen).
pub(super) fn note_update_in(conn: &Conn, u: &SeenUpdate, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO work_item_updates (work_item_id, updated_us, updated_at, source, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (work_item_id) DO UPDATE SET
             updated_us = excluded.updated_us, updated_at = excluded.updated_at,
             source = excluded.source, seen_at = excluded.seen_at
         WHERE excluded.updated_us > work_item_updates.updated_us",
    )?
    .execute(params![u.work_item_id, u.micros, u.text, u.source, now])?;
    Ok(())
}

/// Returns the newest update seen of a work item.
pub(super) fn newest_update_in(conn: &Conn, work_item_id: &str) -> Result<Option<SeenUpdate>> {
    Ok(conn
        .query_row(
            "SELECT work_item_id, updated_us, updated_at, source FROM work_item_updates
             WHERE work_item_id = ?1",
            [work_item_id],
            |r| {
                Ok(SeenUpdate {
                    work_item_id: r.get(0)?,
                    micros: r.get(1)?,
                    text: r.get(2)?,
                    source: r.get(3)?,
                })
            },
        )
        .optional()?)
}

impl Db {
    /// Returns the newest update seen of a work item (`None`: none seen).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn newest_update(&self, work_item_id: &str) -> Result<Option<SeenUpdate>> {
        newest_update_in(self.conn(), work_item_id)
    }

    /// Raises each work item's newest seen update (a listing's page), in one
    /// transaction.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn note_updates(&mut self, updates: &[SeenUpdate], now: i64) -> Result<()> {
        let tx = self.immediate()?;
        for u in updates {
            note_update_in(&tx, u, now)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::adapters::db::test_support::db;

    fn seen(micros: i64, source: &str) -> SeenUpdate {
        SeenUpdate {
            work_item_id: "w".into(),
            micros,
            text: format!("t{micros}"),
            source: source.into(),
        }
    }

    #[test]
    fn the_newest_update_only_rises() {
        let (_d, mut db) = db();
        assert_eq!(db.newest_update("w").unwrap(), None);
        db.note_updates(&[seen(20, "delivery 1")], 1).unwrap();
        db.note_updates(&[seen(10, "listing"), seen(20, "delivery 2")], 2)
            .unwrap();
        assert_eq!(db.newest_update("w").unwrap(), Some(seen(20, "delivery 1")));
        db.note_updates(&[seen(30, "listing")], 3).unwrap();
        assert_eq!(db.newest_update("w").unwrap(), Some(seen(30, "listing")));
        assert_eq!(db.newest_update("other").unwrap(), None);
    }
}
