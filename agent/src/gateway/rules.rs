//! The nftables table of a gateway namespace: its whole forwarding policy.

use super::spec::GatewaySpec;

/// The table's name (family `inet`).
pub const TABLE: &str = "measurelab_gateway";

/// An `nft -f` script that replaces the table atomically (the first line
/// makes the delete succeed on a namespace without it).
///
/// - forward: tunnel network -> platform subnet from the TUN to `eth0`,
///   and that traffic's replies back; everything else is dropped, so a peer
///   reaches no other network even with AllowedIPs 0.0.0.0/0 on its side
///   (the namespace has no route elsewhere either).
/// - input: only loopback, replies, and pings from the tunnel network to
///   the gateway's own tunnel address (a peer's first check).
/// - postrouting: the peers' traffic leaves `eth0` from `inside_address`.
pub fn script(spec: &GatewaySpec) -> String {
    let dev = &spec.names.device;
    let tunnel = &spec.tunnel_network;
    let subnet = &spec.platform_subnet;
    format!(
        "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain input {{
    type filter hook input priority filter; policy drop;
    iif \"lo\" accept
    ct state established,related accept
    iifname \"{dev}\" ip saddr {tunnel} icmp type echo-request accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname \"{dev}\" oifname \"eth0\" ip saddr {tunnel} ip daddr {subnet} accept
    iifname \"eth0\" oifname \"{dev}\" ip saddr {subnet} ip daddr {tunnel} ct state established,related accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"eth0\" ip saddr {tunnel} masquerade
  }}
}}
"
    )
}
