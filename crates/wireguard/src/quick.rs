//! wg-quick configuration files, the format researchers get from any
//! WireGuard tooling:
//!
//! ```text
//! [Interface]
//! PrivateKey = <base64>
//! Address = 100.96.3.2/32
//! [Peer]
//! PublicKey = <base64>
//! Endpoint = 198.51.100.11:51820
//! AllowedIPs = 10.20.0.0/24, 100.96.3.0/24
//! PersistentKeepalive = 25
//! ```
//!
//! Keys are matched case-insensitively as wg-quick does. Keys wg-quick
//! knows but this client does not apply (DNS, hooks, PresharedKey, ...) are
//! refused rather than ignored, so nobody believes a setting took effect.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use crate::key::Key;
use crate::uapi::PeerConfig;

/// A parsed wg-quick file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickConfig {
    pub private_key: Key,
    /// `Address` entries, CIDR (a bare address gets /32 or /128).
    pub addresses: Vec<String>,
    pub listen_port: Option<u16>,
    pub mtu: Option<u32>,
    pub peers: Vec<PeerConfig>,
}

/// What is wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {reason}")]
pub struct ConfigError {
    /// 1-based; 0 for something missing from the whole file.
    pub line: usize,
    pub field: String,
    pub reason: String,
}

fn error(line: usize, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        line,
        field: field.to_string(),
        reason: reason.into(),
    }
}

enum Section {
    None,
    Interface,
    Peer,
}

/// A peer being read: its line, for errors about what it lacks.
struct PartialPeer {
    line: usize,
    public_key: Option<Key>,
    allowed_ips: Vec<String>,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
}

