//! The one seam between the store and its SQL database: every statement the
//! controller runs goes through [`Connection`], whatever the backend.
//!
//! The API is shaped like rusqlite's (the store was written against it), but
//! every value crosses as a [`Value`] and every error as an [`Error`], so a
//! second backend only has to run SQL text with values. SQL is written once,
//! in SQLite style (`?1`, `?`); a backend that numbers its placeholders
//! differently rewrites them itself. Transactions and savepoints are plain
//! SQL (`BEGIN IMMEDIATE`, `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`) issued
//! through [`Connection::execute_batch`], so they behave the same on both.
//!
//! # Backends
//!
//! `Backend::Sqlite` is the only one wired in. The PostgreSQL variant will be
//! `Backend::Postgres(pg::PgDriver)`, with this driver contract:
//!
//! ```text
//! PgDriver::connect(url: &str) -> Result<PgDriver, PgError>
//! fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, PgError>     // rows affected
//! fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, PgError> // rows, column order
//! fn batch(&mut self, sql: &str) -> Result<(), PgError>                           // no params; BEGIN/COMMIT/SAVEPOINT too
//! PgError::is_unique_violation(), is_foreign_key_violation()
//! ```
//!
//! The public API here is implementable on that contract: a statement is
//! its SQL text plus (on SQLite) a prepared handle, rows can be a collected
//! `Vec<Vec<Value>>` ([`Row`] reads either), [`Statement::query_map`]
//! collects, and nothing exposes a SQLite type. The methods take `&self`
//! (as rusqlite's do), so the driver, whose methods take `&mut self`, sits
//! in a `RefCell` inside the variant.
//!
//! # What the pg driver must translate
//!
//! SQLite-only constructs the store still writes, because SQLite has no
//! portable spelling of them (everything else was rewritten portably):
//!
//! - `BEGIN IMMEDIATE` ([`Connection::transaction`]): on PostgreSQL `BEGIN`.
//! - `?N` / `?` placeholders: `$N`.
//! - `INTEGER PRIMARY KEY` rowid aliases (`events.id`, `node_logs.id`) get
//!   their value from SQLite on insert; the PostgreSQL schema must declare
//!   them `BIGINT GENERATED ALWAYS AS IDENTITY` (migrations are per backend;
//!   `database.rs` is SQLite's).
//! - `PRAGMA ...`, `VACUUM INTO` and `pragma_foreign_key_check` appear only
//!   in `database.rs` and `checkpoint.rs`, which are SQLite's alone.

mod value;

use std::fmt;

pub(crate) use value::{FromValue, ToValue, Value};

/// A SQL call's result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a SQL call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQLite backend refused the statement (syntax, constraint, I/O).
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    /// A query that must return a row returned none.
    #[error("the query returned no rows")]
    NoRows,
    /// A column's value does not convert to the Rust type asked for.
    #[error("column {column}: expected {expected}, found {found}")]
    Conversion {
        /// 0-based column index.
        column: usize,
        /// The Rust type asked for.
        expected: &'static str,
        /// The value there ([`Value::describe`]).
        found: String,
    },
    /// A parameter cannot be bound (a `u64` past `i64::MAX`).
    #[error("parameter {index}: expected {expected}, got {found}")]
    Bind {
        /// 1-based parameter number.
        index: usize,
        /// What the backend can take.
        expected: &'static str,
        /// The value given.
        found: String,
    },
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => Error::NoRows,
            e => Error::Sqlite(e),
        }
    }
}

impl Error {
    /// A UNIQUE or PRIMARY KEY constraint refused the write.
    #[allow(dead_code)] // the API for callers that tell a duplicate apart
    pub(crate) fn is_unique_violation(&self) -> bool {
        self.sqlite_extended_code().is_some_and(|code| {
            code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        })
    }

    /// A FOREIGN KEY constraint refused the write.
    #[allow(dead_code)] // the API for callers that tell a dangling reference apart
    pub(crate) fn is_foreign_key_violation(&self) -> bool {
        self.sqlite_extended_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
    }

    fn sqlite_extended_code(&self) -> Option<std::ffi::c_int> {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => Some(e.extended_code),
            _ => None,
        }
    }
}

/// `Result<T>` of a query that may find nothing → `Result<Option<T>>`.
pub(crate) trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Statement parameters: `[]`, `[x]`, `[x; N]`, `params![..]`, `&[&dyn ToValue]`.
pub(crate) trait Params {
    fn into_values(self) -> Result<Vec<Value>>;
}

