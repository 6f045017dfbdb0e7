//! The SQLite store: the connection, the numbered migrations and all SQL, one file per
//! table or concern.
//!
//! Every pass opens the database read-write with WAL, a busy timeout and foreign keys
//! on, and brings the schema up to date (migrations are idempotent and numbered by
//! `PRAGMA user_version`). A database written by a newer `orch` is refused. Each
//! read-modify-write runs in one `IMMEDIATE` transaction; guarded `UPDATE`s are the
//! second line of defence behind the pass locks. This module returns `core` types and
//! makes no decisions beyond the transition table it enforces.
//!
//! The files add methods to [`Db`]. Each imports this file and at most the files above
//! it in this list, never one below (so no import cycle); callers import everything
//! from here.
//!
//! - `updates.rs`: the newest update seen of each work item (stale deliveries);
//!   imports nothing of the store.
//! - `recorder.rs`: a webhook delivery's outcome recorded inside a write's transaction
//!   ([`Recorder`]), guarded by the newest update seen; uses `updates.rs`.
//! - `tasks.rs`: the `tasks` and `stage_events` rows, creation, the per-round fields.
//! - `jobs.rs`: the `jobs` rows, enqueueing, and the claims, stamps and flips of
//!   `dispatch`, `run-job`, `reap` and `job`.
//! - `moves.rs`: [`Db::move_task`], the only way a stage changes ([`Move`]); uses
//!   `jobs.rs`'s `enqueue_in`.
//! - `start.rs`: a task's start (task, analyst job, outcome) and its branch record; uses
//!   `tasks.rs`'s `create_in` and `jobs.rs`'s `enqueue_in`.
//! - `rounds.rs`: the name a new round's branch takes.
//! - `priority.rs`: tasks' priorities refreshed from a reconcile listing.
//! - `deliveries.rs`: webhook deliveries; `plane_states.rs`: the Plane state cache.
//! - `notifications.rs`, `passes.rs`, `reconcile.rs`: what their names say;
//!   `ci_verdicts.rs`: the final CI verdict of each PR head seen; `holds.rs`: human
//!   holds (freezes) per project and their record; `backup.rs`: the online backup
//!   (imports nothing of the store but the busy timeout); `leases.rs`: lease rows
//!   across hosts (imports nothing of the store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rusqlite::{Connection, OpenFlags};

pub use sql::{Begin, Conn, Engine, OptionalExtension, Params, Row, Tx};

mod backup;
mod ci_verdicts;
mod deliveries;
mod holds;
mod jobs;
mod leases;
mod migrate_store;
mod moves;
mod notifications;
mod passes;
mod pg;
mod plane_states;
mod priority;
mod reconcile;
mod recorder;
mod rounds;
pub mod shared_files;
mod spend;
pub mod sql;
mod start;
mod tasks;
mod updates;

pub use backup::{backup_database, BackupDone};
pub use deliveries::{DeliveryRow, NewDelivery, Stored, DELIVERY_COUNTS_DRIFT, PENDING};
pub use holds::{HoldActor, HoldEvent};
pub use jobs::{Claim, Claims, RunningRow, StagingHolder, JOB_COUNTS_DRIFT};
pub use leases::LeaseTake;
pub use migrate_store::{copy_store, Copied};
pub use moves::{Move, MoveError, Moved};
pub use notifications::Notification;
pub use passes::{PassRecord, PlaneBudget};
pub use plane_states::read_cached_states;
pub use reconcile::{ListedKnown, ListedTask, ProjectKnown, ESCALATION_KIND};
pub use recorder::{AlreadyRecorded, Recorder, Superseded};
pub use start::TaskStart;
pub use tasks::{GuardColumns, PageTask, TaskHead, TASK_COUNTS_DRIFT};

