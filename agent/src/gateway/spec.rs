//! A [`DesiredGateway`] checked field by field into a [`GatewaySpec`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use measurelab_api::node_v1::DesiredGateway;
use measurelab_wireguard::{Key, PeerConfig};
use sha2::{Digest, Sha256};

use super::error::GatewayError;
use crate::hypervisor::parse_cidr;

/// Host names of one gateway's pieces (see the module doc of `gateway`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayNames {
    /// `gw-<h>`.
    pub netns: String,
    /// Host end of the veth: the OVS port.
    pub port: String,
    /// The TUN (and the device's UAPI socket name).
    pub device: String,
}

impl GatewayNames {
    /// Names for `platform_id`'s gateway on the node whose OVS owner is `owner`.
    pub fn new(owner: &str, platform_id: &str) -> Self {
        let digest = Sha256::digest(format!("{owner}/{platform_id}").as_bytes());
        let h = hex::encode(&digest[..4]);
        GatewayNames {
            netns: format!("gw-{h}"),
            port: format!("gwp{h}"),
            device: format!("wg{h}"),
        }
    }
}

/// A gateway as the host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// The platform's id (the gateway's key).
    pub platform_id: String,
    /// Its name, for logs (the id when it has none).
    pub platform_name: String,
    /// The platform's VLAN.
    pub vlan: u16,
    /// `A.B.C.D/N`, the network address.
    pub platform_subnet: String,
    /// CIDR on `eth0`.
    pub inside_address: String,
    /// UDP port on the node's public address.
    pub listen_port: u16,
    /// The gateway's WireGuard key.
    pub private_key: Key,
    /// CIDR on the TUN.
    pub tunnel_address: String,
    /// The tunnel network, `A.B.C.D/N`.
    pub tunnel_network: String,
    /// The device's peers, each allowed its one tunnel address.
    pub peers: Vec<PeerConfig>,
    /// Host names of its pieces.
    pub names: GatewayNames,
}

fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(u32::from(addr) & mask)
}

fn contains(net: (Ipv4Addr, u8), addr: Ipv4Addr) -> bool {
    network(addr, net.1) == net.0
}

impl GatewaySpec {
    /// Checks `want`; the error names the first bad field.
    pub fn from_desired(owner: &str, want: &DesiredGateway) -> Result<Self, GatewayError> {
        let platform = if want.platform_name.is_empty() {
            want.platform_id.clone()
        } else {
            want.platform_name.clone()
        };
        let bad = |field: &str, reason: String| GatewayError::Invalid {
            platform: platform.clone(),
            field: field.to_string(),
            reason,
        };
        if want.platform_id.is_empty() {
            return Err(bad("platform_id", "is empty".into()));
        }
        let vlan = u16::try_from(want.vlan_tag)
            .ok()
            .filter(|v| (1..=4094).contains(v))
            .ok_or_else(|| {
                bad(
                    "vlan_tag",
                    format!("{} is not a VLAN id (1..=4094)", want.vlan_tag),
                )
            })?;
        let subnet = parse_cidr(&want.platform_subnet).map_err(|r| bad("platform_subnet", r))?;
        if subnet.1 > 30 || network(subnet.0, subnet.1) != subnet.0 {
            return Err(bad(
                "platform_subnet",
                format!(
                    "{:?} is not a network of at least 4 addresses",
                    want.platform_subnet
                ),
            ));
        }
        let inside = parse_cidr(&want.inside_address).map_err(|r| bad("inside_address", r))?;
        if inside.1 != subnet.1 || !contains(subnet, inside.0) || inside.0 == subnet.0 {
            return Err(bad(
                "inside_address",
                format!(
                    "{:?} is not a host of {}",
                    want.inside_address, want.platform_subnet
                ),
            ));
        }
        let listen_port = u16::try_from(want.listen_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                bad(
                    "listen_port",
                    format!("{} is not a UDP port", want.listen_port),
                )
            })?;
        let private_key =
            Key::from_base64(&want.private_key).map_err(|e| bad("private_key", e.to_string()))?;
        let tunnel = parse_cidr(&want.tunnel_address).map_err(|r| bad("tunnel_address", r))?;
        let tunnel_net = (network(tunnel.0, tunnel.1), tunnel.1);
        if tunnel.1 > 30 || tunnel.0 == tunnel_net.0 {
            return Err(bad(
                "tunnel_address",
                format!(
                    "{:?} is not a host address in a network of at least 4",
                    want.tunnel_address
                ),
            ));
        }
        if contains(subnet, tunnel.0) || contains(tunnel_net, subnet.0) {
            return Err(bad(
                "tunnel_address",
                format!(
                    "{} overlaps platform_subnet {}",
                    want.tunnel_address, want.platform_subnet
                ),
            ));
        }
        let mut keys = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        let mut peers = Vec::new();
        for (i, peer) in want.peers.iter().enumerate() {
            let field = |name: &str| format!("peers[{i}].{name}");
            let public_key = Key::from_base64(&peer.public_key)
                .map_err(|e| bad(&field("public_key"), e.to_string()))?;
            if !keys.insert(public_key.clone()) {
                return Err(bad(
                    &field("public_key"),
                    "a second peer with this key".into(),
                ));
            }
            let (addr, len) =
                parse_cidr(&peer.tunnel_address).map_err(|r| bad(&field("tunnel_address"), r))?;
            if len != 32 || !contains(tunnel_net, addr) || addr == tunnel.0 || addr == tunnel_net.0
            {
                return Err(bad(
                    &field("tunnel_address"),
                    format!(
                        "{:?} is not one address (/32) of the tunnel network {}/{}",
                        peer.tunnel_address, tunnel_net.0, tunnel_net.1
                    ),
                ));
            }
            if !addresses.insert(addr) {
                return Err(bad(
                    &field("tunnel_address"),
                    format!("{addr} is another peer's"),
                ));
            }
            peers.push(PeerConfig {
                public_key,
                allowed_ips: vec![format!("{addr}/32")],
                endpoint: None,
                keepalive: None,
            });
        }
        Ok(GatewaySpec {
            names: GatewayNames::new(owner, &want.platform_id),
            platform_id: want.platform_id.clone(),
            platform_name: platform.clone(),
            vlan,
            platform_subnet: format!("{}/{}", subnet.0, subnet.1),
            inside_address: format!("{}/{}", inside.0, inside.1),
            listen_port,
            private_key,
            tunnel_address: format!("{}/{}", tunnel.0, tunnel.1),
            tunnel_network: format!("{}/{}", tunnel_net.0, tunnel_net.1),
            peers,
        })
    }
}

