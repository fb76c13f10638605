//! Which VXLAN tunnels each node runs (`DesiredState.tunnels`): nodes at
//! routed sites share no L2 segment, so every platform VLAN a node carries
//! reaches each other member node of that platform through a tunnel, and the
//! service network reaches every node. Only nodes that reported a tunnel
//! address (`Capabilities.tunnel_address`, the agent's `--tunnel-ip`) take
//! part; the others meet over their uplink trunk as before.

use measurelab_api::node_v1::DesiredTunnel;

use super::error::StoreError;
use super::platforms::PlatformRow;
use super::registry::Registry;
use super::resources::TxContext;

/// A node as far as tunnels care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TunnelEnd {
    pub id: String,
    pub name: String,
    /// Empty: the node has no tunnel address.
    pub address: String,
}

/// Registered, non-revoked nodes with their tunnel addresses, by id order.
/// A revoked node is out of every platform's data plane; an offline one keeps
/// its tunnels, so a missed heartbeat does not churn every peer's switch.
pub(crate) fn ends(registry: &Registry) -> Vec<TunnelEnd> {
    let mut ends: Vec<TunnelEnd> = registry
        .iter()
        .filter(|n| n.revoked_at.is_none())
        .map(|n| TunnelEnd {
            id: n.id.clone(),
            name: n.name.clone(),
            address: n.capabilities.tunnel_address.clone(),
        })
        .collect();
    ends.sort_by(|a, b| a.id.cmp(&b.id));
    ends
}

/// The tunnels of node `node_id`: for each platform it belongs to, one per
/// other member with a tunnel address, carrying the platform's VLAN; and one
/// per other node with a tunnel address for the service network
/// (`vlan_tag` 0: the agent fills in its own service VLAN).
pub(crate) fn of_node(
    node_id: &str,
    member_of: &[PlatformRow],
    ends: &[TunnelEnd],
) -> Vec<DesiredTunnel> {
    let has_address = |id: &str| ends.iter().any(|e| e.id == id && !e.address.is_empty());
    if !has_address(node_id) {
        return Vec::new();
    }
    let peers: Vec<&TunnelEnd> = ends
        .iter()
        .filter(|e| e.id != node_id && !e.address.is_empty())
        .collect();
    let mut tunnels = Vec::new();
    for platform in member_of {
        for peer in peers.iter().filter(|p| platform.node_ids.contains(&p.id)) {
            tunnels.push(DesiredTunnel {
                vlan_tag: u32::from(platform.vlan_tag),
                remote_address: peer.address.clone(),
                peer_node: peer.name.clone(),
            });
        }
    }
    for peer in &peers {
        tunnels.push(DesiredTunnel {
            vlan_tag: 0,
            remote_address: peer.address.clone(),
            peer_node: peer.name.clone(),
        });
    }
    tunnels
}

/// A node's tunnel address appeared or changed: every other node with one
/// must (re)build its tunnels towards it, so bump their desired generation.
pub(crate) fn touch_peers(cx: &mut TxContext<'_>, node_id: &str) -> Result<(), StoreError> {
    let peers: Vec<String> = ends(cx.registry)
        .into_iter()
        .filter(|e| !e.address.is_empty())
        .map(|e| e.id)
        .collect();
    for id in peers {
        cx.touch_node(&id)?;
    }
    // Its own tunnels start from its address too.
    cx.touch_node(node_id)
}

#[cfg(test)]
mod tests {
    use measurelab_api::http::PlatformPowerState;

    use super::*;

    fn end(id: &str, address: &str) -> TunnelEnd {
        TunnelEnd {
            id: id.into(),
            name: format!("name-{id}"),
            address: address.into(),
        }
    }

    fn platform(vlan_tag: u16, nodes: &[&str]) -> PlatformRow {
        PlatformRow {
            id: format!("p{vlan_tag}"),
            tenant_id: "t".into(),
            name: format!("p{vlan_tag}"),
            node_ids: nodes.iter().map(|n| n.to_string()).collect(),
            admins: vec![],
            description: String::new(),
            vlan_tag,
            subnet: "10.0.0.0/24".into(),
            gateway: None,
            power_state: PlatformPowerState::Running,
            created_at: String::new(),
            generation: 1,
            flow_monitoring: false,
            wg_gateway: None,
        }
    }

    fn summary(tunnels: &[DesiredTunnel]) -> Vec<(u32, &str)> {
        tunnels
            .iter()
            .map(|t| (t.vlan_tag, t.remote_address.as_str()))
            .collect()
    }

    #[test]
    fn each_platform_reaches_only_its_own_members_and_the_service_network_reaches_all() {
        let ends = [
            end("a", "10.60.1.2"),
            end("b", "10.60.2.2"),
            end("c", "10.60.3.2"),
            end("d", ""),
        ];
        // p10 spans a, b, d; p20 spans a, c; p30 spans b, c only.
        let member_of_a = [platform(10, &["a", "b", "d"]), platform(20, &["a", "c"])];
        assert_eq!(
            summary(&of_node("a", &member_of_a, &ends)),
            [
                (10, "10.60.2.2"),
                (20, "10.60.3.2"),
                (0, "10.60.2.2"),
                (0, "10.60.3.2")
            ]
        );
        // A node without a tunnel address gets no tunnels at all.
        assert!(of_node("d", &[platform(10, &["a", "b", "d"])], &ends).is_empty());
        // No platform: only the service network.
        assert_eq!(
            summary(&of_node("c", &[], &ends)),
            [(0, "10.60.1.2"), (0, "10.60.2.2")]
        );
    }
}