/// The numbered SQLite migrations; index + 1 is the `user_version` each one brings.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_pipeline.sql"),
    include_str!("migrations/0002_intake_and_passes.sql"),
    include_str!("migrations/0003_supervisor_start_time.sql"),
    include_str!("migrations/0004_rounds.sql"),
    include_str!("migrations/0005_provenance.sql"),
    include_str!("migrations/0006_work_item_updates.sql"),
    include_str!("migrations/0007_ci_verdicts.sql"),
    include_str!("migrations/0008_counts_and_indexes.sql"),
    include_str!("migrations/0009_task_and_delivery_counts.sql"),
    include_str!("migrations/0010_running_by_stage.sql"),
    include_str!("migrations/0011_log_growth.sql"),
    include_str!("migrations/0012_holds.sql"),
    include_str!("migrations/0013_priority.sql"),
    include_str!("migrations/0014_spend.sql"),
    include_str!("migrations/0015_ci_feedback.sql"),
    include_str!("migrations/0016_plane_budget.sql"),
    include_str!("migrations/0017_hosts_and_leases.sql"),
];

/// The PostgreSQL migrations, each with the version it brings. PostgreSQL support began
/// at version 16, so its first file creates that schema whole; a later migration gets
/// one file per engine under the same number.
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (16, include_str!("migrations/postgres/0016_schema.sql")),
    (
        17,
        include_str!("migrations/postgres/0017_hosts_and_leases.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a writer waits for another writer before `database is locked`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// The open database.
pub struct Db {
    conn: Conn,
    path: PathBuf,
    /// The job whose agent runs this process, recorded on every stage event it writes.
    agent_job: Option<i64>,
}

/// What `migrate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Migration {
    /// The version found.
    pub from: i64,
    /// The version now.
    pub to: i64,
}

/// The result of creating a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new row.
    New(i64),
    /// The row already existed (same unique key).
    Existing(i64),
}

