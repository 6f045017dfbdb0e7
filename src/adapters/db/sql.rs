//! One connection over two engines: SQLite (a file, the default) and PostgreSQL (a
//! `postgres://` URL, for more than one host: docs/scale-out.md).
//!
//! The store's files write their SQL once, in the dialect both engines share: numbered
//! parameters `?1`, `?2` (rewritten to `$1`, `$2` for PostgreSQL), `ON CONFLICT`,
//! `RETURNING`, `IS DISTINCT FROM`. What differs stays here: how a connection opens,
//! how a write transaction takes the single-writer lock, how values cross.
//!
//! **The writer lock.** SQLite's `BEGIN IMMEDIATE` lets one write transaction run at a
//! time, and the store's read-modify-writes (claims under a concurrency limit, guarded
//! flips, the once-per-live-job enqueue) are written for that. PostgreSQL at READ
//! COMMITTED gives no such order: the claim statement alone started two jobs under a
//! limit of one. So a write transaction on PostgreSQL first takes one transaction-level
//! advisory lock (`pg_advisory_xact_lock`, released at commit or rollback, never a
//! session lock, which breaks behind PgBouncer): write transactions run one at a time,
//! as on SQLite, and every guard written for SQLite holds unchanged.
//!
//! The API follows `rusqlite`'s (`execute`, `query_row`, `prepare(..).query_map`,
//! `params!`, `.optional()`), so the store reads the same on both engines.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;

use postgres::types::{IsNull, Type};

/// The key of the advisory lock every PostgreSQL write transaction takes (the writer
/// lock above). Any other `orch` key must differ.
pub const WRITER_LOCK_KEY: i64 = 0x6f72_6368_0000_0001;

/// A value crossing to or from either engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer (and a boolean, as 0 or 1).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// What the store's SQL can fail with.
#[derive(Debug)]
pub enum Error {
    /// SQLite's error.
    Sqlite(rusqlite::Error),
    /// PostgreSQL's error.
    Postgres(postgres::Error),
    /// `query_row` found no row ([`OptionalExtension::optional`] turns it into `None`).
    NoRows,
    /// A write on a connection opened read-only ([`Conn::postgres_read_only`]), refused
    /// before it reached the server.
    ReadOnly,
    /// A column could not be read as the type asked for.
    Conversion {
        /// The column's index.
        index: usize,
        /// What was wrong.
        message: String,
    },
}

/// The store's SQL result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sqlite(e) => write!(f, "{e}"),
            Error::Postgres(e) => match e.as_db_error() {
                // The server's own message, not tokio-postgres's "db error".
                Some(db) => write!(f, "{}: {}", db.severity(), db.message()),
                None => write!(f, "{e}"),
            },
            Error::NoRows => f.write_str("the query returned no row"),
            Error::ReadOnly => f.write_str("a write was refused: the connection is read-only"),
            Error::Conversion { index, message } => {
                write!(f, "column {index} could not be read: {message}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Sqlite(e) => Some(e),
            // Its message is already this error's (the server's, in full).
            Error::Postgres(e) if e.as_db_error().is_some() => None,
            Error::Postgres(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => Error::NoRows,
            e => Error::Sqlite(e),
        }
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        Error::Postgres(e)
    }
}

impl Error {
    /// A column that could not be read as its type.
    pub fn conversion(index: usize, message: impl Into<String>) -> Error {
        Error::Conversion {
            index,
            message: message.into(),
        }
    }

    /// Whether a `UNIQUE`, `CHECK` or foreign-key constraint refused the write.
    pub fn is_constraint_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::ConstraintViolation
            }
            // Class 23: integrity constraint violation.
            Error::Postgres(e) => e.code().is_some_and(|c| c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// `query_row`'s "no row" as `None`, as `rusqlite`'s trait of the same name does.
pub trait OptionalExtension<T> {
    /// `Ok(None)` for [`Error::NoRows`].
    ///
    /// # Errors
    /// Every other error.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A Rust value that can be a parameter.
pub trait ToSql {
    /// The value to bind.
    fn to_value(&self) -> Value;
}

macro_rules! to_sql_int {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
    )*};
}
to_sql_int!(i64, i32, i16, i8, u32, u16, u8);

impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToSql for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToSql for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToSql for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(storable_text(self))
    }
}

impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(storable_text(self))
    }
}

