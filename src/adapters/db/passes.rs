//! The `passes` table: the last pass of every subcommand, for `status`.

use std::collections::BTreeMap;

use anyhow::Result;
use rusqlite::params;

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