impl Created {
    /// Returns the row id either way.
    pub fn id(self) -> i64 {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// Reads a text column as a `core` type that parses from its name.
fn parse_col<T: std::str::FromStr<Err = String>>(row: &Row<'_>, idx: usize) -> sql::Result<T> {
    // Parsed from the column's text in place: no `String` a column.
    row.with_text(idx, str::parse::<T>)?
        .map_err(|e| sql::Error::conversion(idx, e))
}

/// Values one chunked `IN (…)` statement takes; a shorter chunk is padded by repeating
/// its first value ([`padded_in`]: twice in `IN` is once), so each statement's text (and
/// its prepared plan) is one.
const IN_CHUNK: usize = 32;

/// [`IN_CHUNK`] placeholders numbered from `?first`: `?first, ?first+1, …`.
fn in_marks(first: usize) -> String {
    let marks: Vec<String> = (first..first + IN_CHUNK).map(|i| format!("?{i}")).collect();
    marks.join(", ")
}

/// `head`, then `chunk` (at most [`IN_CHUNK`] values, at least one) padded to
/// [`IN_CHUNK`] by repeating its first value.
fn padded_in(mut head: Vec<sql::Value>, chunk: Vec<sql::Value>) -> Vec<sql::Value> {
    let pad = std::iter::repeat_n(chunk[0].clone(), IN_CHUNK - chunk.len());
    head.extend(chunk);
    head.extend(pad);
    head
}

/// Turns a count argument into SQL's `LIMIT` (which is signed).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Whether `ORCH_DB` names a PostgreSQL server (`postgres://` or `postgresql://`)
/// rather than a SQLite file.
pub fn is_postgres_url(db: &Path) -> bool {
    db.to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// `ORCH_DB` as it may be shown: a PostgreSQL URL without its password.
pub fn display_location(db: &Path) -> String {
    let text = db.display().to_string();
    // Anything URL-like with user info is redacted, a mistyped scheme included.
    if text.contains("://") && text.contains('@') {
        pg::redact(&text)
    } else {
        text
    }
}

/// Opens `ORCH_DB` (a file or a PostgreSQL URL) to read only: nothing is created,
/// migrated or written (a SQLite file is opened read-only and must exist; a PostgreSQL
/// connection refuses every write itself and begins its transactions `READ ONLY`).
///
/// # Errors
/// When the file does not exist or the server cannot be reached.
pub fn open_read_only(db: &Path) -> Result<Conn> {
    if is_postgres_url(db) {
        return Ok(Conn::postgres_read_only(pg::connect(
            db.to_str().context("ORCH_DB is not valid UTF-8")?,
        )?));
    }
    if !db.is_file() {
        bail!("database {} does not exist", db.display());
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening database {} read-only", db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(Conn::sqlite(conn))
}

/// Opens `ORCH_DB` as a bare connection, read-write, without migrating or creating
/// anything (a SQLite file must exist): for tests and benches that seed and inspect
/// rows directly.
///
/// # Errors
/// When the file does not exist or the server cannot be reached.
pub fn open_conn(db: &Path) -> Result<Conn> {
    if is_postgres_url(db) {
        return Ok(Conn::postgres(pg::connect(
            db.to_str().context("ORCH_DB is not valid UTF-8")?,
        )?));
    }
    if !db.is_file() {
        bail!("database {} does not exist", db.display());
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening database {}", db.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(Conn::sqlite(conn))
}

impl Db {
    /// Runs `sql` (`... WHERE <key> > ?1 ORDER BY <key> LIMIT ?2`, its first column
    /// the integer key) in pages of `page` rows (at least one), each after the last key
    /// read, handing `each` every row and its key: a whole table read without holding
    /// it (PostgreSQL hands over a query's rows all at once).
    ///
    /// # Errors
    /// On SQL errors, and `each`'s.
    pub(crate) fn keyset_pages(
        &self,
        sql: &str,
        page: usize,
        mut each: impl FnMut(&sql::Row<'_>, i64) -> Result<()>,
    ) -> Result<()> {
        let page = page.max(1);
        let mut after = i64::MIN;
        loop {
            let mut stmt = self.conn().prepare_cached(sql)?;
            let mut rows = stmt.query(sql::params![after, sql_limit(page)])?;
            let mut read = 0usize;
            while let Some(r) = rows.next()? {
                read += 1;
                after = r.get(0)?;
                each(&r, after)?;
            }
            if read < page {
                return Ok(());
            }
        }
    }

    /// Opens (creating if needed) the database at `path` and migrates it: for `init`'s
    /// callers and tests; every command goes through [`Db::open_existing`]. `path` may
    /// be a PostgreSQL URL ([`is_postgres_url`]).
    ///
    /// # Errors
    /// When the database cannot be opened, was written by a newer `orch`, or a migration
    /// fails.
    pub fn open(path: &Path) -> Result<Db> {
        let mut db = Db::open_unmigrated(path)?;
        db.migrate()?;
        Ok(db)
    }

    /// Opens the database every command but `init` uses: it must already exist. A
    /// missing directory or file is refused with its path (never created: a typo in
    /// `ORCH_DB` or an unmounted `/var/lib/orch` must not become an empty database that
    /// a pass reads as "no work" or a webhook delivery is stored in). On PostgreSQL, a
    /// database without orch's schema is refused the same way.
    ///
    /// # Errors
    /// When the directory or file is missing, cannot be opened, was written by a newer
    /// `orch`, or a migration fails.
    pub fn open_existing(path: &Path) -> Result<Db> {
        if is_postgres_url(path) {
            let mut db = Db::connect_postgres(path)?;
            if db.schema_version()? == 0 {
                bail!(
                    "the database {} has no orch schema: check ORCH_DB, or run `orch init` to create it",
                    db.location()
                );
            }
            db.migrate()?;
            return Ok(db);
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!(
                "the database directory {} does not exist (database {}): check ORCH_DB and that the directory is mounted, or run `orch init` to create it",
                dir.display(),
                path.display()
            );
        }
        if !path.exists() {
            bail!(
                "the database {} does not exist: check ORCH_DB, or run `orch init` to create it",
                path.display()
            );
        }
        let mut db = Db::connect(path, OpenFlags::empty())?;
        db.migrate()?;
        Ok(db)
    }

    /// Opens the database without migrating (for `init`, which reports what it did),
    /// creating its directory and file when missing (SQLite; a PostgreSQL database must
    /// exist, its schema need not).
    ///
    /// # Errors
    /// When the database cannot be opened or was written by a newer `orch`.
    pub fn open_unmigrated(path: &Path) -> Result<Db> {
        if is_postgres_url(path) {
            return Db::connect_postgres(path);
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("creating the directory of database {}", path.display())
            })?;
        }
        Db::connect(path, OpenFlags::SQLITE_OPEN_CREATE)
    }

    /// Opens the SQLite connection read-write (plus `extra` flags) and sets it up: busy
    /// timeout, the newer-schema refusal, WAL, foreign keys.
    fn connect(path: &Path, extra: OpenFlags) -> Result<Db> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | extra,
        )
        .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Room for every point query a pass repeats per row (the default keeps 16).
        conn.set_prepared_statement_cache_capacity(64);
        let db = Db {
            conn: Conn::sqlite(conn),
            path: path.to_path_buf(),
            agent_job: None,
        };
        db.refuse_newer()?;
        let conn = db.sqlite()?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("enabling WAL on {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(db)
    }

    /// Connects to the PostgreSQL server `url` names and refuses a newer schema.
    fn connect_postgres(url: &Path) -> Result<Db> {
        let text = url.to_str().context("ORCH_DB is not valid UTF-8")?;
        let client = pg::connect(text)?;
        let db = Db {
            conn: Conn::postgres(client),
            path: url.to_path_buf(),
            agent_job: None,
        };
        db.refuse_newer()?;
        Ok(db)
    }

    /// Refuses a database written by a newer `orch`.
    fn refuse_newer(&self) -> Result<()> {
        let version = self.schema_version()?;
        if version > SCHEMA_VERSION {
            bail!(
                "database {} has schema version {version}, written by a newer orch (this orch knows up to {SCHEMA_VERSION}); upgrade orch, or point --db at another database",
                self.location()
            );
        }
        Ok(())
    }

    /// Attributes every stage event this handle writes to `job`'s agent (the caller runs
    /// inside that agent's process group or environment: `ops::pass`).
    pub fn set_agent_job(&mut self, job: Option<i64>) {
        self.agent_job = job;
    }

    /// Returns the job whose agent this handle's stage events are attributed to.
    pub fn agent_job(&self) -> Option<i64> {
        self.agent_job
    }

    /// Closes this connection without checkpointing the WAL (nor deleting it): for a
    /// short process on the latency path, which leaves the checkpoint to the next pass
    /// (SQLite still checkpoints every 1,000 pages as it commits). Nothing on PostgreSQL.
    ///
    /// # Errors
    /// When SQLite refuses the setting.
    pub fn leave_wal_on_close(&self) -> Result<()> {
        if let Some(c) = self.conn.as_sqlite() {
            c.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )?;
        }
        Ok(())
    }

    /// Returns `ORCH_DB` as given: the file path, or the PostgreSQL URL (with its
    /// password: show [`Db::location`] instead).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns where the database is, as it may be shown (no password).
    pub fn location(&self) -> String {
        display_location(&self.path)
    }

    /// Caps this connection's page cache at `kib` KiB (SQLite; PostgreSQL caches on the
    /// server): for a connection that only scans, whose pages are read once each.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn cap_page_cache(&self, kib: u32) -> Result<()> {
        if self.engine() == Engine::Sqlite {
            self.conn
                .execute_batch(&format!("PRAGMA cache_size = -{kib}"))?;
        }
        Ok(())
    }

    /// Returns the engine.
    pub fn engine(&self) -> Engine {
        self.conn.engine()
    }

    /// Returns the connection, for adapters that own their own SQL module.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Returns the connection mutably (tests and benches seeding in one transaction).
    pub fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Returns the SQLite connection, or an error naming what needs SQLite.
    fn sqlite(&self) -> Result<&Connection> {
        self.conn
            .as_sqlite()
            .context("this needs a SQLite database (ORCH_DB is a PostgreSQL URL)")
    }

    /// Returns the schema version (`PRAGMA user_version` on SQLite, the `orch_schema`
    /// row on PostgreSQL; 0 for an empty database).
    ///
    /// # Errors
    /// When it cannot be read (not a database, say).
    pub fn schema_version(&self) -> Result<i64> {
        schema_version_in(&self.conn)
            .with_context(|| format!("reading the schema version of {}", self.location()))
    }

    /// Applies every migration above the current version, each in its own transaction.
    ///
    /// # Errors
    /// When a migration fails (the transaction rolls back; the version stays).
    pub fn migrate(&mut self) -> Result<Migration> {
        self.migrate_to(SCHEMA_VERSION)
    }

    /// Migrates up to `target` (tests build databases at earlier versions with it).
    ///
    /// # Errors
    /// When a migration fails or `target` is beyond this build.
    pub fn migrate_to(&mut self, target: i64) -> Result<Migration> {
        if target > SCHEMA_VERSION {
            bail!("schema version {target} is unknown to this orch (latest {SCHEMA_VERSION})");
        }
        let from = self.schema_version()?;
        let mut version = from;
        while version < target {
            let tx = self.conn.begin(Begin::Exclusive)?;
            // Re-read inside the lock: another process may have migrated meanwhile.
            let current = schema_version_in(&tx)?;
            if current > version {
                version = current;
                tx.commit()?;
                continue;
            }
            let (to, sql) = match tx.engine() {
                Engine::Sqlite => (
                    version + 1,
                    MIGRATIONS[usize::try_from(version).expect("versions are small")],
                ),
                Engine::Postgres => *PG_MIGRATIONS
                    .iter()
                    .find(|(v, _)| *v > version)
                    .filter(|(v, _)| *v <= target)
                    .with_context(|| {
                        format!(
                            "PostgreSQL databases start at schema version {}; version {target} cannot be made on PostgreSQL",
                            PG_MIGRATIONS[0].0
                        )
                    })?,
            };
            tx.execute_batch(sql)
                .with_context(|| format!("applying migration {to}"))?;
            match tx.engine() {
                Engine::Sqlite => tx.execute_batch(&format!("PRAGMA user_version = {to}"))?,
                Engine::Postgres => {
                    tx.execute("UPDATE orch_schema SET version = ?1", [to])?;
                }
            }
            tx.commit()?;
            version = to;
        }
        Ok(Migration {
            from,
            to: version.max(from),
        })
    }

    /// Runs a query that returns at most one row and maps it.
    ///
    /// # Errors
    /// On SQL errors (no row is `None`, not an error).
    fn query_one<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnOnce(&Row<'_>) -> sql::Result<T>,
    ) -> Result<Option<T>> {
        // Through the statement cache: the passes run the same point queries once per
        // task, and parsing the SQL each time was most of their cost.
        Ok(self.conn.query_row(sql, params, map).optional()?)
    }

    /// Runs a query through the connection's statement cache and maps every row.
    ///
    /// # Errors
    /// On SQL errors, or a row `map` refuses.
    fn query_all<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnMut(&Row<'_>) -> sql::Result<T>,
    ) -> Result<Vec<T>> {
        Ok(self.conn.query_all(sql, params, map)?)
    }

    /// Counts the rows of each key with `sql` (one `?1`, the key's name): one index
    /// range count per key, every key present (zeros included). Cheap even with
    /// 100,000 rows.
    ///
    /// # Errors
    /// On SQL errors.
    fn count_each<K: Ord + Copy, const N: usize>(
        &self,
        sql: &str,
        keys: [K; N],
        name: fn(K) -> &'static str,
    ) -> Result<BTreeMap<K, i64>> {
        let mut out = BTreeMap::new();
        for k in keys {
            let n: i64 = self.conn.query_row(sql, [name(k)], |r| r.get(0))?;
            out.insert(k, n);
        }
        Ok(out)
    }

    /// Begins the transaction of one read-modify-write (SQLite `IMMEDIATE`; on
    /// PostgreSQL the writer lock: `sql.rs`).
    ///
    /// # Errors
    /// When the write lock is not obtained (SQLite: within the busy timeout).
    fn immediate(&mut self) -> Result<Tx<'_>> {
        Ok(self.conn.begin(Begin::Write)?)
    }
}

