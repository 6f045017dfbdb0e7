//! The `leases` table: one holder at a time across hosts (the merge lease and the passes
//! that must run once, under PostgreSQL; `adapters::lease` holds them). A take is one
//! write transaction (the writer lock): read the row, judge it (`core::lease`), insert it
//! or raise its generation, guarded on what was read. Renewals and releases name the
//! generation they took, so a holder that was taken over can change nothing.
//!
//! Time is [`Db::lease_now`]: `ORCH_NOW` when pinned (tests), else the database's clock
//! on PostgreSQL (one clock for every host), the system clock on SQLite (one host).

use anyhow::Result;

use crate::adapters::db::sql::{params, Conn, OptionalExtension, Row};
use crate::adapters::db::{Db, Engine};
use crate::core::job::Liveness;
use crate::core::lease::{judge_row, next_generation, LeaseRow, RowVerdict};

/// What a take found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTake {
    /// Taken at `generation` until `expires_at`; `over` is the row it replaced, with
    /// why it could be taken (`None` for a new row).
    Taken {
        /// The generation this holder renews and releases.
        generation: i64,
        /// When it lapses unless renewed.
        expires_at: i64,
        /// The row taken over, and why it could be.
        over: Option<(LeaseRow, RowVerdict)>,
    },
    /// Someone else holds it.
    Busy(LeaseRow),
}

const COLUMNS: &str = "name, holder, generation, acquired_at, expires_at, detail, released_at";

fn lease_row(r: &Row<'_>) -> crate::adapters::db::sql::Result<LeaseRow> {
    Ok(LeaseRow {
        name: r.get(0)?,
        holder: r.get(1)?,
        generation: r.get(2)?,
        acquired_at: r.get(3)?,
        expires_at: r.get(4)?,
        detail: r.get(5)?,
        released_at: r.get(6)?,
    })
}

/// The time leases are judged at on `conn`: `pinned` when set, else the database's clock
/// (PostgreSQL) or the system clock (SQLite), in unix seconds.
fn now_in(conn: &Conn, pinned: Option<i64>) -> Result<i64> {
    if let Some(now) = pinned {
        return Ok(now);
    }
    Ok(match conn.engine() {
        Engine::Postgres => conn.query_row(
            "SELECT CAST(floor(extract(epoch FROM clock_timestamp())) AS BIGINT)",
            [],
            |r| r.get(0),
        )?,
        Engine::Sqlite => jiff::Timestamp::now().as_second(),
    })
}

fn row_in(conn: &Conn, name: &str) -> Result<Option<LeaseRow>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM leases WHERE name = ?1"),
            [name],
            lease_row,
        )
        .optional()?)
}