/// Parses the text of a wg-quick file.
pub fn parse(text: &str) -> Result<QuickConfig, ConfigError> {
    let mut section = Section::None;
    let mut interface_seen = false;
    let mut private_key = None;
    let mut addresses = Vec::new();
    let mut listen_port = None;
    let mut mtu = None;
    let mut peers: Vec<PartialPeer> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" if interface_seen => {
                    return Err(error(n, "[Interface]", "a second [Interface] section"))
                }
                "[interface]" => {
                    interface_seen = true;
                    Section::Interface
                }
                "[peer]" => {
                    peers.push(PartialPeer {
                        line: n,
                        public_key: None,
                        allowed_ips: Vec::new(),
                        endpoint: None,
                        keepalive: None,
                    });
                    Section::Peer
                }
                _ => {
                    return Err(error(
                        n,
                        line,
                        "unknown section (want [Interface] or [Peer])",
                    ))
                }
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(error(n, line, "not `Key = Value`"));
        };
        let (key, value) = (key.trim(), value.trim());
        match (&section, key.to_ascii_lowercase().as_str()) {
            (Section::None, _) => {
                return Err(error(n, key, "outside any [Interface] or [Peer] section"))
            }
            (Section::Interface, "privatekey") => {
                private_key =
                    Some(Key::from_base64(value).map_err(|e| error(n, key, e.to_string()))?)
            }
            (Section::Interface, "address") => {
                for item in list(value) {
                    addresses.push(cidr(item, true).map_err(|r| error(n, key, r))?);
                }
            }
            (Section::Interface, "listenport") => {
                listen_port = Some(
                    value
                        .parse()
                        .map_err(|_| error(n, key, format!("{value:?} is not a UDP port")))?,
                )
            }
            (Section::Interface, "mtu") => {
                let value: u32 = value
                    .parse()
                    .map_err(|_| error(n, key, format!("{value:?} is not a number")))?;
                if !(1280..=65535).contains(&value) {
                    return Err(error(n, key, format!("{value} is outside 1280..=65535")));
                }
                mtu = Some(value);
            }
            (Section::Peer, field) => {
                let Some(peer) = peers.last_mut() else {
                    return Err(error(n, key, "outside a [Peer] section"));
                };
                match field {
                    "publickey" => {
                        peer.public_key = Some(
                            Key::from_base64(value).map_err(|e| error(n, key, e.to_string()))?,
                        )
                    }
                    "allowedips" => {
                        for item in list(value) {
                            peer.allowed_ips
                                .push(cidr(item, false).map_err(|r| error(n, key, r))?);
                        }
                    }
                    "endpoint" => {
                        let resolved = value
                            .to_socket_addrs()
                            .map_err(|e| error(n, key, format!("{value:?} is not host:port: {e}")))?
                            .next()
                            .ok_or_else(|| {
                                error(n, key, format!("{value:?} resolves to no address"))
                            })?;
                        peer.endpoint = Some(resolved);
                    }
                    "persistentkeepalive" => {
                        peer.keepalive = match value {
                            "off" => None,
                            v => Some(v.parse().map_err(|_| {
                                error(n, key, format!("{value:?} is not a number of seconds"))
                            })?),
                        }
                    }
                    _ => return Err(unsupported(n, key)),
                }
            }
            (Section::Interface, _) => return Err(unsupported(n, key)),
        }
    }
    let private_key =
        private_key.ok_or_else(|| error(0, "PrivateKey", "the [Interface] section has none"))?;
    if addresses.is_empty() {
        return Err(error(0, "Address", "the [Interface] section has none"));
    }
    let peers = peers
        .into_iter()
        .map(|p| {
            let public_key = p
                .public_key
                .ok_or_else(|| error(p.line, "PublicKey", "this [Peer] has none"))?;
            Ok(PeerConfig {
                public_key,
                allowed_ips: p.allowed_ips,
                endpoint: p.endpoint,
                keepalive: p.keepalive,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    if peers.is_empty() {
        return Err(error(0, "[Peer]", "the file has no peer"));
    }
    Ok(QuickConfig {
        private_key,
        addresses,
        listen_port,
        mtu,
        peers,
    })
}

fn unsupported(line: usize, key: &str) -> ConfigError {
    error(line, key, "not supported by this client (supported: PrivateKey, Address, ListenPort, MTU; PublicKey, Endpoint, AllowedIPs, PersistentKeepalive)")
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `addr/len` normalised; a bare address gets a host prefix when
/// `host_default`, else is an error. An AllowedIPs entry must be a network
/// (no host bits), as `wg` insists.
fn cidr(item: &str, host_default: bool) -> Result<String, String> {
    let (addr, len) = match item.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (item, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{item:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{item:?}: prefix length must be 0..={max}"))?,
        None if host_default => max,
        None => return Err(format!("{item:?}: needs a prefix length (e.g. /{max})")),
    };
    Ok(format!("{addr}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &str) -> String {
        let (a, b) = (Key::generate(), Key::generate().public());
        body.replace("PRIV", &a.to_base64())
            .replace("PUB", &b.to_base64())
    }

    #[test]
    fn a_standard_file_parses() {
        let text = file(
            "# laptop\n[Interface]\nPrivateKey = PRIV\nAddress = 100.96.3.2/32\n\n[Peer]\nPublicKey = PUB\nEndpoint = 198.51.100.11:51820\nAllowedIPs = 10.20.0.0/24, 100.96.3.0/24\nPersistentKeepalive = 25\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.addresses, ["100.96.3.2/32"]);
        assert_eq!(config.peers.len(), 1);
        let peer = &config.peers[0];
        assert_eq!(peer.allowed_ips, ["10.20.0.0/24", "100.96.3.0/24"]);
        assert_eq!(peer.endpoint, Some("198.51.100.11:51820".parse().unwrap()));
        assert_eq!(peer.keepalive, Some(25));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases = [
            ("[Interface]\nPrivateKey = nope!\nAddress = 10.0.0.1\n[Peer]\nPublicKey = PUB\n", 2, "PrivateKey"),
            ("[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.300/32\n[Peer]\nPublicKey = PUB\n", 3, "Address"),
            ("[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1\n[Peer]\nPublicKey = PUB\nAllowedIPs = 10.0.0.0\n", 6, "AllowedIPs"),
            ("[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1\n[Peer]\nPublicKey = PUB\nEndpoint = 1.2.3.4\n", 6, "Endpoint"),
            ("[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1\nDNS = 1.1.1.1\n[Peer]\nPublicKey = PUB\n", 4, "DNS"),
            ("[Interface]\nPrivateKey = PRIV\nAddress = 10.0.0.1\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 4, "PublicKey"),
            ("[Interface]\nAddress = 10.0.0.1\n[Peer]\nPublicKey = PUB\n", 0, "PrivateKey"),
            ("PrivateKey = PRIV\n", 1, "PrivateKey"),
        ];
        for (text, line, field) in cases {
            let err = parse(&file(text)).unwrap_err();
            assert_eq!(
                (err.line, err.field.as_str()),
                (line, field),
                "{text}: {err}"
            );
        }
    }
}
