//! The driver against a real PostgreSQL (measurelab_testbed::pg: a private
//! server, a fresh database per test).

use std::thread;
use std::time::{Duration, Instant};

use measurelab_testbed::pg::{database, tls_database, TestDatabase, CERT_USER};

use super::super::value::Value;
use super::{keys, Leadership, ListenEvent, Listener, PgDriver, PgError};

const DEADLINE: Duration = Duration::from_secs(20);
const CHECK_EVERY: Duration = Duration::from_millis(100);

fn fresh() -> (TestDatabase, PgDriver) {
    let db = database().expect("test database");
    let driver = PgDriver::connect(db.url()).expect("connect");
    (db, driver)
}

/// Poll `condition` until it holds or DEADLINE passes.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn count(driver: &mut PgDriver, sql: &str) -> i64 {
    match driver.query(sql, &[]).expect(sql).as_slice() {
        [row] => match row.as_slice() {
            [Value::Integer(n)] => *n,
            other => panic!("{sql}: {other:?}"),
        },
        rows => panic!("{sql}: {rows:?}"),
    }
}

#[test]
fn every_value_round_trips_through_its_column_type() {
    let (_db, mut pg) = fresh();
    pg.batch(
        "CREATE TABLE t (k BIGINT PRIMARY KEY, i BIGINT, d DOUBLE PRECISION, s TEXT, b BYTEA,
                         f BOOLEAN, i4 INTEGER, i2 SMALLINT, r REAL, v VARCHAR(20))",
    )
    .unwrap();
    let insert = "INSERT INTO t (k, i, d, s, b, f, i4, i2, r, v)
                  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
    let rows = [
        vec![
            Value::Integer(1),
            Value::Integer(i64::MAX),
            Value::Real(-1.25e300),
            Value::Text("héllo ✓ ' \" ?1".into()),
            Value::Blob(vec![0, 1, 255, 0]),
            Value::Integer(1),
            Value::Integer(i64::from(i32::MIN)),
            Value::Integer(i64::from(i16::MAX)),
            Value::Real(0.5),
            Value::Text("short".into()),
        ],
        vec![
            Value::Integer(2),
            Value::Integer(i64::MIN),
            Value::Real(f64::MIN_POSITIVE),
            Value::Text(String::new()),
            Value::Blob(Vec::new()),
            Value::Integer(0),
            Value::Integer(0),
            Value::Integer(-1),
            Value::Real(-3.0),
            Value::Text(String::new()),
        ],
        std::iter::once(Value::Integer(3))
            .chain(std::iter::repeat_n(Value::Null, 9))
            .collect(),
    ];
    for row in &rows {
        assert_eq!(pg.execute(insert, row).unwrap(), 1);
    }
    let read = pg
        .query(
            "SELECT k, i, d, s, b, f, i4, i2, r, v FROM t ORDER BY k",
            &[],
        )
        .unwrap();
    assert_eq!(read, rows);
}