/// The schema version on `conn` (0 for an empty database).
fn schema_version_in(conn: &Conn) -> sql::Result<i64> {
    match conn.engine() {
        Engine::Sqlite => conn.query_row("PRAGMA user_version", [], |r| r.get(0)),
        Engine::Postgres => {
            let exists: bool =
                conn.query_row("SELECT to_regclass('orch_schema') IS NOT NULL", [], |r| {
                    r.get(0)
                })?;
            if !exists {
                return Ok(0);
            }
            conn.query_row("SELECT version FROM orch_schema", [], |r| r.get(0))
                .optional()
                .map(Option::unwrap_or_default)
        }
    }
}

/// What the tests of the store's files share.
#[cfg(test)]
mod test_support {
    use super::Db;
    use crate::core::task::NewTask;

    /// Task `n` of project `orch`: key `ORCH-n`, branch `orch-n`.
    pub(super) fn new_task(n: u32) -> NewTask {
        NewTask {
            project: "orch".into(),
            work_item_id: format!("00000000-0000-4000-8000-{n:012}"),
            key: format!("ORCH-{n}"),
            title: "t".into(),
            repo: "acme/orch".into(),
            branch: format!("orch-{n}"),
            priority: crate::core::priority::Priority::None,
        }
    }

    /// A fresh database in a temporary directory (kept while the guard lives).
    pub(super) fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("orch.db")).unwrap();
        (dir, db)
    }

    /// A fresh database with task 1 ([`new_task`]) at analysis; returns its id.
    pub(super) fn db_with_task() -> (tempfile::TempDir, Db, i64) {
        let (dir, mut db) = db();
        let id = db
            .create_task(&new_task(1), crate::core::stage::Actor::Operator, "test", 1)
            .unwrap()
            .id();
        (dir, db, id)
    }

    /// The single integer `sql` selects.
    pub(super) fn count(db: &Db, sql: &str) -> i64 {
        db.conn().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::sql::params;
    use super::test_support::db;
    use super::*;

    #[test]
    fn fresh_database_is_at_the_latest_version_and_wal() {
        let (_d, db) = db();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = db
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = db
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn every_earlier_version_upgrades_cleanly() {
        for start in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("orch.db");
            let mut db = Db::open_unmigrated(&path).unwrap();
            db.migrate_to(start).unwrap();
            assert_eq!(db.schema_version().unwrap(), start);
            drop(db);
            let mut db = Db::open(&path).unwrap();
            assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
            assert_eq!(
                db.migrate().unwrap(),
                Migration {
                    from: SCHEMA_VERSION,
                    to: SCHEMA_VERSION
                }
            );
        }
    }

    #[test]
    fn migration_4_confirms_only_the_branches_of_tasks_past_development() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        let mut db = Db::open_unmigrated(&path).unwrap();
        db.migrate_to(3).unwrap();
        for (n, stage) in ["analysis", "development", "review", "deploy", "done"]
            .iter()
            .enumerate()
        {
            db.conn()
                .execute(
                    "INSERT INTO tasks (project, work_item_id, key, title, repo, branch, stage,
                                        stage_entered_at, created_at, updated_at)
                     VALUES ('p', ?1, ?1, 't', 'a/b', ?1, ?2, 1, 1, 7)",
                    params![format!("K-{n}"), stage],
                )
                .unwrap();
        }
        drop(db);
        let db = Db::open(&path).unwrap();
        let ready: Vec<(String, Option<i64>, u32)> = db
            .conn()
            .prepare("SELECT stage, branch_ready_at, round FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<sql::Result<_>>()
            .unwrap();
        let want = |s: &str, at: Option<i64>| (s.to_string(), at, 1);
        assert_eq!(
            ready,
            vec![
                want("analysis", None),
                want("development", None),
                want("review", Some(7)),
                want("deploy", Some(7)),
                want("done", Some(7)),
            ],
            "reconcile confirms only the branches that may be missing"
        );
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orch.db");
        drop(Db::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Db::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer orch"), "{err}");
    }
}
