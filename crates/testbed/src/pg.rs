//! A private PostgreSQL server for tests, and a fresh database per test.
//!
//! [`database`] hands out a [`TestDatabase`]: a new `t_<random>` database,
//! dropped again (`WITH (FORCE)`, so connections a failed test left open do
//! not keep it alive) when the value drops. The server comes from
//! `MEASURELAB_TEST_PG_URL` when that is set (scripts/test.sh starts one for
//! the whole run), otherwise from `scripts/pg.sh start` in a private temp dir,
//! shared by the tests of this process and stopped when the last of their
//! databases is dropped. Under nextest (one process per test) that is one
//! server per test, about a second and a half each.
//!
//! [`tls_database`] is the same on a server started with `scripts/pg.sh
//! start --tls` (always one this process starts: the server of
//! `MEASURELAB_TEST_PG_URL` need not speak TLS); its URL asks for
//! `verify-full` against the test CA, and [`TestDatabase::tls`] names the
//! CA and a client certificate.
//!
//! Databases are created and dropped with `psql`, so this crate needs no
//! PostgreSQL client library of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context, Result};
use measurelab_hostnet as hostnet;

/// The server URL tests use instead of starting their own.
pub const URL_ENV: &str = "MEASURELAB_TEST_PG_URL";

/// The role a [`TlsFiles::client_cert`] logs in as; on the TLS server it
/// may log in over TCP with that certificate only.
pub const CERT_USER: &str = "measurelab_cert";

static SERVER: Mutex<Weak<Server>> = Mutex::new(Weak::new());
static TLS_SERVER: Mutex<Weak<Server>> = Mutex::new(Weak::new());

/// A server this process started with scripts/pg.sh; stopped on drop.
#[derive(Debug)]
struct Server {
    url: String,
    dir: tempfile::TempDir,
    tls: bool,
}

impl Server {
    fn start(tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mlab-pg-")
            .tempdir()
            .context("cannot create the PostgreSQL test dir")?;
        let args: &[&str] = if tls { &["start", "--tls"] } else { &["start"] };
        let url = run_script(args, dir.path())?;
        Ok(Server { url, dir, tls })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(err) = run_script(&["stop"], self.dir.path()) {
            eprintln!("testbed: stopping the PostgreSQL test server failed: {err:#}");
        }
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg.sh")
}

fn run_script(args: &[&str], dir: &Path) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args).env("MEASURELAB_PG_DIR", dir);
    Ok(hostnet::run(&mut cmd)?.trim().to_string())
}

/// The certificate files of a TLS test server (`scripts/pg.sh start --tls`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// The test CA that signed the server's certificate (SANs localhost
    /// and 127.0.0.1) and the client certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A client certificate for [`CERT_USER`].
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    /// The key of [`TlsFiles::client_cert`].
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

/// One database of its own for one test.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    admin_url: String,
    // Keeps a server this process started running while the database exists.
    server: Option<Arc<Server>>,
}

impl TestDatabase {
    /// `postgres://…/t_<random>`: the URL a client under test connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL of the server's `postgres` database, for a test that needs a
    /// second, unrelated connection (e.g. to terminate a backend).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// [`TestDatabase::url`] with its query replaced by `query` (without
    /// the `?`; empty for none), e.g. to try other sslmodes.
    pub fn url_with_query(&self, query: &str) -> String {
        let base = self
            .url
            .split_once('?')
            .map_or(self.url.as_str(), |(base, _)| base);
        if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{query}")
        }
    }

    /// The rows `sql` returns, each a list of its columns as text (NULL as
    /// ""), for a test that checks what the program under test wrote.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let out = psql(&self.url, &["-A", "-t", "-F", "\t"], sql)?;
        Ok(out
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| line.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// The certificate files, for a database from [`tls_database`].
    pub fn tls(&self) -> Option<TlsFiles> {
        self.server
            .as_ref()
            .filter(|server| server.tls)
            .map(|server| TlsFiles {
                dir: server.dir.path().join("tls"),
            })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = psql(&self.admin_url, &[], &sql) {
            eprintln!("testbed: {err:#}");
        }
    }
}

