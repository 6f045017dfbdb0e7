//! The `ci_verdicts` table: the green CI verdict of each PR head seen, keyed by repo and
//! head SHA, so a pass reads a head's combined status only until it passed. Failures
//! (a CI re-run of the same commit can turn them green), pending and other verdicts are
//! never stored ([`CiState::is_kept`]).

use crate::adapters::db::sql::{params, OptionalExtension};
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