/// `text` as both engines store it: PostgreSQL's text cannot hold NUL (an error that
/// would fail the write every time it is retried, a work item's name with `\u0000`
/// among them), so each NUL becomes U+FFFD on either engine, and a lookup by the same
/// text finds the row. Bytes (`Blob`) are stored as they are.
fn storable_text(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{fffd}")
    } else {
        text.to_owned()
    }
}

impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToSql for Value {
    fn to_value(&self) -> Value {
        match self {
            Value::Text(t) => Value::Text(storable_text(t)),
            other => other.clone(),
        }
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToSql::to_value)
    }
}

/// The parameters of one statement.
pub trait Params {
    /// The values, in order (`?1` first).
    fn values(self) -> Vec<Value>;
}

impl Params for &[&dyn ToSql] {
    fn values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}

impl Params for [&dyn ToSql; 0] {
    fn values(self) -> Vec<Value> {
        Vec::new()
    }
}

impl Params for Vec<Value> {
    fn values(self) -> Vec<Value> {
        self.into_iter()
            .map(|v| match v {
                Value::Text(t) if t.contains('\0') => Value::Text(storable_text(&t)),
                other => other,
            })
            .collect()
    }
}

macro_rules! params_array {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn values(self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
        impl<T: ToSql> Params for &[T; $n] {
            fn values(self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
    )*};
}
params_array!(1, 2, 3, 4, 5, 6, 7, 8);

/// The values of an iterator as parameters (`rusqlite::params_from_iter`).
pub fn params_from_iter<I>(iter: I) -> Vec<Value>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    iter.into_iter().map(|v| v.to_value()).collect()
}

/// The parameters of one statement, each any [`ToSql`] (`rusqlite::params!`).
#[macro_export]
macro_rules! sql_params {
    () => {
        &[] as &[&dyn $crate::adapters::db::sql::ToSql]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::adapters::db::sql::ToSql),+] as &[&dyn $crate::adapters::db::sql::ToSql]
    };
}
pub use crate::sql_params as params;

/// A Rust type a column can be read as.
pub trait FromSql: Sized {
    /// Converts the column's value.
    ///
    /// # Errors
    /// When the value is of another kind (or out of range).
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

impl FromSql for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}

impl FromSql for i64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

macro_rules! from_sql_int {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
from_sql_int!(i32, i16, u32, u16, u8, u64, usize);

impl FromSql for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromSql for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}

impl FromSql for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            Value::Text(s) => Ok(s.into_bytes()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column's position (`rusqlite::RowIndex`; only positions here).
pub trait RowIndex {
    /// The zero-based position.
    fn index(&self) -> usize;
}

impl RowIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One row of a result, on either engine.
pub enum Row<'a> {
    /// A SQLite row.
    Sqlite(&'a rusqlite::Row<'a>),
    /// A PostgreSQL row.
    Postgres(&'a postgres::Row),
}

impl Row<'_> {
    /// Reads column `idx` as `T`.
    ///
    /// # Errors
    /// When there is no such column or its value is not a `T`.
    pub fn get<I: RowIndex, T: FromSql>(&self, idx: I) -> Result<T> {
        let i = idx.index();
        let v = self.value(i)?;
        T::from_value(v).map_err(|m| Error::conversion(i, m))
    }

    /// Hands column `idx`, which must be text, to `f` without copying it (SQLite), and
    /// returns what `f` made of it: a column parsed into a small value (a stage, a work
    /// item id's bytes) then costs no `String`.
    ///
    /// # Errors
    /// When there is no such column or its value is not text.
    pub fn with_text<T>(&self, idx: usize, f: impl FnOnce(&str) -> T) -> Result<T> {
        match self {
            Row::Sqlite(r) => match r.get_ref(idx)? {
                rusqlite::types::ValueRef::Text(t) => Ok(f(&utf8(t))),
                // Not text: the same error as reading it as a `String`.
                _ => self.get::<_, String>(idx).map(|t| f(&t)),
            },
            Row::Postgres(_) => {
                let text: String = self.get(idx)?;
                Ok(f(&text))
            }
        }
    }

    /// Reads column `idx` as it is.
    fn value(&self, i: usize) -> Result<Value> {
        match self {
            Row::Sqlite(r) => Ok(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => Value::Int(n),
                rusqlite::types::ValueRef::Real(f) => Value::Real(f),
                rusqlite::types::ValueRef::Text(t) => Value::Text(utf8(t).into_owned()),
                rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            }),
            Row::Postgres(r) => {
                if i >= r.len() {
                    return Err(Error::conversion(i, "no such column"));
                }
                Ok(r.try_get::<_, PgValue>(i)?.0)
            }
        }
    }
}