/// A fresh database on the test server (see the module doc).
pub fn database() -> Result<TestDatabase> {
    let (admin_url, server) = match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = shared_server(&SERVER, false)?;
            (server.url.clone(), Some(server))
        }
    };
    create(admin_url, server)
}

/// A fresh database on a TLS test server of this process (see the module
/// doc); its URL asks for `verify-full` against [`TlsFiles::ca`].
pub fn tls_database() -> Result<TestDatabase> {
    let server = shared_server(&TLS_SERVER, true)?;
    create(server.url.clone(), Some(server))
}

fn create(admin_url: String, server: Option<Arc<Server>>) -> Result<TestDatabase> {
    let name = format!("t_{}", random_suffix());
    psql(&admin_url, &[], &format!("CREATE DATABASE {name}"))?;
    let url = with_database(&admin_url, &name)?;
    Ok(TestDatabase {
        name,
        url,
        admin_url,
        server,
    })
}

/// The variable that runs the controller's tests on PostgreSQL:
/// `MEASURELAB_TEST_STORE=postgres` (with [`URL_ENV`] naming the server).
pub const STORE_ENV: &str = "MEASURELAB_TEST_STORE";

/// The `--store` URL a test controller on `data_dir` uses: `None` (SQLite in
/// the data dir) unless [`STORE_ENV`] is `postgres`. One database per data
/// dir for the life of the process, so a test that restarts its controller
/// on the same dir finds its rows again. Those databases are not dropped
/// (nothing runs at process exit); they live on the run's server, which
/// scripts/test.sh removes, so [`URL_ENV`] must be set.
pub fn store_for(data_dir: &Path) -> Result<Option<String>> {
    static DATABASES: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
    match std::env::var(STORE_ENV).as_deref() {
        Err(_) | Ok("" | "sqlite") => return Ok(None),
        Ok("postgres") => {}
        Ok(other) => bail!("{STORE_ENV}={other:?}: expected sqlite or postgres"),
    }
    if std::env::var(URL_ENV).map_or(true, |url| url.is_empty()) {
        bail!("{STORE_ENV}=postgres needs {URL_ENV} (scripts/pg.sh start prints one)");
    }
    let mut databases = DATABASES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, url)) = databases.iter().find(|(dir, _)| dir == data_dir) {
        return Ok(Some(url.clone()));
    }
    let database = std::mem::ManuallyDrop::new(database()?);
    databases.push((data_dir.to_path_buf(), database.url().to_string()));
    Ok(Some(database.url().to_string()))
}

fn shared_server(slot: &Mutex<Weak<Server>>, tls: bool) -> Result<Arc<Server>> {
    // Held while starting, so parallel tests of one process start one server.
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(server) = slot.upgrade() {
        return Ok(server);
    }
    let server = Arc::new(Server::start(tls)?);
    *slot = Arc::downgrade(&server);
    Ok(server)
}

/// `psql` with `flags` running `sql` on `url`; its output.
fn psql(url: &str, flags: &[&str], sql: &str) -> Result<String> {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(flags)
        .args(["-d", url, "-c", sql]);
    hostnet::run(&mut cmd).with_context(|| format!("psql: {sql}"))
}

fn random_suffix() -> String {
    // Unique enough across parallel test processes: pid, time and a counter.
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with its database (the path) replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("{URL_ENV} {url:?}: expected postgres://[user@]host[:port][/db][?options]");
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let query = rest[authority_end..]
        .find('?')
        .map(|q| &rest[authority_end + q..])
        .unwrap_or("");
    Ok(format!(
        "{}{}/{name}{query}",
        &url[..scheme_end + 3],
        &rest[..authority_end]
    ))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "t_1").unwrap(),
            "postgres://u@h:5/t_1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "t_1").unwrap(),
            "postgres://h/t_1"
        );
        assert_eq!(
            with_database("postgresql://h?host=/tmp/x", "t_2").unwrap(),
            "postgresql://h/t_2?host=/tmp/x"
        );
        assert!(with_database("h:5/db", "t").is_err());
    }
}