fn bind_all<'p>(values: impl Iterator<Item = &'p (dyn ToValue + 'p)>) -> Result<Vec<Value>> {
    values
        .enumerate()
        .map(|(i, value)| {
            value.to_value().map_err(|m| Error::Bind {
                index: i + 1,
                expected: m.expected,
                found: m.found,
            })
        })
        .collect()
}

impl Params for () {
    fn into_values(self) -> Result<Vec<Value>> {
        Ok(Vec::new())
    }
}

impl Params for [&dyn ToValue; 0] {
    fn into_values(self) -> Result<Vec<Value>> {
        Ok(Vec::new())
    }
}

impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Result<Vec<Value>> {
        bind_all(self.iter().map(|v| *v))
    }
}

impl Params for Vec<Value> {
    fn into_values(self) -> Result<Vec<Value>> {
        Ok(self)
    }
}

/// Fixed lengths instead of a const generic, as rusqlite does: `[]` must
/// resolve to the one zero-length impl above.
macro_rules! array_params {
    ($($n:literal)+) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn into_values(self) -> Result<Vec<Value>> {
                bind_all(self.iter().map(|v| v as &dyn ToValue))
            }
        }
        impl<T: ToValue> Params for &[&T; $n] {
            fn into_values(self) -> Result<Vec<Value>> {
                bind_all(self.iter().map(|v| *v as &dyn ToValue))
            }
        }
    )+};
}
array_params!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);

/// Parameters of mixed types, as rusqlite's `params!`.
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::store::sql::ToValue]
    };
    ($($param:expr),+ $(,)?) => {
        &[$(&$param as &dyn $crate::store::sql::ToValue),+] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub(crate) use params;

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(r) => Value::Real(r),
        // SQLite does not check that TEXT is UTF-8; a hand-edited row that
        // is not reads with replacement characters rather than failing.
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
}

/// A connection to the store's database.
pub(crate) struct Connection {
    backend: Backend,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Sqlite(_) => f.write_str("Connection(sqlite)"),
        }
    }
}

impl Connection {
    /// A SQLite connection opened and configured by `database.rs`.
    pub(crate) fn from_sqlite(conn: rusqlite::Connection) -> Self {
        Connection {
            backend: Backend::Sqlite(conn),
        }
    }

    /// A private in-memory SQLite database, for tests of SQL alone.
    #[cfg(test)]
    pub(crate) fn open_in_memory() -> Result<Self> {
        Ok(Connection::from_sqlite(
            rusqlite::Connection::open_in_memory()?,
        ))
    }

    /// Run one statement; returns the rows it changed.
    pub(crate) fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.prepare(sql)?.execute(params)
    }

    /// Run statements separated by `;`, without parameters.
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
        }
    }

    /// The first row of a query, mapped; [`Error::NoRows`] if there is none.
    pub(crate) fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        self.prepare(sql)?.query_row(params, f)
    }

    pub(crate) fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(Statement {
                inner: StatementInner::Sqlite(conn.prepare(sql)?),
            }),
        }
    }

    /// Like [`Connection::prepare`], but SQLite keeps the compiled statement
    /// for the next call with the same SQL (the heartbeat path runs the same
    /// few statements thousands of times a second).
    pub(crate) fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        match &self.backend {
            Backend::Sqlite(conn) => Ok(Statement {
                inner: StatementInner::SqliteCached(conn.prepare_cached(sql)?),
            }),
        }
    }

    /// Begin a transaction that takes the write lock at once (`BEGIN
    /// IMMEDIATE` on SQLite), so its reads and writes see one state.
    pub(crate) fn transaction(&mut self) -> Result<Transaction<'_>> {
        let begin = match &self.backend {
            Backend::Sqlite(_) => "BEGIN IMMEDIATE",
        };
        self.run_cached(begin)?;
        Ok(Transaction {
            conn: self,
            open: true,
        })
    }

    /// A savepoint outside any transaction (SQLite starts one for it).
    #[allow(dead_code)] // rusqlite's API shape; the store nests savepoints in transactions
    pub(crate) fn savepoint(&mut self) -> Result<Savepoint<'_>> {
        Savepoint::begin(self, 1)
    }

    /// A parameterless control statement (`BEGIN`, `COMMIT`, `SAVEPOINT`)
    /// through the statement cache: the writer issues them per command.
    fn run_cached(&self, sql: &str) -> Result<()> {
        self.prepare_cached(sql)?.execute([])?;
        Ok(())
    }
}

/// A transaction: [`Transaction::commit`] keeps it, dropping it rolls it back.
pub(crate) struct Transaction<'c> {
    conn: &'c Connection,
    open: bool,
}

