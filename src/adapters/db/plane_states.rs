//! SQL for the per-project Plane state cache (table `plane_states`, migration 2). The
//! cache is keyed by the Plane project id: a state id is only ever resolved within its
//! own project. No decisions here.

use crate::adapters::db::sql::{params, Conn, Engine, Row};
use anyhow::Result;

use crate::adapters::db::{is_postgres_url, Db};
use crate::core::intake::PlaneState;

/// Reads a state from the columns `state_id, name, state_group` starting at `first`.
fn state_from_row(r: &Row<'_>, first: usize) -> crate::adapters::db::sql::Result<PlaneState> {
    Ok(PlaneState {
        id: r.get(first)?,
        name: r.get(first + 1)?,
        group: r.get(first + 2)?,
    })
}

impl Db {
    /// Returns a cached state of a Plane project (by Plane project id).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn plane_state(
        &self,
        plane_project_id: &str,
        state_id: &str,
    ) -> Result<Option<PlaneState>> {
        self.query_one(
            "SELECT state_id, name, state_group FROM plane_states
             WHERE project = ?1 AND lower(state_id) = lower(?2)",
            params![plane_project_id, state_id],
            |r| state_from_row(r, 0),
        )
    }

    /// Returns every cached state of a Plane project, by name.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn plane_states(&self, plane_project_id: &str) -> Result<Vec<PlaneState>> {
        self.query_all(
            "SELECT state_id, name, state_group FROM plane_states WHERE project = ?1
             ORDER BY name, state_id",
            [plane_project_id],
            |r| state_from_row(r, 0),
        )
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
        let tx = self.immediate()?;
        tx.execute(
            "DELETE FROM plane_states WHERE project = ?1",
            [plane_project_id],
        )?;
        for s in states {
            tx.execute(
                "INSERT INTO plane_states (project, state_id, name, state_group, fetched_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (project, state_id) DO UPDATE SET name = excluded.name,
                     state_group = excluded.state_group, fetched_at = excluded.fetched_at",
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
             WHERE plane_states.name <> excluded.name
                OR plane_states.state_group <> excluded.state_group",
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
    let conn = if is_postgres_url(path) {
        Conn::postgres(super::pg::connect(path.to_str().unwrap_or_default())?)
    } else {
        if !path.exists() {
            return Ok(Vec::new());
        }
        Conn::sqlite(rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?)
    };
    let has_table: bool = match conn.engine() {
        Engine::Sqlite => conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'plane_states'",
            [],
            |r| r.get(0),
        )?,
        Engine::Postgres => {
            conn.query_row("SELECT to_regclass('plane_states') IS NOT NULL", [], |r| {
                r.get(0)
            })?
        }
    };
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT project, state_id, name, state_group FROM plane_states ORDER BY project, name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, state_from_row(r, 1)?)))?;
    Ok(rows.collect::<crate::adapters::db::sql::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::db;

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