/// A text column's bytes as text: checked, not copied, when valid UTF-8 (always, as
/// orch writes them; `std::str::from_utf8` checks ASCII a word at a time, where
/// `String::from_utf8_lossy` goes chunk by chunk), else each invalid sequence
/// replaced by U+FFFD.
fn utf8(t: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(t) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(t),
    }
}

/// How a transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// A read: a consistent snapshot, no lock.
    Read,
    /// A read-modify-write: the writer lock first (SQLite `IMMEDIATE`).
    Write,
    /// A schema change: every other writer and reader kept out (SQLite `EXCLUSIVE`).
    Exclusive,
}

/// The engine of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (a file).
    Sqlite,
    /// PostgreSQL (a server).
    Postgres,
}

/// A PostgreSQL client and the statements it has prepared (by SQL text as written).
/// Prepared statements a PostgreSQL connection keeps at most (orch's fixed SQL is a few
/// hundred texts).
pub const STATEMENT_CACHE: usize = 1024;

struct PgConn {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    /// Whether a transaction is open ([`Conn::begin`] until commit or rollback).
    in_tx: bool,
    /// Opened read-only ([`Conn::postgres_read_only`]): every write refused here.
    read_only: bool,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgConn>>),
}

/// One open connection to either engine.
pub struct Conn {
    inner: Inner,
}