impl Transaction<'_> {
    pub(crate) fn commit(mut self) -> Result<()> {
        self.conn.run_cached("COMMIT")?;
        self.open = false;
        Ok(())
    }

    /// A savepoint inside this transaction.
    #[allow(dead_code)] // rusqlite's API shape; the writer caches its own SAVEPOINT statements
    pub(crate) fn savepoint(&mut self) -> Result<Savepoint<'_>> {
        Savepoint::begin(self.conn, 1)
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Also after a failed COMMIT, which leaves SQLite's transaction open.
        if self.open {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::debug!(error = %e, "rollback of a dropped transaction failed");
            }
        }
    }
}

/// A savepoint: [`Savepoint::commit`] releases it into the enclosing
/// transaction, dropping it rolls back to it.
pub(crate) struct Savepoint<'c> {
    conn: &'c Connection,
    depth: u32,
    open: bool,
}

#[allow(dead_code)] // rusqlite's API shape; see Transaction::savepoint
impl<'c> Savepoint<'c> {
    fn begin(conn: &'c Connection, depth: u32) -> Result<Self> {
        conn.execute_batch(&format!("SAVEPOINT sp{depth}"))?;
        Ok(Savepoint {
            conn,
            depth,
            open: true,
        })
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        self.conn
            .execute_batch(&format!("RELEASE sp{}", self.depth))?;
        self.open = false;
        Ok(())
    }

    /// A savepoint nested in this one.
    pub(crate) fn savepoint(&mut self) -> Result<Savepoint<'_>> {
        Savepoint::begin(self.conn, self.depth + 1)
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.open {
            let depth = self.depth;
            if let Err(e) = self
                .conn
                .execute_batch(&format!("ROLLBACK TO sp{depth}; RELEASE sp{depth}"))
            {
                tracing::debug!(error = %e, "rollback of a dropped savepoint failed");
            }
        }
    }
}

/// A prepared statement.
pub(crate) struct Statement<'c> {
    inner: StatementInner<'c>,
}

enum StatementInner<'c> {
    Sqlite(rusqlite::Statement<'c>),
    SqliteCached(rusqlite::CachedStatement<'c>),
}

impl<'c> Statement<'c> {
    fn sqlite(&mut self) -> &mut rusqlite::Statement<'c> {
        match &mut self.inner {
            StatementInner::Sqlite(statement) => statement,
            StatementInner::SqliteCached(statement) => statement,
        }
    }

    /// Run the statement; returns the rows it changed.
    pub(crate) fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        let values = params.into_values()?;
        Ok(self
            .sqlite()
            .execute(rusqlite::params_from_iter(values.iter()))?)
    }

    /// The rows of the query, one at a time.
    pub(crate) fn query<P: Params>(&mut self, params: P) -> Result<Rows<'_>> {
        let values = params.into_values()?;
        Ok(Rows {
            inner: RowsInner::Sqlite(
                self.sqlite()
                    .query(rusqlite::params_from_iter(values.iter()))?,
            ),
        })
    }

    /// The first row, mapped; [`Error::NoRows`] if there is none.
    pub(crate) fn query_row<T, P, F>(&mut self, params: P, f: F) -> Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> Result<T>,
    {
        let mut rows = self.query(params)?;
        match rows.next()? {
            Some(row) => f(&row),
            None => Err(Error::NoRows),
        }
    }

    /// Every row, mapped, up to the first mapping error (which ends the
    /// iterator). Collected, so a backend that answers whole result sets
    /// serves it the same way.
    pub(crate) fn query_map<T, P, F>(&mut self, params: P, mut f: F) -> Result<MappedRows<T>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> Result<T>,
    {
        let mut rows = self.query(params)?;
        let mut mapped = Vec::new();
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let value = f(&row);
                    let failed = value.is_err();
                    mapped.push(value);
                    if failed {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    mapped.push(Err(e));
                    break;
                }
            }
        }
        Ok(MappedRows {
            rows: mapped.into_iter(),
        })
    }

    /// Whether the query returns at least one row.
    pub(crate) fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        Ok(self.query(params)?.next()?.is_some())
    }
}

/// The mapped rows of [`Statement::query_map`].
pub(crate) struct MappedRows<T> {
    rows: std::vec::IntoIter<Result<T>>,
}

impl<T> Iterator for MappedRows<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        self.rows.next()
    }
}

/// The rows of [`Statement::query`].
pub(crate) struct Rows<'s> {
    inner: RowsInner<'s>,
}

