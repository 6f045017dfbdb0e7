//! The `shared_files` table (migration 17): state that is a file on one host and must
//! reach every host under PostgreSQL. Kinds: `artefact` (key `<task key>/<file>`, or
//! `<task key>/history/<file>` once set aside), `window` (key `<repo>/<work item>`, the
//! JSON a post-deploy window's `window.json` holds) and `cursor` (key `reconcile`).
//! The bodies are bytes, stored as given: each caller parses them as it parses the file.
//! Under SQLite the table stays empty (the files are the state).

use anyhow::Result;

use crate::adapters::db::sql::{params, OptionalExtension};
use crate::adapters::db::Db;

/// Kind of an agent artefact (or a feedback file, or an orch-written report).
pub const KIND_ARTEFACT: &str = "artefact";
/// Kind of a post-deploy window.
pub const KIND_WINDOW: &str = "window";
/// Kind of a cursor (the reconcile walk's).
pub const KIND_CURSOR: &str = "cursor";

impl Db {
    /// Returns the body stored under `kind`/`key`, if any.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn shared_file(&self, kind: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT body FROM shared_files WHERE kind = ?1 AND key = ?2")?
            .query_row(params![kind, key], |r| r.get(0))
            .optional()?)
    }

    /// Stores `body` under `kind`/`key`, replacing what was there.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn put_shared_file(&self, kind: &str, key: &str, body: &[u8], now: i64) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO shared_files (kind, key, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, key) DO UPDATE
                 SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![kind, key, body.to_vec(), now])?;
        Ok(())
    }

    /// Removes `kind`/`key`; returns whether a row was there.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn delete_shared_file(&self, kind: &str, key: &str) -> Result<bool> {
        let n = self
            .conn()
            .prepare_cached("DELETE FROM shared_files WHERE kind = ?1 AND key = ?2")?
            .execute(params![kind, key])?;
        Ok(n > 0)
    }

    /// Moves the body of `kind`/`from` to `kind`/`to` (replacing a row there); returns
    /// whether `from` was there. The copy is written before `from` is removed, so a
    /// crash in between leaves `from` in place, as an unmoved file is (its caller moves
    /// it again before it commits what depends on the move).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn rename_shared_file(&self, kind: &str, from: &str, to: &str, now: i64) -> Result<bool> {
        let copied = self
            .conn()
            .prepare_cached(
                "INSERT INTO shared_files (kind, key, body, updated_at)
                 SELECT kind, ?3, body, ?4 FROM shared_files WHERE kind = ?1 AND key = ?2
                 ON CONFLICT (kind, key) DO UPDATE
                 SET body = excluded.body, updated_at = excluded.updated_at",
            )?
            .execute(params![kind, from, to, now])?;
        if copied == 0 {
            return Ok(false);
        }
        self.delete_shared_file(kind, from)?;
        Ok(true)
    }

    /// Returns every `(key, body)` of `kind` whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn shared_files_under(&self, kind: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let len = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
        let rows = self
            .conn()
            .prepare_cached(
                "SELECT key, body FROM shared_files
                 WHERE kind = ?1 AND substr(key, 1, ?3) = ?2 ORDER BY key",
            )?
            .query_map(params![kind, prefix, len], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::db;

    #[test]
    fn put_get_rename_list_delete() {
        let (_dir, db) = db();
        assert_eq!(db.shared_file(KIND_ARTEFACT, "K-1/a.md").unwrap(), None);
        db.put_shared_file(KIND_ARTEFACT, "K-1/a.md", b"one", 1)
            .unwrap();
        db.put_shared_file(KIND_ARTEFACT, "K-1/a.md", b"two\xff", 2)
            .unwrap();
        db.put_shared_file(KIND_ARTEFACT, "K-10/a.md", b"other", 2)
            .unwrap();
        db.put_shared_file(KIND_WINDOW, "K-1/a.md", b"{}", 2)
            .unwrap();
        assert_eq!(
            db.shared_file(KIND_ARTEFACT, "K-1/a.md").unwrap().unwrap(),
            b"two\xff"
        );
        assert!(db
            .rename_shared_file(KIND_ARTEFACT, "K-1/a.md", "K-1/history/a.1.md", 3)
            .unwrap());
        assert!(!db
            .rename_shared_file(KIND_ARTEFACT, "K-1/a.md", "K-1/history/a.2.md", 3)
            .unwrap());
        let under = db.shared_files_under(KIND_ARTEFACT, "K-1/").unwrap();
        assert_eq!(
            under,
            vec![("K-1/history/a.1.md".to_string(), b"two\xff".to_vec())]
        );
        assert!(db.delete_shared_file(KIND_WINDOW, "K-1/a.md").unwrap());
        assert!(!db.delete_shared_file(KIND_WINDOW, "K-1/a.md").unwrap());
    }
}
