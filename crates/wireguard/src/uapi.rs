//! The `wg` UAPI (cross-platform userspace interface) on a device's unix
//! socket: `get=1` reads the device, `set=1` changes it.
//!
//! [`apply`] brings a device to a [`DeviceConfig`] by diffing against what
//! `get=1` reports and sending only the difference: boringtun panics when a
//! `set` names a peer it already has (it cannot modify a peer in place), and
//! re-sending an unchanged peer would drop its session anyway, so a peer
//! that changed is removed and added in one `set`, and a peer that did not
//! change is never touched. A removed peer's session ends with the `set`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::key::{Key, KeyError};

/// How long one UAPI exchange may take: the device answers from its event
/// loop, so anything longer means it hangs.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A UAPI exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    #[error("device socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device at {path} answered errno={errno}")]
    Errno { path: PathBuf, errno: i32 },
    #[error("device at {path} sent an unexpected line {line:?}")]
    Protocol { path: PathBuf, line: String },
    #[error("device at {path} reported a bad key: {source}")]
    Key { path: PathBuf, source: KeyError },
}

/// What a device should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub private_key: Key,
    /// `None`: keep whatever port the device has (a client's random one).
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerConfig>,
}

/// One peer of a [`DeviceConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: Key,
    /// CIDRs, `A.B.C.D/N`, as the device reports them back.
    pub allowed_ips: Vec<String>,
    /// Where to send the first handshake; `None` for a peer that calls in.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive in seconds.
    pub keepalive: Option<u16>,
}

/// What `get=1` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The public key of the device's private key, if it has one.
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Key,
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    /// Seconds since the Unix epoch of the last handshake, if any.
    pub last_handshake_sec: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Reads the device behind `socket`.
pub fn get(socket: &Path) -> Result<DeviceState, UapiError> {
    let lines = exchange(socket, "get=1\n\n")?;
    let mut state = DeviceState::default();
    let bad_key = |source| UapiError::Key {
        path: socket.to_path_buf(),
        source,
    };
    for (key, value) in lines {
        let peer = state.peers.last_mut();
        match (key.as_str(), peer) {
            ("own_public_key", _) => {
                state.public_key = Some(Key::from_hex(&value).map_err(bad_key)?)
            }
            ("listen_port", _) => state.listen_port = number(socket, &key, &value)?,
            ("public_key", _) => state.peers.push(PeerState {
                public_key: Key::from_hex(&value).map_err(bad_key)?,
                allowed_ips: Vec::new(),
                endpoint: None,
                keepalive: None,
                last_handshake_sec: None,
                rx_bytes: 0,
                tx_bytes: 0,
            }),
            ("allowed_ip", Some(peer)) => peer.allowed_ips.push(value),
            ("endpoint", Some(peer)) => peer.endpoint = value.parse().ok(),
            ("persistent_keepalive_interval", Some(peer)) => {
                peer.keepalive = Some(number(socket, &key, &value)?)
            }
            ("last_handshake_time_sec", Some(peer)) => {
                peer.last_handshake_sec = Some(number(socket, &key, &value)?)
            }
            ("rx_bytes", Some(peer)) => peer.rx_bytes = number(socket, &key, &value)?,
            ("tx_bytes", Some(peer)) => peer.tx_bytes = number(socket, &key, &value)?,
            // fwmark, preshared keys, nanoseconds: nothing we act on.
            _ => {}
        }
    }
    Ok(state)
}

fn number<T: std::str::FromStr>(socket: &Path, key: &str, value: &str) -> Result<T, UapiError> {
    value.parse().map_err(|_| UapiError::Protocol {
        path: socket.to_path_buf(),
        line: format!("{key}={value}"),
    })
}

/// Brings the device behind `socket` to `want`, touching only what differs
/// (see the module doc). Returns whether anything was sent.
pub fn apply(socket: &Path, want: &DeviceConfig) -> Result<bool, UapiError> {
    let have = get(socket)?;
    let body = diff(&have, want);
    if body.is_empty() {
        return Ok(false);
    }
    exchange(socket, &format!("set=1\n{body}\n"))?;
    Ok(true)
}

/// The `set=1` lines that turn `have` into `want`; empty when they agree.
fn diff(have: &DeviceState, want: &DeviceConfig) -> String {
    let mut body = String::new();
    if have.public_key.as_ref() != Some(&want.private_key.public()) {
        // A new identity: every session was with the old one.
        body.push_str(&format!("private_key={}\n", want.private_key.to_hex()));
    }
    if let Some(port) = want.listen_port.filter(|p| *p != have.listen_port) {
        body.push_str(&format!("listen_port={port}\n"));
    }
    let wanted: BTreeMap<&Key, &PeerConfig> =
        want.peers.iter().map(|p| (&p.public_key, p)).collect();
    for peer in &have.peers {
        let keep = wanted
            .get(&peer.public_key)
            .is_some_and(|w| same_peer(peer, w));
        if !keep {
            body.push_str(&format!(
                "public_key={}\nremove=true\n",
                peer.public_key.to_hex()
            ));
        }
    }
    let present: BTreeMap<&Key, &PeerState> =
        have.peers.iter().map(|p| (&p.public_key, p)).collect();
    for peer in wanted.values() {
        if present
            .get(&peer.public_key)
            .is_some_and(|h| same_peer(h, peer))
        {
            continue;
        }
        body.push_str(&format!("public_key={}\n", peer.public_key.to_hex()));
        if let Some(endpoint) = peer.endpoint {
            body.push_str(&format!("endpoint={endpoint}\n"));
        }
        if let Some(keepalive) = peer.keepalive {
            body.push_str(&format!("persistent_keepalive_interval={keepalive}\n"));
        }
        body.push_str("replace_allowed_ips=true\n");
        for ip in &peer.allowed_ips {
            body.push_str(&format!("allowed_ip={ip}\n"));
        }
    }
    body
}

