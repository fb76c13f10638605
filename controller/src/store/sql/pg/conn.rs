//! Opening a session from a `postgres://` URL.
//!
//! `postgres://user[:password]@host[:port]/db[?sslmode=disable|prefer&...]`;
//! a host that is a directory path (percent-encoded, or `?host=/run/x`) is a
//! unix socket directory. TLS is not built in yet, so `sslmode=require` (and
//! stricter) is refused up front instead of failing at the handshake;
//! `prefer`, the default, falls back to an unencrypted session.
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

use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};

use super::error::{detail, PgError};

/// How long opening a session may take when the URL does not say
/// (`connect_timeout=`); without one a dead host blocks for the kernel's
/// TCP timeout, minutes.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `url` parsed, checked and given the defaults this store relies on.
pub(crate) fn config(url: &str) -> Result<Config, PgError> {
    // The parse error never echoes the URL, so no password leaks into logs.
    let mut config: Config = url.parse().map_err(|err: postgres::Error| PgError::Url {
        reason: detail(&err),
    })?;
    if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
        return Err(PgError::Url {
            reason: format!(
                "sslmode {:?}: TLS to PostgreSQL is not built into this controller yet; use sslmode=disable or prefer on a trusted network",
                config.get_ssl_mode()
            ),
        });
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("measurelab-controller");
    }
    Ok(config)
}

/// Open a session with `config` (see the module doc for where it may run).
pub(crate) fn open(config: &Config) -> Result<Client, PgError> {
    config.connect(NoTls).map_err(|source| PgError::Connect {
        target: target(config),
        detail: detail(&source),
        source,
    })
}

/// `host:port/db` of every candidate host: for messages, never the password.
pub(crate) fn target(config: &Config) -> String {
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