impl Conn {
    /// Wraps an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn {
            inner: Inner::Sqlite(conn),
        }
    }

    /// Wraps an open PostgreSQL client.
    pub fn postgres(client: postgres::Client) -> Conn {
        Conn::pg(client, false)
    }

    /// A PostgreSQL connection that refuses every write ([`Error::ReadOnly`]) and whose
    /// transactions are `READ ONLY`: per statement and per transaction, never a session
    /// setting, which a pooler (PgBouncer) would hand on to other clients.
    pub fn postgres_read_only(client: postgres::Client) -> Conn {
        Conn::pg(client, true)
    }

    fn pg(client: postgres::Client, read_only: bool) -> Conn {
        Conn {
            inner: Inner::Postgres(Box::new(RefCell::new(PgConn {
                client,
                statements: HashMap::new(),
                in_tx: false,
                read_only,
            }))),
        }
    }

    /// How many prepared statements this connection keeps: on PostgreSQL at most
    /// [`STATEMENT_CACHE`]; on SQLite rusqlite's own cache, bounded too (reported as 0).
    pub fn cached_statements(&self) -> usize {
        match &self.inner {
            Inner::Sqlite(_) => 0,
            Inner::Postgres(pg) => pg.borrow().statements.len(),
        }
    }

    /// Which engine this is.
    pub fn engine(&self) -> Engine {
        match self.inner {
            Inner::Sqlite(_) => Engine::Sqlite,
            Inner::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, the online backup).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.values();
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?)
            }
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let n = pg.run(sql, &values, |client, stmt, refs| {
                    client.execute(stmt, refs)
                })?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs statements separated by `;`, without parameters (migrations, `BEGIN`).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                if pg.read_only && writes(sql) {
                    return Err(Error::ReadOnly);
                }
                if pg.in_tx || !writes(sql) {
                    return Ok(pg.client.batch_execute(sql)?);
                }
                pg.begin_write()?;
                match pg.client.batch_execute(sql) {
                    Ok(()) => Ok(pg.client.batch_execute("COMMIT")?),
                    Err(e) => {
                        let _ = pg.client.batch_execute("ROLLBACK");
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Runs a query and maps its first row; [`Error::NoRows`] when there is none.
    ///
    /// # Errors
    /// On SQL errors, no row, or `map`'s error.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let values = params.values();
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => map(&Row::Sqlite(r)),
                    None => Err(Error::NoRows),
                }
            }
            Inner::Postgres(pg) => {
                let rows = Conn::pg_query(pg, sql, &values)?;
                match rows.first() {
                    Some(r) => map(&Row::Postgres(r)),
                    None => Err(Error::NoRows),
                }
            }
        }
    }

    /// Runs a query and maps every row.
    ///
    /// # Errors
    /// On SQL errors or `map`'s first error.
    pub fn query_all<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        mut map: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let values = params.values();
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(map(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Inner::Postgres(pg) => {
                let rows = Conn::pg_query(pg, sql, &values)?;
                rows.iter().map(|r| map(&Row::Postgres(r))).collect()
            }
        }
    }

    /// A statement to run (`rusqlite`'s `prepare`); cached by its text on both engines.
    ///
    /// # Errors
    /// SQLite's refusal of the SQL (PostgreSQL prepares when it first runs).
    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        Ok(Statement {
            inner: match &self.inner {
                Inner::Sqlite(c) => StmtInner::Sqlite(c.prepare_cached(sql)?),
                Inner::Postgres(_) => StmtInner::Postgres {
                    conn: self,
                    sql: sql.to_owned(),
                },
            },
        })
    }

    /// [`Conn::prepare`] (every statement is cached).
    ///
    /// # Errors
    /// As [`Conn::prepare`].
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    /// Runs `sql` on PostgreSQL and returns every row.
    fn pg_query(pg: &RefCell<PgConn>, sql: &str, values: &[Value]) -> Result<Vec<postgres::Row>> {
        pg.borrow_mut()
            .run(sql, values, |client, stmt, refs| client.query(stmt, refs))
    }

    /// Ends the open transaction with `verb` (`COMMIT` or `ROLLBACK`), sent to the engine
    /// as it is: the end of a transaction is not a write of its own.
    fn end_tx(&self, verb: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(verb)?),
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                pg.in_tx = false;
                Ok(pg.client.batch_execute(verb)?)
            }
        }
    }

    /// Begins a write transaction ([`Begin::Write`]), as `rusqlite`'s `transaction`.
    ///
    /// # Errors
    /// As [`Conn::begin`].
    pub fn transaction(&self) -> Result<Tx<'_>> {
        self.begin(Begin::Write)
    }

    /// Begins a transaction; it rolls back when dropped without [`Tx::commit`].
    ///
    /// # Errors
    /// When the engine refuses, or the writer lock is not obtained (SQLite: within the
    /// busy timeout).
    pub fn begin(&self, how: Begin) -> Result<Tx<'_>> {
        if let Inner::Postgres(pg) = &self.inner {
            if pg.borrow().in_tx {
                return Err(Error::conversion(
                    0,
                    "a transaction is already open on this connection (transactions do not nest)",
                ));
            }
        }
        match (&self.inner, how) {
            (Inner::Sqlite(_), Begin::Read) => self.execute_batch("BEGIN DEFERRED")?,
            (Inner::Sqlite(_), Begin::Write) => self.execute_batch("BEGIN IMMEDIATE")?,
            (Inner::Sqlite(_), Begin::Exclusive) => self.execute_batch("BEGIN EXCLUSIVE")?,
            (Inner::Postgres(pg), Begin::Read) => {
                let mut pg = pg.borrow_mut();
                pg.client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                pg.in_tx = true;
            }
            (Inner::Postgres(pg), Begin::Write | Begin::Exclusive) => {
                let mut pg = pg.borrow_mut();
                if pg.read_only {
                    return Err(Error::ReadOnly);
                }
                pg.begin_write()?;
                pg.in_tx = true;
            }
        }
        Ok(Tx {
            conn: self,
            open: true,
        })
    }
}

/// What begins a PostgreSQL write transaction: the writer lock, waited for as long as
/// SQLite's busy timeout, then an error (SQLSTATE 55P03) as SQLite's "database is
/// locked" is. `SET LOCAL` lasts this transaction only, so it holds behind PgBouncer.
fn begin_write() -> String {
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'; \
         SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})",
        super::BUSY_TIMEOUT.as_millis()
    )
}

/// Whether `sql` writes (so, outside a transaction, it must take the writer lock as
/// every SQLite write takes the database's).
fn writes(sql: &str) -> bool {
    let upper = sql.trim_start().to_ascii_uppercase();
    // VACUUM changes no row and cannot run inside a transaction block.
    if upper.starts_with("VACUUM") {
        return false;
    }
    // Only a plain SELECT that names no write (a CTE's UPDATE, setval) is a read: a
    // needless lock costs a round trip, a missing one breaks a guard.
    !upper.starts_with("SELECT")
        || upper
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| matches!(w, "INSERT" | "UPDATE" | "DELETE" | "SETVAL" | "NEXTVAL"))
}

