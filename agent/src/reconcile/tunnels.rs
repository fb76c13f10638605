//! The switch's VXLAN tunnels from the controller's [`DesiredTunnel`] list:
//! how a platform's VLAN (and the service network) reaches nodes at other
//! sites that share no L2 segment with this one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use measurelab_api::node_v1::DesiredState;

use crate::ovs::TunnelPortSpec;

use super::types::ReconcilerConfig;

/// The tunnels this node's switch should run: none without a tunnel address
/// of its own. An entry with a bad VLAN or peer address is skipped and
/// logged, not fatal: one bad peer must not take the other platforms' tunnels
/// (or the VM ports in the same OVS transaction) down with it.
pub(crate) fn plan(desired: &DesiredState, config: &ReconcilerConfig) -> Vec<TunnelPortSpec> {
    let Some(local) = config.tunnel_ip else {
        return Vec::new();
    };
    // Keyed by name: a repeated entry is one port, not a spec error.
    let mut tunnels = BTreeMap::new();
    for (i, want) in desired.tunnels.iter().enumerate() {
        let vlan = match (want.vlan_tag, config.service_vlan) {
            (0, Some(service)) => service,
            // No service host here: nothing on this node to join it to.
            (0, None) => continue,
            (tag, _) => match u16::try_from(tag) {
                Ok(vlan) if (1..=4094).contains(&vlan) => vlan,
                _ => {
                    tracing::warn!(
                        index = i,
                        vlan_tag = tag,
                        "tunnels[{i}].vlan_tag is not a VLAN id; skipped"
                    );
                    continue;
                }
            },
        };
        let remote = match want.remote_address.parse::<Ipv4Addr>() {
            Ok(ip) if ip != local => ip,
            _ => {
                tracing::warn!(
                    index = i,
                    remote = %want.remote_address,
                    peer = %want.peer_node,
                    "tunnels[{i}].remote_address is not a peer's IPv4 address; skipped"
                );
                continue;
            }
        };
        let spec = TunnelPortSpec::new(vlan, local, remote);
        tunnels.insert(spec.name.clone(), spec);
    }
    tunnels.into_values().collect()
}

#[cfg(test)]
mod tests {
    use measurelab_api::node_v1::DesiredTunnel;

    use super::*;

    fn want(vlan_tag: u32, remote: &str) -> DesiredTunnel {
        DesiredTunnel {
            vlan_tag,
            remote_address: remote.into(),
            peer_node: "n2".into(),
        }
    }

    fn config(tunnel_ip: Option<[u8; 4]>, service_vlan: Option<u16>) -> ReconcilerConfig {
        let mut config = ReconcilerConfig::new("/srv/agent", "n1");
        config.tunnel_ip = tunnel_ip.map(Ipv4Addr::from);
        config.service_vlan = service_vlan;
        config
    }

    #[test]
    fn without_a_tunnel_address_there_are_no_tunnels() {
        let desired = DesiredState {
            tunnels: vec![want(10, "10.60.2.2")],
            ..Default::default()
        };
        assert!(plan(&desired, &config(None, Some(4000))).is_empty());
    }

    #[test]
    fn the_service_network_takes_the_agents_own_vlan_and_bad_entries_are_skipped() {
        let desired = DesiredState {
            tunnels: vec![
                want(0, "10.60.2.2"),
                want(10, "10.60.2.2"),
                want(10, "10.60.2.2"),
                want(5000, "10.60.2.2"),
                want(11, "not-an-ip"),
                want(12, "10.60.1.2"),
            ],
            ..Default::default()
        };
        let got: Vec<(u16, u32, String)> =
            plan(&desired, &config(Some([10, 60, 1, 2]), Some(4000)))
                .into_iter()
                .map(|t| (t.vlan, t.key, t.remote_ip.to_string()))
                .collect();
        assert_eq!(
            got,
            [
                (10, 10, "10.60.2.2".to_string()),
                (4000, 4000, "10.60.2.2".to_string())
            ]
        );
        // No service host: the service network's entry has nowhere to go.
        let got = plan(&desired, &config(Some([10, 60, 1, 2]), None));
        assert_eq!(got.iter().map(|t| t.vlan).collect::<Vec<_>>(), [10]);
    }
}