#[test]
fn parameters_that_do_not_fit_the_inferred_type_name_the_parameter() {
    let (_db, mut pg) = fresh();
    pg.batch("CREATE TABLE t (i BIGINT, i2 SMALLINT, f BOOLEAN, s TEXT)")
        .unwrap();
    let cases: [(&str, Vec<Value>, usize, &str); 5] = [
        (
            "INSERT INTO t (i2) VALUES (?1)",
            vec![Value::Integer(70_000)],
            1,
            "out of range for int2",
        ),
        (
            "INSERT INTO t (i, s) VALUES (?1, ?2)",
            vec![Value::Integer(1), Value::Integer(2)],
            2,
            "an integer cannot be sent as text",
        ),
        (
            "INSERT INTO t (i) VALUES (?1)",
            vec![Value::Text("1".into())],
            1,
            "text cannot be sent as int8",
        ),
        (
            "INSERT INTO t (f) VALUES (?1)",
            vec![Value::Integer(2)],
            1,
            "not a boolean",
        ),
        (
            "INSERT INTO t (i, s) VALUES (?1, ?2)",
            vec![Value::Integer(1)],
            2,
            "the statement has 2 parameters, 1 values were given",
        ),
    ];
    for (sql, params, index, reason) in cases {
        match pg.execute(sql, &params) {
            Err(PgError::Param {
                index: got,
                reason: why,
                ..
            }) => {
                assert_eq!(got, index, "{sql}");
                assert!(why.contains(reason), "{sql}: {why}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    assert_eq!(count(&mut pg, "SELECT count(*) FROM t"), 0);
}

#[test]
fn a_column_without_a_value_type_is_an_error_naming_it() {
    let (_db, mut pg) = fresh();
    match pg.query("SELECT 1 AS one, now() AS started", &[]) {
        Err(err @ PgError::Column { .. }) => {
            let PgError::Column { index, name, .. } = &err else {
                unreachable!()
            };
            assert_eq!((*index, name.as_str()), (1, "started"));
            assert!(err.to_string().contains("timestamptz"), "{err}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn numeric_sums_and_averages_read_as_sqlite_would_give_them() {
    let (_db, mut pg) = fresh();
    pg.batch("CREATE TABLE t (n BIGINT); INSERT INTO t VALUES (9223372036854775807), (-3)")
        .unwrap();
    // SUM(bigint) is NUMERIC in PostgreSQL, an integer in SQLite.
    assert_eq!(
        pg.query("SELECT sum(n) FROM t", &[]).unwrap(),
        vec![vec![Value::Integer(9_223_372_036_854_775_804)]]
    );
    let read = pg
        .query(
            "SELECT avg(x), 12345678901234::numeric * 10000, -1.5::numeric,
                    ?1::numeric, (2::numeric ^ 70), 'NaN'::numeric
             FROM (VALUES (1), (2)) AS v (x)",
            &[Value::Integer(-123_456_789_012)],
        )
        .unwrap();
    let [row] = read.as_slice() else {
        panic!("{read:?}")
    };
    assert_eq!(row[0], Value::Real(1.5));
    assert_eq!(row[1], Value::Integer(123_456_789_012_340_000));
    assert_eq!(row[2], Value::Real(-1.5));
    assert_eq!(row[3], Value::Integer(-123_456_789_012));
    // 2^70 does not fit an i64: a real, as SQLite gives on overflow.
    assert_eq!(row[4], Value::Real(2f64.powi(70)));
    assert!(
        matches!(row[5], Value::Real(x) if x.is_nan()),
        "{:?}",
        row[5]
    );
}

#[test]
fn unique_and_foreign_key_violations_are_classified() {
    let (_db, mut pg) = fresh();
    pg.batch(
        "CREATE TABLE parent (id TEXT PRIMARY KEY);
         CREATE TABLE child (id TEXT PRIMARY KEY, parent TEXT NOT NULL REFERENCES parent(id));
         INSERT INTO parent VALUES ('p');",
    )
    .unwrap();
    let dup = pg
        .execute(
            "INSERT INTO parent (id) VALUES (?1)",
            &[Value::Text("p".into())],
        )
        .unwrap_err();
    assert!(dup.is_unique_violation(), "{dup}");
    assert!(!dup.is_foreign_key_violation() && !dup.is_connection_lost());
    assert!(
        dup.to_string()
            .contains("INSERT INTO parent (id) VALUES (?1)"),
        "{dup}"
    );
    assert!(dup.to_string().contains("23505"), "{dup}");

    let orphan = pg
        .execute(
            "INSERT INTO child (id, parent) VALUES (?, ?)",
            &[Value::Text("c".into()), Value::Text("nobody".into())],
        )
        .unwrap_err();
    assert!(orphan.is_foreign_key_violation(), "{orphan}");
    assert!(!orphan.is_unique_violation() && !orphan.is_serialization_failure());
}

#[test]
fn batch_rollback_undoes_the_transaction() {
    let (_db, mut pg) = fresh();
    pg.batch("CREATE TABLE t (id BIGINT PRIMARY KEY)").unwrap();
    pg.batch("BEGIN").unwrap();
    pg.execute("INSERT INTO t (id) VALUES (?1)", &[Value::Integer(1)])
        .unwrap();
    assert_eq!(count(&mut pg, "SELECT count(*) FROM t"), 1);
    pg.batch("ROLLBACK").unwrap();
    assert_eq!(count(&mut pg, "SELECT count(*) FROM t"), 0);
}

#[test]
fn a_savepoint_rollback_isolates_one_failed_command() {
    // The writer's group commit: every queued command runs inside its own
    // savepoint, and one that fails must not take the others with it.
    let (_db, mut pg) = fresh();
    pg.batch("CREATE TABLE t (id BIGINT PRIMARY KEY)").unwrap();
    let insert = "INSERT INTO t (id) VALUES (?1)";
    pg.batch("BEGIN").unwrap();
    for id in [1, 1, 2] {
        pg.batch("SAVEPOINT cmd").unwrap();
        match pg.execute(insert, &[Value::Integer(id)]) {
            Ok(_) => pg.batch("RELEASE cmd").unwrap(),
            Err(err) => {
                assert!(err.is_unique_violation(), "{err}");
                pg.batch("ROLLBACK TO cmd; RELEASE cmd").unwrap();
            }
        }
    }
    pg.batch("COMMIT").unwrap();
    assert_eq!(
        pg.query("SELECT id FROM t ORDER BY id", &[]).unwrap(),
        vec![vec![Value::Integer(1)], vec![Value::Integer(2)]]
    );
}

#[test]
fn two_replicas_migrating_at_once_make_one_schema() {
    let db = database().unwrap();
    let url = db.url().to_string();
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || PgDriver::connect(&url)?.migrate())
        })
        .collect();
    for replica in replicas {
        assert_eq!(replica.join().unwrap().unwrap(), 24);
    }
    let mut pg = PgDriver::connect(&url).unwrap();
    assert_eq!(count(&mut pg, "SELECT version FROM schema_version"), 24);
    assert_eq!(count(&mut pg, "SELECT count(*) FROM schema_version"), 1);
    // 30 tables of SQLite's schema after 0021, plus schema_version.
    assert_eq!(
        count(
            &mut pg,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        31
    );
    // Migrating an up-to-date database changes nothing.
    assert_eq!(pg.migrate().unwrap(), 24);

    pg.batch("UPDATE schema_version SET version = 99").unwrap();
    match pg.migrate() {
        Err(PgError::SchemaTooNew {
            found: 99,
            known: 24,
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_migrated_schema_takes_the_stores_rows() {
    // Identity ids come from the server as SQLite's rowids did, and the
    // constraints the store relies on are there.
    let (_db, mut pg) = fresh();
    pg.migrate().unwrap();
    let event = "INSERT INTO events (time, reason, object_kind, object_id, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)";
    let values = ["t", "R", "node", "n1", "m"].map(|s| Value::Text(s.into()));
    pg.execute(event, &values).unwrap();
    pg.execute(event, &values).unwrap();
    assert_eq!(
        pg.query("SELECT id FROM events ORDER BY id", &[]).unwrap(),
        vec![vec![Value::Integer(1)], vec![Value::Integer(2)]]
    );
    let log = pg
        .execute(
            "INSERT INTO node_logs (node_id, time, level, target, message) VALUES (?1, 't', 'l', 't', 'm')",
            &[Value::Text("no-such-node".into())],
        )
        .unwrap_err();
    assert!(log.is_foreign_key_violation(), "{log}");
}

#[test]
fn the_write_lock_serialises_write_transactions_until_commit() {
    let (db, mut first) = fresh();
    let mut observer = PgDriver::connect(db.url()).unwrap();
    first.batch("BEGIN").unwrap();
    first.write_lock().unwrap();

    let url = db.url().to_string();
    let second = thread::spawn(move || -> Result<(), PgError> {
        let mut pg = PgDriver::connect(&url)?;
        pg.batch("BEGIN")?;
        pg.write_lock()?;
        pg.batch("COMMIT")
    });
    let waiting = WAITING_ADVISORY;
    eventually("the second writer waits for the lock", || {
        count(&mut observer, waiting) == 1
    });
    assert!(!second.is_finished());
    first.batch("COMMIT").unwrap();
    second.join().unwrap().unwrap();
    assert_eq!(count(&mut observer, waiting), 0);
}

/// Sessions of this test's database waiting for an advisory lock. pg_locks
/// lists the whole server's locks: without the database, a test running
/// beside this one counts the other's waiters.
const WAITING_ADVISORY: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
    AND NOT granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Backend pid holding the leader lock in this database, if any.
fn leader_pid(observer: &mut PgDriver) -> Option<i64> {
    let sql = format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = {} AND objid = {} AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (keys::LEADER >> 32) as u32,
        keys::LEADER as u32
    );
    match observer.query(&sql, &[]).unwrap().as_slice() {
        [] => None,
        [row] => match row.as_slice() {
            [Value::Integer(pid)] => Some(*pid),
            other => panic!("{other:?}"),
        },
        rows => panic!("two holders of one advisory lock: {rows:?}"),
    }
}

#[test]
fn one_replica_leads_and_another_takes_over_when_it_goes() {
    let (db, mut observer) = fresh();
    let a = Leadership::start(db.url(), CHECK_EVERY).unwrap();
    let b = Leadership::start(db.url(), CHECK_EVERY).unwrap();
    eventually("one leader", || a.is_leader() || b.is_leader());
    assert!(!(a.is_leader() && b.is_leader()));
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    drop(leader);
    eventually("the follower takes over", || follower.is_leader());
    assert!(leader_pid(&mut observer).is_some());
}

#[test]
fn losing_the_session_loses_leadership() {
    let (db, mut observer) = fresh();
    let a = Leadership::start(db.url(), CHECK_EVERY).unwrap();
    let b = Leadership::start(db.url(), CHECK_EVERY).unwrap();
    eventually("one leader", || a.is_leader() || b.is_leader());
    let pid = leader_pid(&mut observer).expect("the leader's session holds the lock");

    // The server ends the leader's session; this test's session takes the
    // freed lock before either replica, so neither can be leader after. It
    // queues for the lock before the leader's session ends: the server
    // grants a released lock to a waiter at once, where a thief asking
    // after the kill raced the other replica's next try (every 100 ms) and,
    // when it lost, waited forever (a CI run hung here for 600 s).
    let url = db.url().to_string();
    let thief = thread::spawn(move || {
        let mut thief = PgDriver::connect(&url).unwrap();
        thief
            .query(
                "SELECT pg_advisory_lock(?1)",
                &[Value::Integer(keys::LEADER)],
            )
            .unwrap();
        thief
    });
    eventually("the thief waits for the leader lock", || {
        count(&mut observer, WAITING_ADVISORY) == 1
    });
    observer
        .query(
            "SELECT pg_terminate_backend(?1::int)",
            &[Value::Integer(pid)],
        )
        .unwrap();
    let thief = thief.join().unwrap();
    eventually("no replica thinks it leads", || {
        !a.is_leader() && !b.is_leader()
    });
    drop(thief);
    eventually("a replica leads again", || a.is_leader() || b.is_leader());
    assert!(!(a.is_leader() && b.is_leader()));
}

/// A listener on `channel` and the receiving end of its events.
struct Listening {
    runtime: tokio::runtime::Runtime,
    rx: tokio::sync::mpsc::Receiver<ListenEvent>,
    _listener: Listener,
}

impl Listening {
    /// Started and past its first [`ListenEvent::Listening`].
    fn start(db: &TestDatabase, channel: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut listening = Listening {
            runtime,
            rx,
            _listener: Listener::start(db.url(), channel, tx).unwrap(),
        };
        assert_eq!(listening.recv(), ListenEvent::Listening);
        listening
    }

    fn recv(&mut self) -> ListenEvent {
        let rx = &mut self.rx;
        self.runtime
            .block_on(async { tokio::time::timeout(DEADLINE, rx.recv()).await })
            .expect("an event within the deadline")
            .expect("the listener is running")
    }
}

#[test]
fn notifications_arrive_on_commit_and_never_after_rollback() {
    let (db, mut pg) = fresh();
    let mut events = Listening::start(&db, "store changes");

    pg.batch("BEGIN").unwrap();
    pg.notify("store changes", "rolled back").unwrap();
    pg.batch("ROLLBACK").unwrap();
    pg.batch("BEGIN").unwrap();
    pg.notify("store changes", "committed").unwrap();
    pg.notify("another channel", "not ours").unwrap();
    pg.batch("COMMIT").unwrap();
    pg.notify("store changes", "outside a transaction").unwrap();
    // Delivery is in commit order, so the first payload shows the rolled
    // back one was dropped, not merely late.
    assert_eq!(events.recv(), ListenEvent::Payload("committed".into()));
    assert_eq!(
        events.recv(),
        ListenEvent::Payload("outside a transaction".into())
    );
}

#[test]
fn the_listener_reconnects_and_says_so() {
    let (db, mut pg) = fresh();
    let mut events = Listening::start(&db, "c");
    pg.batch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'measurelab-controller listener' AND datname = current_database()",
    )
    .unwrap();
    assert_eq!(events.recv(), ListenEvent::Listening);
    pg.notify("c", "after").unwrap();
    assert_eq!(events.recv(), ListenEvent::Payload("after".into()));
}

#[test]
fn a_terminated_session_is_reported_as_lost() {
    let (db, mut pg) = fresh();
    let pid = count(&mut pg, "SELECT pg_backend_pid()");
    let mut admin = PgDriver::connect(db.url()).unwrap();
    admin
        .query(
            "SELECT pg_terminate_backend(?1::int)",
            &[Value::Integer(pid)],
        )
        .unwrap();
    let err = pg.query("SELECT 1", &[]).unwrap_err();
    assert!(err.is_connection_lost(), "{err}");
}

#[test]
fn sessions_work_in_spawn_blocking_and_on_plain_threads_not_on_async_workers() {
    // The rule in conn.rs: the client blocks on a runtime of its own, which
    // a blocking-pool or plain thread allows.
    let db = database().unwrap();
    let query = |url: String| -> Result<Vec<Vec<Value>>, PgError> {
        let mut pg = PgDriver::connect(&url)?;
        pg.query("SELECT ?1 + 1", &[Value::Integer(41)])
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let url = db.url().to_string();
    let in_pool = runtime
        .block_on(async { tokio::task::spawn_blocking(move || query(url)).await })
        .unwrap()
        .unwrap();
    let url = db.url().to_string();
    let on_thread = thread::spawn(move || query(url)).join().unwrap().unwrap();
    assert_eq!(in_pool, vec![vec![Value::Integer(42)]]);
    assert_eq!(on_thread, in_pool);

    // On a worker thread tokio refuses the client's own block_on for a
    // session opened there...
    let url = db.url().to_string();
    let opened = runtime.block_on(async { tokio::spawn(async move { query(url) }).await });
    assert!(opened.is_err_and(|err| err.is_panic()));
    // ...but a driver dropped there closes its session on a thread of its
    // own (a store's last handle often goes on a worker at shutdown).
    let mut driver = PgDriver::connect(db.url()).unwrap();
    let pid = count(&mut driver, "SELECT pg_backend_pid()");
    let dropped = runtime.block_on(async { tokio::spawn(async move { drop(driver) }).await });
    assert!(dropped.is_ok(), "{dropped:?}");
    let mut observer = PgDriver::connect(db.url()).unwrap();
    eventually("the dropped session closes", || {
        count(
            &mut observer,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        ) == 0
    });
}

#[test]
fn a_unix_socket_url_connects() {
    let (db, mut pg) = fresh();
    let [row] = pg
        .query(
            "SELECT split_part(current_setting('unix_socket_directories'), ',', 1),
                    current_setting('port')",
            &[],
        )
        .unwrap()
        .try_into()
        .unwrap();
    let [Value::Text(dir), Value::Text(port)] = row.as_slice() else {
        panic!("{row:?}")
    };
    let url = format!(
        "postgres://postgres@/{}?host={}&port={port}",
        db.name(),
        dir.trim()
    );
    let mut local = PgDriver::connect(&url).unwrap();
    assert_eq!(
        local
            .query("SELECT inet_server_addr() IS NULL", &[])
            .unwrap(),
        vec![vec![Value::Integer(1)]],
        "a unix socket session has no server address"
    );
}

#[test]
fn bad_urls_and_unreachable_servers_are_clear_errors_without_the_password() {
    match PgDriver::connect("postgres://u:s3cret@127.0.0.1/db?sslmode=verify-full") {
        Err(err @ PgError::Url { .. }) => {
            let text = err.to_string();
            assert!(text.contains("sslrootcert"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    match PgDriver::connect("postgres://u:s3cret@127.0.0.1:5432/db?nonsense=1") {
        Err(err @ PgError::Url { .. }) => assert!(!err.to_string().contains("s3cret"), "{err}"),
        other => panic!("{other:?}"),
    }
    // A port nothing listens on: bound here and closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match PgDriver::connect(&format!("postgres://u:s3cret@127.0.0.1:{port}/db")) {
        Err(err @ PgError::Connect { .. }) => {
            let text = err.to_string();
            assert!(text.contains(&format!("127.0.0.1:{port}/db")), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

/// Every migration is written for both dialects: after all of them, each
/// SQLite table and column exists in PostgreSQL with the matching type and
/// nullability, and PostgreSQL has nothing SQLite lacks. A migration added
/// to one dialect only fails here.
#[test]
fn both_dialects_migrate_to_the_same_columns() {
    use std::collections::BTreeMap;
    let mut sqlite = rusqlite::Connection::open_in_memory().unwrap();
    crate::store::database::migrate(&mut sqlite).unwrap();
    let mut expected = BTreeMap::new();
    let tables: Vec<String> = sqlite
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in tables {
        let mut columns = sqlite
            .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)")
            .unwrap();
        let rows = columns
            .query_map([&table], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, i64>(3)? > 0,
                ))
            })
            .unwrap();
        for row in rows {
            let (column, declared, not_null, primary_key) = row.unwrap();
            let pg_type = match declared.to_ascii_uppercase().as_str() {
                "INTEGER" => "bigint",
                "TEXT" => "text",
                "REAL" => "double precision",
                "BLOB" => "bytea",
                other => panic!("{table}.{column}: SQLite type {other} has no mapping here"),
            };
            // A primary key is NOT NULL in PostgreSQL whatever SQLite says.
            expected.insert(
                (table.clone(), column),
                (pg_type.to_string(), not_null || primary_key),
            );
        }
    }

    let db = database().unwrap();
    let mut pg = PgDriver::connect(db.url()).unwrap();
    pg.migrate().unwrap();
    let mut found = BTreeMap::new();
    for row in pg
        .query(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'schema_version'",
            &[],
        )
        .unwrap()
    {
        let text = |value: &Value| match value {
            Value::Text(text) => text.clone(),
            other => panic!("{other:?}"),
        };
        found.insert(
            (text(&row[0]), text(&row[1])),
            (text(&row[2]), text(&row[3]) == "NO"),
        );
    }
    let only_sqlite: Vec<_> = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .collect();
    let only_pg: Vec<_> = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        only_sqlite.is_empty() && only_pg.is_empty(),
        "columns only in SQLite: {only_sqlite:?}; only in PostgreSQL: {only_pg:?}"
    );
    for (column, want) in &expected {
        assert_eq!(&found[column], want, "{column:?} (type, NOT NULL)");
    }
}

/// A new database holds the same built-in rows in both dialects: the store
/// relies on the default tenant existing from the start.
#[test]
fn both_dialects_start_with_the_same_built_in_tenant() {
    const TENANTS: &str = "SELECT id, name, description, quota FROM tenants ORDER BY id";
    let mut sqlite = rusqlite::Connection::open_in_memory().unwrap();
    crate::store::database::migrate(&mut sqlite).unwrap();
    let expected: Vec<Vec<Value>> = sqlite
        .prepare(TENANTS)
        .unwrap()
        .query_map([], |row| {
            (0..4)
                .map(|i| row.get::<_, String>(i).map(Value::Text))
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(expected.len(), 1, "{expected:?}");

    let db = database().unwrap();
    let mut pg = PgDriver::connect(db.url()).unwrap();
    pg.migrate().unwrap();
    assert_eq!(pg.query(TENANTS, &[]).unwrap(), expected);
}

/// Whether this session is encrypted, as the server sees it.
fn encrypted(pg: &mut PgDriver) -> bool {
    match pg
        .query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .as_slice()
    {
        [row] => match row.as_slice() {
            [Value::Integer(ssl)] => *ssl == 1,
            other => panic!("{other:?}"),
        },
        rows => panic!("{rows:?}"),
    }
}

/// The port of the server `pg` is connected to.
fn server_port(pg: &mut PgDriver) -> String {
    match pg
        .query("SELECT current_setting('port')", &[])
        .unwrap()
        .as_slice()
    {
        [row] => match row.as_slice() {
            [Value::Text(port)] => port.clone(),
            other => panic!("{other:?}"),
        },
        rows => panic!("{rows:?}"),
    }
}

/// A TLS test database, a session on it with the URL's verify-full, and its CA.
fn fresh_tls() -> (TestDatabase, PgDriver, String) {
    let db = tls_database().expect("TLS test database");
    let pg = PgDriver::connect(db.url()).expect("connect with verify-full");
    let ca = db.tls().expect("TLS files").ca().display().to_string();
    (db, pg, ca)
}

#[test]
fn verify_full_with_the_servers_ca_gives_an_encrypted_session() {
    let (_db, mut pg, _ca) = fresh_tls();
    assert!(
        encrypted(&mut pg),
        "verify-full must not fall back to plaintext"
    );
    assert_eq!(
        pg.query("SELECT ?1 + 1", &[Value::Integer(1)]).unwrap(),
        vec![vec![Value::Integer(2)]]
    );
}

#[test]
fn each_sslmode_gives_the_session_it_documents() {
    let (db, _pg, ca) = fresh_tls();
    let cases = [
        ("sslmode=disable".to_string(), false),
        // No root certificate: plaintext, not unverified TLS.
        ("sslmode=prefer".to_string(), false),
        (String::new(), false),
        (format!("sslmode=prefer&sslrootcert={ca}"), true),
        (format!("sslrootcert={ca}"), true),
        // Encrypted though nothing is verified.
        ("sslmode=require".to_string(), true),
        (format!("sslmode=require&sslrootcert={ca}"), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
    ];
    for (query, want) in cases {
        let mut pg = PgDriver::connect(&db.url_with_query(&query))
            .unwrap_or_else(|err| panic!("{query}: {err}"));
        assert_eq!(encrypted(&mut pg), want, "{query}");
    }
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_naming_the_target() {
    let (db, _pg, _ca) = fresh_tls();
    let dir = tempfile::tempdir().unwrap();
    let other = crate::tls::Ca::load_or_create(dir.path()).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    // require with a root certificate checks the chain too, as in libpq.
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let url = db.url_with_query(&format!(
            "sslmode={mode}&sslrootcert={}",
            other_ca.display()
        ));
        match PgDriver::connect(&url) {
            Err(err @ PgError::Tls { .. }) => {
                let text = err.to_string();
                assert!(text.contains(&format!("/{}", db.name())), "{mode}: {text}");
                assert!(text.contains("127.0.0.1:"), "{mode}: {text}");
                assert!(text.contains("UnknownIssuer"), "{mode}: {text}");
                assert!(!err.is_connection_lost(), "{mode}: {text}");
            }
            other => panic!("{mode}: {other:?}"),
        }
    }
}

#[test]
fn verify_full_refuses_a_host_name_the_certificate_does_not_carry() {
    let (db, mut pg, ca) = fresh_tls();
    let port = server_port(&mut pg);
    // hostaddr connects to the server; the name is what TLS checks.
    let at = |mode: &str| {
        format!(
            "postgres://postgres@db.invalid:{port}/{}?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}",
            db.name()
        )
    };
    match PgDriver::connect(&at("verify-full")) {
        Err(err @ PgError::Tls { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains(&format!("db.invalid:{port}/{}", db.name())),
                "{text}"
            );
            assert!(text.contains("not valid for name \"db.invalid\""), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // verify-ca checks the chain only, so the same name passes.
    let mut chain_only = PgDriver::connect(&at("verify-ca")).unwrap();
    assert!(encrypted(&mut chain_only));
    // The names the certificate does carry pass verify-full.
    let mut by_name = PgDriver::connect(&format!(
        "postgres://postgres@localhost:{port}/{}?sslmode=verify-full&sslrootcert={ca}",
        db.name()
    ))
    .unwrap();
    assert!(encrypted(&mut by_name));
}

#[test]
fn require_against_a_server_without_tls_is_refused_not_plaintext() {
    let (db, mut pg) = fresh();
    assert_eq!(
        pg.query("SELECT current_setting('ssl')", &[]).unwrap(),
        vec![vec![Value::Text("off".into())]],
        "the plain test server must not offer TLS"
    );
    let url = format!(
        "{}{}sslmode=require",
        db.url(),
        if db.url().contains('?') { "&" } else { "?" }
    );
    match PgDriver::connect(&url) {
        Err(err @ PgError::Tls { .. }) => {
            let text = err.to_string();
            assert!(text.contains("server does not support TLS"), "{text}");
            assert!(text.contains(&format!("/{}", db.name())), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_certificate_logs_in_where_the_server_requires_one() {
    let (db, mut pg, ca) = fresh_tls();
    let port = server_port(&mut pg);
    let files = db.tls().unwrap();
    let base = format!(
        "postgres://{CERT_USER}@127.0.0.1:{port}/{}?sslmode=verify-full&sslrootcert={ca}",
        db.name()
    );
    let mut by_cert = PgDriver::connect(&format!(
        "{base}&sslcert={}&sslkey={}",
        files.client_cert().display(),
        files.client_key().display()
    ))
    .unwrap();
    assert_eq!(
        by_cert.query("SELECT current_user::text", &[]).unwrap(),
        vec![vec![Value::Text(CERT_USER.into())]]
    );
    // Without it the server refuses (pg_hba.conf: cert for this role).
    match PgDriver::connect(&base) {
        Err(err @ PgError::Connect { .. }) => {
            assert!(err.to_string().contains("certificate"), "{err}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn leadership_and_the_listener_run_over_tls() {
    let (db, mut observer, _ca) = fresh_tls();
    let leadership = Leadership::start(db.url(), CHECK_EVERY).unwrap();
    eventually("leader over TLS", || leadership.is_leader());
    let mut events = Listening::start(&db, "tls");
    observer.notify("tls", "over TLS").unwrap();
    assert_eq!(events.recv(), ListenEvent::Payload("over TLS".into()));
    let plaintext = count(
        &mut observer,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND NOT s.ssl
           AND a.application_name IN ('measurelab-controller leadership', 'measurelab-controller listener')",
    );
    let encrypted = count(
        &mut observer,
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND s.ssl
           AND a.application_name IN ('measurelab-controller leadership', 'measurelab-controller listener')",
    );
    assert_eq!((encrypted, plaintext), (2, 0));
}

/// docs/postgresql.md's answer to the database being a single point of
/// failure: a URL that lists every server of a replicated PostgreSQL, with
/// `target_session_attrs=read-write`, so a replica opens its session on the
/// first server that takes writes. One server runs here, so this shows the
/// two halves: a server that is gone is passed over for the next, and one
/// that only reads is refused.
#[test]
fn a_url_listing_several_servers_opens_a_session_on_one_that_takes_writes() {
    let db = database().expect("test database");
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: connecting to its port is refused.
    let url = db.url_with_query("target_session_attrs=read-write");
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let several = format!("{scheme_user}@{gone},{rest}");
    let mut pg = PgDriver::connect(&several).expect("the listed server that is up");
    assert_eq!(count(&mut pg, "SELECT 1"), 1);
    pg.batch(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = on",
        db.name()
    ))
    .unwrap();
    drop(pg);

    match PgDriver::connect(&several) {
        Err(PgError::Connect { target, .. }) => {
            assert!(target.contains(&gone.to_string()), "{target}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a read-only server was taken for writes"),
    }
    // Without the attribute the same URL opens a session that cannot write.
    let (scheme_user, rest) = db.url().split_once('@').unwrap();
    let mut read_only = PgDriver::connect(&format!("{scheme_user}@{gone},{rest}")).unwrap();
    assert!(read_only.batch("CREATE TABLE t (k BIGINT)").is_err());
}

/// A PostgreSQL restart or failover ends every session. A controller used to
/// keep its dead sessions and answer every request with `connection closed`
/// until it was restarted (seen by hand: a tenant created, the backends
/// terminated, every later request failed). Now the next transaction opens a
/// new session, and a transaction the server rolled back fails to its end.
#[test]
fn a_session_the_server_ended_is_replaced_but_not_inside_a_transaction() {
    let (db, mut pg) = fresh();
    let mut admin = PgDriver::connect(db.url()).unwrap();
    pg.batch("CREATE TABLE t (k BIGINT PRIMARY KEY)").unwrap();
    let terminate = |admin: &mut PgDriver, pg: &mut PgDriver| {
        let pid = count(pg, "SELECT pg_backend_pid()");
        admin
            .query(
                "SELECT pg_terminate_backend(?1::int)",
                &[Value::Integer(pid)],
            )
            .unwrap();
    };

    // Between transactions: the next BEGIN runs on a new session.
    terminate(&mut admin, &mut pg);
    pg.batch("BEGIN").expect("BEGIN on a new session");
    pg.execute("INSERT INTO t (k) VALUES (1)", &[]).unwrap();
    pg.batch("COMMIT").unwrap();
    assert_eq!(count(&mut admin, "SELECT count(*) FROM t"), 1);

    // Inside one: the rest of it fails, on no new session, to its end.
    pg.batch("BEGIN").unwrap();
    pg.execute("INSERT INTO t (k) VALUES (2)", &[]).unwrap();
    terminate(&mut admin, &mut pg);
    assert!(pg.execute("INSERT INTO t (k) VALUES (3)", &[]).is_err());
    match pg.execute("INSERT INTO t (k) VALUES (4)", &[]) {
        Err(PgError::SessionLost { sql }) => assert!(sql.contains("VALUES (4)"), "{sql}"),
        other => panic!("{other:?}"),
    }
    assert!(pg.batch("COMMIT").is_err());
    assert_eq!(count(&mut admin, "SELECT count(*) FROM t"), 1);

    // Then reads and writes go on.
    assert_eq!(count(&mut pg, "SELECT count(*) FROM t"), 1);
    pg.execute("INSERT INTO t (k) VALUES (5)", &[]).unwrap();
    assert_eq!(count(&mut admin, "SELECT count(*) FROM t"), 2);
}