impl PgConn {
    /// Begins a write transaction; when the writer lock is not obtained the begun
    /// transaction is rolled back, so the connection stays usable.
    fn begin_write(&mut self) -> Result<()> {
        if let Err(e) = self.client.batch_execute(&begin_write()) {
            let _ = self.client.batch_execute("ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs `sql` through `call`. A write outside a transaction runs in one of its own
    /// that takes the writer lock first, so it waits for (and is ordered with) every
    /// other write, as on SQLite.
    fn run<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        call: impl FnOnce(
            &mut postgres::Client,
            &postgres::Statement,
            &[&(dyn postgres::types::ToSql + Sync)],
        ) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        if self.read_only && writes(sql) {
            return Err(Error::ReadOnly);
        }
        let stmt = self.statement(sql)?;
        let refs = pg_params(values);
        if self.in_tx || !writes(sql) {
            return Ok(call(&mut self.client, &stmt, &refs)?);
        }
        self.begin_write()?;
        match call(&mut self.client, &stmt, &refs) {
            Ok(out) => {
                self.client.batch_execute("COMMIT")?;
                Ok(out)
            }
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// The prepared statement of `sql` (prepared once per connection; the cache is
    /// emptied once it holds [`STATEMENT_CACHE`] texts, so a long-lived connection
    /// running SQL built at run time does not grow without end).
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        let stmt = self.client.prepare(&to_postgres(sql))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

/// A prepared statement ([`Conn::prepare`]).
pub struct Statement<'c> {
    inner: StmtInner<'c>,
}

enum StmtInner<'c> {
    Sqlite(rusqlite::CachedStatement<'c>),
    Postgres { conn: &'c Conn, sql: String },
}

impl Statement<'_> {
    /// Runs it; returns the rows changed.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        match &mut self.inner {
            StmtInner::Sqlite(s) => Ok(s.execute(rusqlite::params_from_iter(params.values()))?),
            StmtInner::Postgres { conn, sql } => conn.execute(sql, params),
        }
    }

    /// The number of columns it returns.
    ///
    /// # Errors
    /// When PostgreSQL cannot prepare it.
    pub fn column_count(&self) -> Result<usize> {
        match &self.inner {
            StmtInner::Sqlite(s) => Ok(s.column_count()),
            StmtInner::Postgres { conn, sql } => {
                let Inner::Postgres(pg) = &conn.inner else {
                    unreachable!("a PostgreSQL statement of a PostgreSQL connection")
                };
                Ok(pg.borrow_mut().statement(sql)?.columns().len())
            }
        }
    }

    /// Runs it and returns its rows, to step through with [`Rows::next`] (SQLite
    /// steps as it goes; PostgreSQL's rows arrive at once).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        Ok(Rows {
            inner: match &mut self.inner {
                StmtInner::Sqlite(s) => {
                    RowsInner::Sqlite(s.query(rusqlite::params_from_iter(params.values()))?)
                }
                StmtInner::Postgres { conn, sql } => {
                    let Inner::Postgres(pg) = &conn.inner else {
                        unreachable!("a PostgreSQL statement of a PostgreSQL connection")
                    };
                    let rows = Conn::pg_query(pg, sql, &params.values())?;
                    RowsInner::Postgres {
                        rows: rows.into_iter(),
                        current: None,
                    }
                }
            },
        })
    }

    /// Maps its first row.
    ///
    /// # Errors
    /// On SQL errors or no row.
    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        map: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(r) => map(&r),
            None => Err(Error::NoRows),
        }
    }

    /// Maps every row (read at once; iterate the results).
    ///
    /// # Errors
    /// On SQL errors (a row's own error is in its item).
    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        mut map: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut rows = self.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(map(&r));
        }
        Ok(out.into_iter())
    }
}

/// The rows of a query, stepped through with [`Rows::next`].
pub struct Rows<'s> {
    inner: RowsInner<'s>,
}

enum RowsInner<'s> {
    Sqlite(rusqlite::Rows<'s>),
    Postgres {
        rows: std::vec::IntoIter<postgres::Row>,
        current: Option<postgres::Row>,
    },
}

impl Rows<'_> {
    /// The next row, or `None` after the last.
    ///
    /// # Errors
    /// On SQL errors while stepping (SQLite).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>> {
        match &mut self.inner {
            RowsInner::Sqlite(r) => Ok(r.next()?.map(Row::Sqlite)),
            RowsInner::Postgres { rows, current } => {
                *current = rows.next();
                Ok(current.as_ref().map(Row::Postgres))
            }
        }
    }
}