/// Whether the device's peer already is the wanted one. The endpoint counts
/// only when configured: a calling-in peer's endpoint is learned.
fn same_peer(have: &PeerState, want: &PeerConfig) -> bool {
    let ips = |list: &[String]| list.iter().cloned().collect::<BTreeSet<_>>();
    ips(&have.allowed_ips) == ips(&want.allowed_ips)
        && have.keepalive == want.keepalive
        && (want.endpoint.is_none() || have.endpoint == want.endpoint)
}

/// Sends `request`, returns the `key=value` lines of the answer before its
/// `errno=`, failing unless that is 0.
fn exchange(socket: &Path, request: &str) -> Result<Vec<(String, String)>, UapiError> {
    let io = |source| UapiError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut lines = Vec::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(io)?;
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::Protocol {
                path: socket.to_path_buf(),
                line,
            });
        };
        if key == "errno" {
            let errno = number(socket, key, value)?;
            if errno != 0 {
                return Err(UapiError::Errno {
                    path: socket.to_path_buf(),
                    errno,
                });
            }
            return Ok(lines);
        }
        lines.push((key.to_string(), value.to_string()));
    }
    Err(UapiError::Protocol {
        path: socket.to_path_buf(),
        line: "(end of stream before errno=)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: &Key, ips: &[&str]) -> PeerConfig {
        PeerConfig {
            public_key: key.clone(),
            allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
            endpoint: None,
            keepalive: None,
        }
    }

    fn state_of(config: &DeviceConfig, port: u16) -> DeviceState {
        DeviceState {
            public_key: Some(config.private_key.public()),
            listen_port: port,
            peers: config
                .peers
                .iter()
                .map(|p| PeerState {
                    public_key: p.public_key.clone(),
                    allowed_ips: p.allowed_ips.clone(),
                    endpoint: p.endpoint,
                    keepalive: p.keepalive,
                    last_handshake_sec: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn an_unchanged_peer_is_never_resent_and_a_changed_one_is_removed_first() {
        let (a, b, c) = (Key::generate(), Key::generate(), Key::generate());
        let old = DeviceConfig {
            private_key: Key::generate(),
            listen_port: Some(51820),
            peers: vec![peer(&a, &["100.96.0.2/32"]), peer(&b, &["100.96.0.3/32"])],
        };
        assert_eq!(diff(&state_of(&old, 51820), &old), "");
        let new = DeviceConfig {
            peers: vec![
                peer(&a, &["100.96.0.2/32"]),
                peer(&b, &["100.96.0.9/32"]),
                peer(&c, &["100.96.0.4/32"]),
            ],
            ..old.clone()
        };
        let body = diff(&state_of(&old, 51820), &new);
        assert!(!body.contains(&a.to_hex()), "{body}");
        let b_at = body.find(&format!("public_key={}\nremove=true\n", b.to_hex()));
        let b_again = body.rfind(&format!(
            "public_key={}\nreplace_allowed_ips=true\nallowed_ip=100.96.0.9/32\n",
            b.to_hex()
        ));
        assert!(b_at.is_some() && b_again > b_at, "{body}");
        assert!(
            body.contains(&format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip=100.96.0.4/32\n",
                c.to_hex()
            )),
            "{body}"
        );
        assert!(
            !body.contains("private_key") && !body.contains("listen_port"),
            "{body}"
        );
    }

    #[test]
    fn a_new_key_or_port_is_sent_and_a_dropped_peer_removed() {
        let a = Key::generate();
        let old = DeviceConfig {
            private_key: Key::generate(),
            listen_port: Some(51820),
            peers: vec![peer(&a, &["100.96.0.2/32"])],
        };
        let new = DeviceConfig {
            private_key: Key::generate(),
            listen_port: Some(51821),
            peers: vec![],
        };
        let body = diff(&state_of(&old, 51820), &new);
        assert!(
            body.starts_with(&format!(
                "private_key={}\nlisten_port=51821\n",
                new.private_key.to_hex()
            )),
            "{body}"
        );
        assert!(
            body.ends_with(&format!("public_key={}\nremove=true\n", a.to_hex())),
            "{body}"
        );
    }
}
