//! The `passes` table: the last pass of every subcommand, for `status`.

use std::collections::BTreeMap;

use crate::adapters::db::sql::params;
use anyhow::Result;

use crate::adapters::db::Db;

/// One pass's record for `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PassRecord {
    /// The subcommand.
    pub command: String,
    /// When it started (unix seconds).
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// `ok`, `error`, or `no`.
    pub outcome: String,
    /// Its counts.
    pub counts: BTreeMap<String, serde_json::Value>,
}

impl Db {
    /// Records a pass for `status` (one row per subcommand, replaced each pass).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_pass(&self, pass: &PassRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO passes (command, started_at, duration_ms, outcome, counts)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (command) DO UPDATE SET started_at = excluded.started_at,
                 duration_ms = excluded.duration_ms, outcome = excluded.outcome,
                 counts = excluded.counts",
            params![
                pass.command,
                pass.started_at,
                pass.duration_ms,
                pass.outcome,
                serde_json::to_string(&pass.counts)?
            ],
        )?;
        Ok(())
    }

    /// Returns the last pass of every subcommand that has run, by name.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn passes(&self) -> Result<Vec<PassRecord>> {
        self.query_all(
            "SELECT command, started_at, duration_ms, outcome, counts FROM passes ORDER BY command",
            [],
            |r| {
                let counts: String = r.get(4)?;
                Ok(PassRecord {
                    command: r.get(0)?,
                    started_at: r.get(1)?,
                    duration_ms: r.get(2)?,
                    outcome: r.get(3)?,
                    counts: serde_json::from_str(&counts).unwrap_or_default(),
                })
            },
        )
    }
}

/// The last Plane rate-limit budget seen: `X-RateLimit-Remaining` and when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PlaneBudget {
    /// Requests left in Plane's window.
    pub remaining: i64,
    /// When the answer carrying it was read (unix seconds, the pass's clock).
    pub seen_at: i64,
}

impl Db {
    /// Keeps `budget` as the last Plane budget seen, unless a newer one is already kept
    /// (two passes racing: the later reading wins, whichever commits last).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn record_plane_budget(&self, budget: PlaneBudget) -> Result<()> {
        self.conn().execute(
            "INSERT INTO plane_budget (id, remaining, seen_at) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining,
                 seen_at = excluded.seen_at
             WHERE excluded.seen_at >= plane_budget.seen_at",
            params![budget.remaining, budget.seen_at],
        )?;
        Ok(())
    }

    /// The last Plane budget seen, if any command has read one.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn plane_budget(&self) -> Result<Option<PlaneBudget>> {
        use crate::adapters::db::sql::OptionalExtension as _;
        Ok(self
            .conn()
            .query_row(
                "SELECT remaining, seen_at FROM plane_budget WHERE id = 1",
                [],
                |r| {
                    Ok(PlaneBudget {
                        remaining: r.get(0)?,
                        seen_at: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}
