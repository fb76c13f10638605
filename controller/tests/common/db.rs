//! Direct access to a test controller's database, whichever backend the run
//! uses (`MEASURELAB_TEST_STORE`), for tests that check what is stored (a
//! digest, never a secret) or that write behind the API's back.
//!
//! SQL is given with its values inlined ([`quote`]): the two backends then
//! take the same text, and PostgreSQL's simple-query protocol answers every
//! column as text, which is what the tests compare. A PostgreSQL session is
//! used only on a thread of its own (the driver's rule: not on the test's
//! async worker).

use std::path::Path;

/// A backend-neutral string literal for `value`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn postgres_url(data_dir: &Path) -> Option<String> {
    measurelab_testbed::pg::store_for(data_dir).unwrap()
}

fn on_postgres<T: Send>(url: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| f(&mut postgres::Client::connect(url, postgres::NoTls).unwrap()))
            .join()
            .unwrap()
    })
}

/// Every row of `sql`, each column as text (NULL as `None`).
pub fn rows(data_dir: &Path, sql: &str) -> Vec<Vec<Option<String>>> {
    if let Some(url) = postgres_url(data_dir) {
        return on_postgres(&url, |client| {
            client
                .simple_query(sql)
                .unwrap()
                .into_iter()
                .filter_map(|message| match message {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        });
    }
    let conn = rusqlite::Connection::open(data_dir.join("controller.db")).unwrap();
    let mut statement = conn.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    use rusqlite::types::ValueRef;
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => None,
                        ValueRef::Integer(n) => Some(n.to_string()),
                        ValueRef::Real(r) => Some(r.to_string()),
                        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Some(hex::encode(b)),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The one column of the one row of `sql`.
pub fn value(data_dir: &Path, sql: &str) -> Option<String> {
    let rows = rows(data_dir, sql);
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    assert_eq!(rows[0].len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone()
}

/// Runs `statements` in one transaction. SQLite is handed one statement at
/// a time: preparing a statement copies the whole rest of its batch (the
/// batch is not NUL-terminated where the statement ends), so the 10,000
/// inserts of `bounds.rs` in one string copied about 400 GB and took over
/// five minutes instead of under a second.
pub fn write(data_dir: &Path, statements: &[String]) {
    if let Some(url) = postgres_url(data_dir) {
        let sql = format!("BEGIN; {}; COMMIT", statements.join(";\n"));
        return on_postgres(&url, |client| client.batch_execute(&sql).unwrap());
    }
    let mut conn = rusqlite::Connection::open(data_dir.join("controller.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let tx = conn.transaction().unwrap();
    for statement in statements {
        tx.execute_batch(statement).unwrap();
    }
    tx.commit().unwrap();
}

/// Holds the store's write lock (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL
/// the advisory lock every write transaction takes) until dropped.
pub struct WriteLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

/// The advisory lock key of the store's writers (store/sql/pg/keys.rs).
const PG_WRITE_LOCK_KEY: i64 = 0x6d6c_6162_0000_0001;

impl WriteLock {
    pub fn take(data_dir: &Path) -> WriteLock {
        let url = postgres_url(data_dir);
        let path = data_dir.join("controller.db");
        let (taken, is_taken) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || match url {
            Some(url) => {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let mut tx = client.transaction().unwrap();
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_WRITE_LOCK_KEY])
                    .unwrap();
                taken.send(()).unwrap();
                let _ = released.recv();
                tx.rollback().unwrap();
            }
            None => {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                taken.send(()).unwrap();
                let _ = released.recv();
                conn.execute_batch("ROLLBACK").unwrap();
            }
        });
        is_taken.recv().unwrap();
        WriteLock {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}
