//! Moving a SQLite install's store into an empty PostgreSQL database (`orch
//! migrate-store`, docs/scale-out.md): every row of every table, in one snapshot of the
//! source and one transaction on the target, checked before it commits.

use anyhow::{bail, ensure, Context as _, Result};

use crate::adapters::db::sql::{Begin, Value};
use crate::adapters::db::{
    Db, Engine, DELIVERY_COUNTS_DRIFT, JOB_COUNTS_DRIFT, SCHEMA_VERSION, TASK_COUNTS_DRIFT,
};

/// The tables copied row by row, parents before the rows that refer to them.
pub const COPIED: &[&str] = &[
    "tasks",
    "deliveries",
    "stage_events",
    "jobs",
    "plane_states",
    "notifications",
    "passes",
    "work_item_updates",
    "ci_verdicts",
    "hold_events",
    "task_spend",
    "project_spend",
    "plane_budget",
    "hosts",
    "leases",
    "shared_files",
];

/// The tables the target's triggers fill as the copied rows arrive (counts), checked
/// against the rows afterwards instead of copied.
pub const DERIVED: &[&str] = &["job_counts", "task_counts", "delivery_counts"];

/// What was copied: each table and its row count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Copied {
    /// The table.
    pub table: &'static str,
    /// Rows copied.
    pub rows: i64,
}

/// Copies every row of `from` (SQLite) into `to` (PostgreSQL, migrated, empty), in one
/// read snapshot and one write transaction: all of it commits or none.
///
/// # Errors
/// When the engines are not SQLite to PostgreSQL, either schema is not this orch's,
/// the target already holds rows, a row is refused, or the copy does not check out
/// (row counts per table, the derived counts); nothing is written then.
pub fn copy_store(from: &Db, to: &mut Db) -> Result<Vec<Copied>> {
    ensure!(
        from.engine() == Engine::Sqlite,
        "migrate-store copies from a SQLite file (ORCH_DB is not one)"
    );
    ensure!(
        to.engine() == Engine::Postgres,
        "migrate-store copies into a PostgreSQL database (--to postgres://...)"
    );
    for (db, which) in [(from, "source"), (&*to, "target")] {
        let v = db.schema_version()?;
        ensure!(
            v == SCHEMA_VERSION,
            "the {which} is at schema version {v}, this orch's is {SCHEMA_VERSION}: run orch init on it first"
        );
    }
    let tables: Vec<String> = from.conn().query_all(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
         ORDER BY name",
        [],
        |r| r.get(0),
    )?;
    let unknown: Vec<&String> = tables
        .iter()
        .filter(|t| !COPIED.contains(&t.as_str()) && !DERIVED.contains(&t.as_str()))
        .collect();
    ensure!(
        unknown.is_empty(),
        "the source has tables this orch does not know how to copy: {unknown:?}"
    );
    let read = from.conn().begin(Begin::Read)?;
    let write = to.conn().begin(Begin::Write)?;
    // Checked under the writer lock: a host already pointed at the target waits.
    for t in COPIED {
        let n: i64 = write.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
        if n > 0 {
            bail!(
                "the target already holds {n} rows in {t}: migrate-store copies into an empty database only (a fresh one after orch init)"
            );
        }
    }
    let mut copied = Vec::new();
    for &table in COPIED {
        let columns: Vec<String> = read.query_all(
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            [],
            |r| r.get(0),
        )?;
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            marks.join(", ")
        );
        // Row by row from the source's cursor: a table of millions of rows (or of
        // large webhook bodies) is never held in memory at once.
        let mut select = read.prepare(&format!("SELECT {} FROM {table}", columns.join(", ")))?;
        let mut rows = select.query([])?;
        let mut read_rows = 0i64;
        while let Some(r) = rows.next()? {
            let row: Vec<Value> = (0..columns.len())
                .map(|i| r.get::<_, Value>(i))
                .collect::<Result<_, _>>()?;
            read_rows += 1;
            // Named by its first column (the id, where there is one), never dumped: a
            // row may hold a whole webhook body.
            let key = match row.first() {
                Some(Value::Int(i)) => i.to_string(),
                Some(Value::Text(t)) => t.chars().take(80).collect(),
                _ => format!("#{read_rows}"),
            };
            write
                .execute(&insert, row)
                .with_context(|| format!("copying row {key} of {table}"))?;
        }
        let on_target: i64 =
            write.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        let n = read_rows;
        ensure!(
            on_target == n,
            "{table}: {n} rows read but {on_target} on the target"
        );
        copied.push(Copied { table, rows: n });
    }
    // Ids the source gave are kept; the target's next ones start after them.
    let identities: Vec<(String, String)> = write.query_all(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
          WHERE is_identity = 'YES' AND table_schema = current_schema()",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    for (table, column) in identities {
        write.query_row(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                               coalesce(max({column}), 0) + 1, false) FROM {table}"
            ),
            [],
            |r| r.get::<_, i64>(0),
        )?;
    }
    for (name, sql) in [
        ("job_counts", JOB_COUNTS_DRIFT),
        ("task_counts", TASK_COUNTS_DRIFT),
        ("delivery_counts", DELIVERY_COUNTS_DRIFT),
    ] {
        let drift: i64 = write.query_row(sql, [], |r| r.get(0))?;
        ensure!(
            drift == 0,
            "{name} differs from the copied rows in {drift} places"
        );
    }
    write.commit()?;
    drop(read);
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_schema_is_copied_or_derived() {
        let (_d, db) = crate::adapters::db::test_support::db();
        let tables: Vec<String> = db
            .conn()
            .query_all(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        for t in &tables {
            assert!(
                COPIED.contains(&t.as_str()) || DERIVED.contains(&t.as_str()),
                "{t} is neither copied nor derived"
            );
        }
        assert_eq!(tables.len(), COPIED.len() + DERIVED.len());
    }
}