/// An open transaction; derefs to its connection. Dropped without [`Tx::commit`], it
/// rolls back.
pub struct Tx<'c> {
    conn: &'c Conn,
    open: bool,
}

impl Tx<'_> {
    /// Commits.
    ///
    /// # Errors
    /// When the engine refuses the commit (the transaction is rolled back then).
    pub fn commit(mut self) -> Result<()> {
        self.conn.end_tx("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Nothing to do with an error here: a failed rollback leaves the transaction
            // to die with the connection, which rolls it back too.
            let _ = self.conn.end_tx("ROLLBACK");
        }
    }
}

/// Rewrites the shared dialect for PostgreSQL: `?N` becomes `$N` outside quoted text,
/// and SQLite's planner hint `INDEXED BY name` is dropped (PostgreSQL plans alone).
pub fn to_postgres(sql: &str) -> String {
    let mut out = renumber(sql);
    while let Some(at) = out.find("INDEXED BY ") {
        let rest = &out[at + "INDEXED BY ".len()..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.replace_range(at..at + "INDEXED BY ".len() + name_len, "");
    }
    out
}

/// `?N` as `$N` (and bare `?` numbered in order), outside quoted text.
fn renumber(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut next_bare = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                out.push('$');
                if chars.peek().is_some_and(char::is_ascii_digit) {
                    while let Some(d) = chars.next_if(char::is_ascii_digit) {
                        out.push(d);
                    }
                } else {
                    out.push_str(&next_bare.to_string());
                    next_bare += 1;
                }
            }
            (None, c) => out.push(c),
        }
    }
    out
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The parameters as `postgres` takes them.
fn pg_params(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

/// A value bound to whatever type PostgreSQL inferred for its parameter: integers to
/// any integer, floating or text type; text to text; bytes to `bytea`. The shared
/// dialect does not say the types, so the server's inference decides and the value
/// follows when it can.
impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let texty = matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        );
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                #[allow(clippy::cast_precision_loss)]
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                _ if texty => i.to_string().as_str().to_sql(&Type::TEXT, out),
                _ => Err(format!("an integer cannot be bound as {ty}").into()),
            },
            Value::Real(f) => match *ty {
                #[allow(clippy::cast_possible_truncation)]
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                Type::FLOAT8 => f.to_sql(ty, out),
                _ if texty => f.to_string().as_str().to_sql(&Type::TEXT, out),
                _ => Err(format!("a number with a fraction cannot be bound as {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ if texty => s.as_str().to_sql(&Type::TEXT, out),
                _ => Err(format!("text cannot be bound as {ty}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                _ if texty => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
                _ => Err(format!("bytes cannot be bound as {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A column read as a [`Value`], whatever its PostgreSQL type.
struct PgValue(Value);

impl<'a> postgres::types::FromSql<'a> for PgValue {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::FromSql as F;
        Ok(PgValue(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::OID => Value::Int(i64::from(u32::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(raw.to_vec()),
            _ => Value::Text(<&str as F>::from_sql(&Type::TEXT, raw)?.to_owned()),
        }))
    }

    fn from_sql_null(
        _: &Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary `numeric` (what `sum` of integers returns) as an integer when it
/// has no fraction, else a float. Layout: digit count, weight, sign, scale (i16/u16
/// each), then base-10,000 digits, the first at 10,000^weight.
fn numeric(raw: &[u8]) -> std::result::Result<Value, Box<dyn std::error::Error + Sync + Send>> {
    let word = |i: usize| -> std::result::Result<i16, Box<dyn std::error::Error + Sync + Send>> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short numeric".into())
    };
    let ndigits = usize::try_from(word(0)?)?;
    let weight = i32::from(word(1)?);
    let sign = u16::from_be_bytes(word(2)?.to_be_bytes());
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut int: i128 = 0;
    let mut frac = 0.0_f64;
    for k in 0..ndigits {
        let d = i128::from(word(4 + k)?);
        let power = weight - i32::try_from(k)?;
        if power >= 0 {
            let scale = 10_000_i128
                .checked_pow(u32::try_from(power)?)
                .ok_or("numeric out of range")?;
            int = d
                .checked_mul(scale)
                .and_then(|v| int.checked_add(v))
                .ok_or("numeric out of range")?;
        } else {
            #[allow(clippy::cast_precision_loss)]
            {
                frac += (d as f64) * 10_000_f64.powi(power);
            }
        }
    }
    let negative = sign == 0x4000;
    if frac == 0.0 {
        let v = i64::try_from(int)?;
        Ok(Value::Int(if negative { -v } else { v }))
    } else {
        #[allow(clippy::cast_precision_loss)]
        let v = int as f64 + frac;
        Ok(Value::Real(if negative { -v } else { v }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?, ?)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($1, $2)"
        );
        assert_eq!(to_postgres("x = ?12"), "x = $12");
        assert_eq!(
            to_postgres("FROM jobs j INDEXED BY jobs_by_x JOIN t"),
            "FROM jobs j  JOIN t"
        );
    }

    #[test]
    fn only_writes_take_the_writer_lock_on_their_own() {
        assert!(writes("  insert into t values (1)"));
        assert!(writes("UPDATE jobs SET x = 1"));
        assert!(writes("\n DELETE FROM t"));
        assert!(!writes("SELECT 1"));
        assert!(!writes("VACUUM ANALYZE"), "cannot run in a transaction");
        assert_eq!(
            "a\0b".to_value(),
            Value::Text("a\u{fffd}b".into()),
            "no NUL reaches either engine"
        );
        assert!(!writes(
            "SELECT updated_at, deleted FROM tasks WHERE inserted_by = 1"
        ));
        assert!(writes(
            "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x"
        ));
        assert!(writes("/* note */ INSERT INTO t VALUES (1)"));
        assert!(writes("SELECT setval('s', 1)"));
    }

    #[test]
    fn no_row_is_none_and_other_errors_stay() {
        assert_eq!(Err::<i64, _>(Error::NoRows).optional().unwrap(), None);
        assert!(Err::<i64, _>(Error::conversion(0, "x")).optional().is_err());
    }

    #[test]
    fn text_that_is_not_utf8_reads_with_replacements() {
        let c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        // Bytes no orch writes, as another program could have stored them.
        let mut stmt = c
            .prepare("SELECT CAST(x'61ff62' AS TEXT), 'a\u{e9}b'")
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let r = rows.next().unwrap().unwrap();
        assert_eq!(r.with_text(0, str::to_string).unwrap(), "a\u{fffd}b");
        assert_eq!(r.get::<_, String>(0).unwrap(), "a\u{fffd}b");
        assert_eq!(r.with_text(1, str::to_string).unwrap(), "a\u{e9}b");
        assert_eq!(r.get::<_, String>(1).unwrap(), "a\u{e9}b");
    }

    #[test]
    fn sqlite_round_trips_every_kind_of_value() {
        let c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n INTEGER)")
            .unwrap();
        let blob: &[u8] = b"\x00\x01";
        let none: Option<i64> = None;
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
            params![7_i64, 1.5_f64, "x", blob, none],
        )
        .unwrap();
        let row = c
            .query_row("SELECT i, r, s, b, n FROM t", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, f64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .unwrap();
        assert_eq!(row, (7, 1.5, "x".to_string(), vec![0, 1], None));
        let err = c
            .query_row("SELECT s FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(err.to_string().contains("expected an integer"), "{err}");
        let no = c
            .query_row("SELECT i FROM t WHERE i = ?1", [8], |r| r.get::<_, i64>(0))
            .optional()
            .unwrap();
        assert_eq!(no, None);
    }

    #[test]
    fn a_dropped_transaction_rolls_back() {
        let c = Conn::sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.execute_batch("CREATE TABLE t (i INTEGER)").unwrap();
        {
            let tx = c.begin(Begin::Write).unwrap();
            tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        let tx = c.begin(Begin::Write).unwrap();
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        let all = c
            .query_all("SELECT i FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(all, vec![2]);
    }

    #[test]
    fn numeric_decodes_integers_and_fractions() {
        // 12345678 = [1234, 5678] weight 1.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xD2, 0x16, 0x2E];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(12_345_678));
        // -5 = [5] weight 0, negative.
        let raw = [0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5];
        assert_eq!(numeric(&raw).unwrap(), Value::Int(-5));
        // 0: no digits.
        assert_eq!(numeric(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), Value::Int(0));
        // 1.5 = [1, 5000] weight 0, scale 1.
        let raw = [0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(numeric(&raw).unwrap(), Value::Real(1.5));
    }
}
