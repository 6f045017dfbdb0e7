//! The `ci_verdicts` table: the green CI verdict of each PR head seen, keyed by repo and
//! head SHA, so a pass reads a head's combined status only until it passed. Failures
//! (a CI re-run of the same commit can turn them green), pending and other verdicts are
//! never stored ([`CiState::is_kept`]).

use std::collections::HashSet;

use crate::adapters::db::sql::{params, OptionalExtension, Value};
use anyhow::Result;

use crate::adapters::db::Db;
use crate::core::facts::CiState;

impl Db {
    /// Returns the kept (green) CI verdict recorded for `head_sha` in `repo`, if any.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn ci_verdict(&self, repo: &str, head_sha: &str) -> Result<Option<CiState>> {
        let name: Option<String> = self
            .conn()
            .prepare_cached("SELECT verdict FROM ci_verdicts WHERE repo = ?1 AND head_sha = ?2")?
            .query_row(params![repo, head_sha], |r| r.get(0))
            .optional()?;
        Ok(name.as_deref().and_then(CiState::from_kept_name))
    }

    /// Returns which of `heads` have a green verdict recorded in `repo`, in one query
    /// per 32 heads (one chunked `IN`): what a pass reads once for a repo's listed open pulls
    /// instead of once per gated task.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn green_heads(&self, repo: &str, heads: &[&str]) -> Result<HashSet<String>> {
        let sql = format!(
            "SELECT head_sha FROM ci_verdicts WHERE repo = ?1 AND head_sha IN ({})",
            super::in_marks(2)
        );
        let mut green = HashSet::new();
        for chunk in heads.chunks(super::IN_CHUNK) {
            let chunk = chunk
                .iter()
                .map(|h| Value::Text((*h).to_string()))
                .collect();
            let values = super::padded_in(vec![Value::Text(repo.to_string())], chunk);
            green.extend(self.query_all(&sql, values, |r| r.get::<_, String>(0))?);
        }
        Ok(green)
    }

    /// Records `verdict` for `head_sha` in `repo` when it is kept (success); returns
    /// whether a row was written (any other verdict, or one already recorded, writes
    /// nothing).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_ci_verdict(
        &self,
        repo: &str,
        head_sha: &str,
        verdict: &CiState,
        now: i64,
    ) -> Result<bool> {
        let Some(name) = verdict.kept_name() else {
            return Ok(false);
        };
        let n = self
            .conn()
            .prepare_cached(
                "INSERT INTO ci_verdicts (repo, head_sha, verdict, recorded_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (repo, head_sha) DO NOTHING",
            )?
            .execute(params![repo, head_sha, name, now])?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::adapters::db::test_support::db;
    use crate::core::facts::CiState;

    /// The read per listing answers as the read per head does: past one chunk, with
    /// heads green only in another repo, and heads never seen.
    #[test]
    fn green_heads_read_as_one_head_at_a_time() {
        let (_dir, db) = db();
        let heads: Vec<String> = (0..70).map(|n| format!("h{n}")).collect();
        for (n, h) in heads.iter().enumerate() {
            let repo = if n % 3 == 0 { "acme/b" } else { "acme/a" };
            if n % 5 != 0 {
                db.record_ci_verdict(repo, h, &CiState::Success, 1).unwrap();
            }
        }
        let asked: Vec<&str> = heads.iter().map(String::as_str).collect();
        let green = db.green_heads("acme/a", &asked).unwrap();
        for h in &heads {
            let one = db.ci_verdict("acme/a", h).unwrap() == Some(CiState::Success);
            assert_eq!(green.contains(h), one, "{h}");
        }
        assert_eq!(green.len(), 37);
        assert!(db.green_heads("acme/a", &[]).unwrap().is_empty());
    }

    #[test]
    fn only_green_verdicts_are_kept_per_repo_and_head() {
        let (_dir, db) = db();
        for not_final in [
            CiState::Failure,
            CiState::Pending,
            CiState::None,
            CiState::Warning,
            CiState::Other("queued".into()),
        ] {
            assert!(!db.record_ci_verdict("acme/a", "h1", &not_final, 1).unwrap());
            assert_eq!(db.ci_verdict("acme/a", "h1").unwrap(), None);
        }
        // A failure re-run green on the same commit is kept once.
        assert!(db
            .record_ci_verdict("acme/a", "h1", &CiState::Success, 2)
            .unwrap());
        assert!(!db
            .record_ci_verdict("acme/a", "h1", &CiState::Success, 3)
            .unwrap());
        assert_eq!(
            db.ci_verdict("acme/a", "h1").unwrap(),
            Some(CiState::Success)
        );
        // Another repo's head of the same SHA is another key.
        assert_eq!(db.ci_verdict("acme/b", "h1").unwrap(), None);
        assert!(db
            .record_ci_verdict("acme/b", "h1", &CiState::Success, 4)
            .unwrap());
        assert_eq!(
            db.ci_verdict("acme/b", "h1").unwrap(),
            Some(CiState::Success)
        );
    }
}
