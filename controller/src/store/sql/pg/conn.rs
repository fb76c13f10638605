//! Opening a session from a `postgres://` URL.
//!
//! `postgres://user[:password]@host[:port]/db[?sslmode=…&sslrootcert=…&...]`;
//! a host that is a directory path (percent-encoded, or `?host=/run/x`) is a
//! unix socket directory. TLS follows libpq's parameters ([`tls`]):
//! - `sslmode=disable`: plaintext.
//! - `sslmode=prefer`, the default: plaintext unless `sslrootcert` is given;
//!   with it, TLS with the server's chain checked against it when the server
//!   offers TLS, plaintext when it does not. (libpq would use unverified TLS
//!   here; that looks secure and is not, so this build does not.)
//! - `sslmode=require`: TLS or no session; the chain is checked when
//!   `sslrootcert` is given, otherwise the session is encrypted but the
//!   server is not authenticated (as in libpq).
//! - `sslmode=verify-ca`: TLS, the chain checked against `sslrootcert`
//!   (required).
//! - `sslmode=verify-full`: as verify-ca, and the certificate must name the
//!   URL's host (a DNS name, or an IP address SAN for an address).
//! - `sslcert=` and `sslkey=` (both or neither): a client certificate, for
//!   servers that authenticate by certificate.
//!
//! The files are read when the URL is checked, so a bad path or PEM is an
//! error at start-up, not at the first connect. Unix sockets never carry TLS
//! (the server does not offer it there), so `require` and stricter fail on
//! one.
//!
//! # Where a session may be used
//! The synchronous `postgres` client drives its socket with a single-threaded
//! tokio runtime of its own, created per connection, and every call blocks on
//! it. A tokio runtime cannot block inside another: connecting, calling, and
//! also dropping a session (which sends Terminate through that runtime) panic
//! on a thread that is running async tasks (a `#[tokio::main]` or runtime
//! worker thread). They work on a plain `std::thread`, such as the store's
//! writer thread, and inside `tokio::task::spawn_blocking` (a blocking-pool
//! thread knows the runtime's handle but is not inside it); a test in
//! `tests.rs` holds all four cases. The sessions of
//! [`Leadership`](super::Leadership) and [`Listener`](super::Listener) live
//! on threads of their own for this reason.

mod tls;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, NoTls};

use super::error::{detail, PgError};

/// How long opening a session may take when the URL does not say
/// (`connect_timeout=`); without one a dead host blocks for the kernel's
/// TCP timeout, minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked URL: postgres's session options, and the TLS that postgres's
/// own config cannot hold. It derefs to the session options so callers can
/// still set application name, keepalives and the like.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    session: postgres::Config,
    tls: tls::Tls,
}

impl Deref for Config {
    type Target = postgres::Config;

    fn deref(&self) -> &postgres::Config {
        &self.session
    }
}

impl DerefMut for Config {
    fn deref_mut(&mut self) -> &mut postgres::Config {
        &mut self.session
    }
}

/// `url` parsed, checked and given the defaults this store relies on.
pub(crate) fn config(url: &str) -> Result<Config, PgError> {
    let (rest, params) = tls::split_url(url)?;
    // The parse error never echoes the URL, so no password leaks into logs.
    let mut session: postgres::Config =
        rest.parse().map_err(|err: postgres::Error| PgError::Url {
            reason: detail(&err),
        })?;
    let tls = tls::Tls::new(params, session.get_ssl_mode())?;
    session.ssl_mode(tls.session_mode());
    if session.get_connect_timeout().is_none() {
        session.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if session.get_application_name().is_none() {
        session.application_name("measurelab-controller");
    }
    Ok(Config { session, tls })
}

/// Open a session with `config` (see the module doc for where it may run).
pub(crate) fn open(config: &Config) -> Result<Client, PgError> {
    // The sslmode is the URL's TLS decision, set again here so that a
    // caller changing session options through Deref cannot weaken it.
    let mut session = config.session.clone();
    session.ssl_mode(config.tls.session_mode());
    let opened = match config.tls.connector() {
        Some(connector) => session.connect(connector.clone()),
        None => session.connect(NoTls),
    };
    opened.map_err(|source| {
        let target = target(&config.session);
        let detail = detail(&source);
        if tls::is_tls_failure(&source) {
            PgError::Tls {
                target,
                detail,
                source,
            }
        } else {
            PgError::Connect {
                target,
                detail,
                source,
            }
        }
    })
}

/// `host:port/db` of every candidate host: for messages, never the password.
pub(crate) fn target(config: &postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(n, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port applies to every host; otherwise one each.
            match ports.get(n).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost".to_string()
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts}/{}",
        config.get_dbname().unwrap_or("(user's database)")
    )
}