impl Db {
    /// The time leases are judged at: `pinned` (`ORCH_NOW`) when set, else the
    /// database's clock on PostgreSQL (every host reads the same one), the system clock
    /// on SQLite.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn lease_now(&self, pinned: Option<i64>) -> Result<i64> {
        now_in(self.conn(), pinned)
    }

    /// Returns the lease row `name`, if it was ever taken.
    ///
    /// # Errors
    /// On SQL errors (a column of the wrong type among them).
    pub fn lease_row(&self, name: &str) -> Result<Option<LeaseRow>> {
        row_in(self.conn(), name)
    }

    /// Takes lease `name` for `holder` for `ttl_s` seconds when it is free, expired, or
    /// held by a process of this host that is gone (`liveness` reads a row's holder when
    /// it is a process here, `None` otherwise). One write transaction: among racing
    /// takers exactly one wins.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        ttl_s: i64,
        pinned: Option<i64>,
        detail: Option<&str>,
        liveness: impl Fn(&LeaseRow) -> Option<Liveness>,
    ) -> Result<LeaseTake> {
        let tx = self.immediate()?;
        let now = now_in(&tx, pinned)?;
        let row = row_in(&tx, name)?;
        let verdict = judge_row(row.as_ref(), now, row.as_ref().and_then(&liveness));
        let generation = next_generation(row.as_ref());
        let expires_at = now.saturating_add(ttl_s);
        let taken = match (&row, verdict) {
            (Some(r), RowVerdict::Held) => return Ok(LeaseTake::Busy(r.clone())),
            (None, _) => tx
                .query_row(
                    "INSERT INTO leases (name, holder, generation, acquired_at, expires_at, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (name) DO NOTHING RETURNING generation",
                    params![name, holder, generation, now, expires_at, detail],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .is_some(),
            // Guarded on the row as read (generation and expiry), so a renewal that
            // slipped in between makes this take find nothing to change.
            (Some(r), _) => {
                tx.execute(
                    "UPDATE leases SET holder = ?3, generation = ?4, acquired_at = ?5,
                         expires_at = ?6, detail = ?7, released_at = NULL
                     WHERE name = ?1 AND generation = ?2 AND expires_at = ?8",
                    params![
                        name,
                        r.generation,
                        holder,
                        generation,
                        now,
                        expires_at,
                        detail,
                        r.expires_at
                    ],
                )? == 1
            }
        };
        if !taken {
            drop(tx);
            // Changed under the guard: whoever changed it holds it now.
            return Ok(match self.lease_row(name)? {
                Some(r) => LeaseTake::Busy(r),
                None => anyhow::bail!("lease {name} changed while it was taken"),
            });
        }
        tx.commit()?;
        Ok(LeaseTake::Taken {
            generation,
            expires_at,
            over: row.map(|r| (r, verdict)),
        })
    }

    /// Extends lease `name` held at `generation` to `ttl_s` seconds from now; `None`
    /// when that generation no longer holds it (taken over, or released).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn renew_lease(
        &mut self,
        name: &str,
        generation: i64,
        ttl_s: i64,
        pinned: Option<i64>,
    ) -> Result<Option<i64>> {
        let tx = self.immediate()?;
        let expires_at = now_in(&tx, pinned)?.saturating_add(ttl_s);
        let n = tx.execute(
            "UPDATE leases SET expires_at = ?3
             WHERE name = ?1 AND generation = ?2 AND released_at IS NULL",
            params![name, generation, expires_at],
        )?;
        tx.commit()?;
        Ok((n == 1).then_some(expires_at))
    }

    /// Releases lease `name` held at `generation`: it is free from now (the row stays,
    /// so the generation keeps rising); `false` when that generation no longer holds it.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn release_lease(
        &mut self,
        name: &str,
        generation: i64,
        pinned: Option<i64>,
    ) -> Result<bool> {
        let tx = self.immediate()?;
        let now = now_in(&tx, pinned)?;
        let n = tx.execute(
            "UPDATE leases SET expires_at = ?3, released_at = ?3
             WHERE name = ?1 AND generation = ?2 AND released_at IS NULL",
            params![name, generation, now],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        (dir, db)
    }

    fn nobody(_: &LeaseRow) -> Option<Liveness> {
        None
    }

    fn take(db: &mut Db, holder: &str, now: i64) -> LeaseTake {
        db.take_lease("merge", holder, 60, Some(now), Some("{}"), nobody)
            .unwrap()
    }

    #[test]
    fn take_hold_expire_take_over_renew_and_release_by_generation() {
        let (_d, mut db) = db();
        assert_eq!(db.lease_row("merge").unwrap(), None);
        let LeaseTake::Taken {
            generation: 1,
            expires_at: 160,
            over: None,
        } = take(&mut db, "a:1:-", 100)
        else {
            panic!("a free lease is taken at generation 1")
        };
        let LeaseTake::Busy(row) = take(&mut db, "b:2:-", 159) else {
            panic!("held until it expires")
        };
        assert_eq!((row.holder.as_str(), row.generation), ("a:1:-", 1));
        let LeaseTake::Taken {
            generation: 2,
            expires_at: 220,
            over: Some((old, RowVerdict::Expired)),
        } = take(&mut db, "b:2:-", 160)
        else {
            panic!("taken over once expired")
        };
        assert_eq!(old.holder, "a:1:-");
        // The old holder can neither renew nor release what it lost.
        assert_eq!(db.renew_lease("merge", 1, 60, Some(170)).unwrap(), None);
        assert!(!db.release_lease("merge", 1, Some(170)).unwrap());
        assert_eq!(
            db.renew_lease("merge", 2, 60, Some(170)).unwrap(),
            Some(230)
        );
        assert!(matches!(take(&mut db, "c:3:-", 229), LeaseTake::Busy(_)));
        assert!(db.release_lease("merge", 2, Some(180)).unwrap());
        assert!(!db.release_lease("merge", 2, Some(181)).unwrap(), "once");
        assert_eq!(db.renew_lease("merge", 2, 60, Some(182)).unwrap(), None);
        let row = db.lease_row("merge").unwrap().unwrap();
        assert_eq!(
            (row.generation, row.expires_at, row.released_at),
            (2, 180, Some(180))
        );
        let LeaseTake::Taken {
            generation: 3,
            over: Some((_, RowVerdict::Released)),
            ..
        } = take(&mut db, "c:3:-", 180)
        else {
            panic!("a released lease is free")
        };
        assert_eq!(db.lease_row("merge").unwrap().unwrap().released_at, None);
    }

    #[test]
    fn a_gone_holder_of_this_host_is_taken_over_before_expiry() {
        let (_d, mut db) = db();
        take(&mut db, "a:1:-", 100);
        let gone = |_: &LeaseRow| Some(Liveness::Dead);
        let t = db
            .take_lease("merge", "a:2:-", 60, Some(101), None, gone)
            .unwrap();
        assert!(matches!(
            t,
            LeaseTake::Taken {
                generation: 2,
                over: Some((_, RowVerdict::HolderGone)),
                ..
            }
        ));
    }

    #[test]
    fn bad_rows_are_judged_not_panicked_on() {
        let (_d, mut db) = db();
        db.conn()
            .execute(
                "INSERT INTO leases (name, holder, generation, acquired_at, expires_at, detail)
                 VALUES ('merge', '\u{1}garbage::', -3, -100, -50, 'not json')",
                [],
            )
            .unwrap();
        assert!(matches!(
            take(&mut db, "a:1:-", 0),
            LeaseTake::Taken { generation: -2, .. }
        ));
    }

    #[test]
    fn the_unpinned_clock_is_the_system_clock_on_sqlite() {
        let (_d, db) = db();
        let now = db.lease_now(None).unwrap();
        assert!((now - jiff::Timestamp::now().as_second()).abs() <= 2);
        assert_eq!(db.lease_now(Some(5)).unwrap(), 5);
    }
}