#[cfg(test)]
mod tests {
    use measurelab_api::node_v1::DesiredGatewayPeer;

    use super::*;

    fn good() -> DesiredGateway {
        DesiredGateway {
            platform_id: "p1".into(),
            platform_name: "alpha".into(),
            vlan_tag: 101,
            platform_subnet: "10.20.1.0/24".into(),
            inside_address: "10.20.1.1/24".into(),
            listen_port: 51820,
            private_key: Key::generate().to_base64(),
            tunnel_address: "100.96.3.1/24".into(),
            peers: vec![DesiredGatewayPeer {
                id: "peer1".into(),
                public_key: Key::generate().public().to_base64(),
                tunnel_address: "100.96.3.2/32".into(),
            }],
        }
    }

    #[test]
    fn a_good_gateway_is_taken_with_its_networks() {
        let spec = GatewaySpec::from_desired("n1", &good()).unwrap();
        assert_eq!(spec.tunnel_network, "100.96.3.0/24");
        assert_eq!(spec.peers[0].allowed_ips, ["100.96.3.2/32"]);
        assert!(spec.names.port.len() <= 15 && spec.names.device.len() <= 15);
        assert_ne!(
            GatewayNames::new("n2", "p1"),
            spec.names,
            "two nodes on one host collide"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutate = Box<dyn Fn(&mut DesiredGateway)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("vlan_tag", Box::new(|g| g.vlan_tag = 5000)),
            (
                "platform_subnet",
                Box::new(|g| g.platform_subnet = "10.20.1.5/24".into()),
            ),
            (
                "inside_address",
                Box::new(|g| g.inside_address = "10.20.2.1/24".into()),
            ),
            ("listen_port", Box::new(|g| g.listen_port = 70000)),
            ("private_key", Box::new(|g| g.private_key = "short".into())),
            (
                "tunnel_address",
                Box::new(|g| g.tunnel_address = "10.20.1.9/28".into()),
            ),
            (
                "peers[0].public_key",
                Box::new(|g| g.peers[0].public_key = "x".into()),
            ),
            (
                "peers[0].tunnel_address",
                Box::new(|g| g.peers[0].tunnel_address = "100.96.3.2/24".into()),
            ),
            (
                "peers[0].tunnel_address",
                Box::new(|g| g.peers[0].tunnel_address = "10.20.1.7/32".into()),
            ),
            (
                "peers[1].public_key",
                Box::new(|g| g.peers.push(g.peers[0].clone())),
            ),
        ];
        for (field, mutate) in cases {
            let mut want = good();
            mutate(&mut want);
            match GatewaySpec::from_desired("n1", &want) {
                Err(GatewayError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