enum RowsInner<'s> {
    Sqlite(rusqlite::Rows<'s>),
}

impl Rows<'_> {
    #[allow(clippy::should_implement_trait)] // each row borrows the cursor: not an Iterator
    pub(crate) fn next(&mut self) -> Result<Option<Row<'_>>> {
        match &mut self.inner {
            RowsInner::Sqlite(rows) => Ok(rows.next()?.map(|row| Row {
                inner: RowInner::Sqlite(row),
            })),
        }
    }
}

/// One result row.
pub(crate) struct Row<'r> {
    inner: RowInner<'r>,
}

enum RowInner<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    /// A row a backend answered as values (the PostgreSQL driver's shape).
    #[allow(dead_code)] // built by the PostgreSQL backend once it is wired in
    Values(&'r [Value]),
}

impl Row<'_> {
    /// Column `index` (0-based) as `T`.
    pub(crate) fn get<T: FromValue>(&self, index: usize) -> Result<T> {
        let value = match &self.inner {
            RowInner::Sqlite(row) => from_sqlite(row.get_ref(index)?),
            RowInner::Values(values) => values
                .get(index)
                .cloned()
                .ok_or(Error::Sqlite(rusqlite::Error::InvalidColumnIndex(index)))?,
        };
        T::from_value(value).map_err(|m| Error::Conversion {
            column: index,
            expected: m.expected,
            found: m.found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE child (parent INTEGER NOT NULL REFERENCES parent (id));",
        )
        .unwrap();
        conn
    }

    #[test]
    fn constraint_errors_say_which_constraint() {
        let conn = memory();
        conn.execute("INSERT INTO parent (id, name) VALUES (1, 'a')", [])
            .unwrap();
        let duplicate = conn
            .execute("INSERT INTO parent (id, name) VALUES (2, 'a')", [])
            .unwrap_err();
        assert!(duplicate.is_unique_violation(), "{duplicate}");
        assert!(!duplicate.is_foreign_key_violation());
        let dangling = conn
            .execute("INSERT INTO child (parent) VALUES (?1)", [7])
            .unwrap_err();
        assert!(dangling.is_foreign_key_violation(), "{dangling}");
        assert!(!dangling.is_unique_violation());
    }

    #[test]
    fn a_conversion_error_names_the_column_and_both_types() {
        let conn = memory();
        let e = conn
            .query_row("SELECT 1, 'x'", [], |row| row.get::<i64>(1))
            .unwrap_err();
        assert_eq!(e.to_string(), "column 1: expected i64, found TEXT");
        let e = conn
            .execute(
                "INSERT INTO parent (id, name) VALUES (?1, ?2)",
                params![u64::MAX, "a"],
            )
            .unwrap_err();
        assert!(matches!(e, Error::Bind { index: 1, .. }), "{e}");
    }

    #[test]
    fn no_row_is_an_error_that_optional_turns_into_none() {
        let conn = memory();
        let missing = conn.query_row("SELECT name FROM parent", [], |row| row.get::<String>(0));
        assert!(matches!(missing, Err(Error::NoRows)));
        let missing = conn
            .query_row("SELECT name FROM parent", [], |row| row.get::<String>(0))
            .optional()
            .unwrap();
        assert_eq!(missing, None);
    }

    #[test]
    fn a_dropped_transaction_and_savepoint_roll_back_and_a_released_one_stays() {
        let mut conn = memory();
        {
            let tx = conn.transaction().unwrap();
            tx.execute("INSERT INTO parent (id, name) VALUES (1, 'dropped')", [])
                .unwrap();
        }
        let mut tx = conn.transaction().unwrap();
        {
            let kept = tx.savepoint().unwrap();
            kept.execute("INSERT INTO parent (id, name) VALUES (2, 'kept')", [])
                .unwrap();
            kept.commit().unwrap();
        }
        {
            let mut outer = tx.savepoint().unwrap();
            outer
                .execute("INSERT INTO parent (id, name) VALUES (3, 'outer')", [])
                .unwrap();
            let inner = outer.savepoint().unwrap();
            inner
                .execute("INSERT INTO parent (id, name) VALUES (4, 'inner')", [])
                .unwrap();
        }
        tx.commit().unwrap();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM parent ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn query_map_stops_at_the_first_row_that_does_not_convert() {
        let conn = memory();
        let rows: Vec<Result<i64>> = conn
            .prepare("SELECT 1 UNION ALL SELECT 'x' UNION ALL SELECT 3")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(*rows[0].as_ref().unwrap(), 1);
        assert!(rows[1].is_err());
    }
}
