//! The node table printed by `lab up` and `lab status`.

use measurelab_api::http::{Node, NodeStatus};

/// Render nodes as an aligned text table.
pub fn render(nodes: &[Node]) -> String {
    let header = [
        "NAME",
        "STATUS",
        "LAST HEARTBEAT",
        "ADDRESS",
        "CAPABILITIES",
    ];
    let rows: Vec<[String; 5]> = nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                match n.status {
                    NodeStatus::Online => "online".to_string(),
                    NodeStatus::Offline => "offline".to_string(),
                    NodeStatus::Revoked => "revoked".to_string(),
                },
                n.last_heartbeat.clone().unwrap_or_else(|| "-".into()),
                if n.management_address.is_empty() {
                    "-".into()
                } else {
                    n.management_address.clone()
                },
                capabilities(n),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "-".into()
    } else {
        values.join(",")
    }
}

fn capabilities(node: &Node) -> String {
    let c = &node.capabilities;
    let mut text = format!(
        "libvirt={} netns={} ovs={} qos={} tools={}",
        list(&c.libvirt_uris),
        if c.namespace_backend { "yes" } else { "no" },
        list(&c.ovs_datapath_types),
        list(&c.qos_features),
        list(&c.service_tools)
    );
    // Where service_host tasks reach the node; absent: it takes none.
    if !c.service_endpoint.is_empty() {
        text.push_str(&format!(" service={}", c.service_endpoint));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurelab_api::http::{Capabilities, Resources};

    fn node(name: &str, status: NodeStatus) -> Node {
        Node {
            id: format!("id-{name}"),
            name: name.into(),
            status,
            last_heartbeat: Some("2026-11-25T20:00:00Z".into()),
            registered_at: "2026-11-25T19:00:00Z".into(),
            agent_version: "0.1.0".into(),
            management_address: "10.254.0.11".into(),
            capabilities: Capabilities {
                libvirt_uris: vec!["test:///default".into()],
                namespace_backend: true,
                ovs_datapath_types: vec!["netdev".into(), "system".into()],
                qos_features: vec!["linux-htb".into()],
                service_tools: vec![],
                service_endpoint: String::new(),
                flow_export: String::new(),
                uplink: None,
                datapath: String::new(),
                tunnel_address: String::new(),
                public_address: String::new(),
                control_protocol_version: None,
            },
            resources: Resources::default(),
            labels: Default::default(),
            flow_export: None,
            cpu_overcommit: 16.0,
            memory_overcommit: 1.0,
            reported_labels: Default::default(),
        }
    }

    #[test]
    fn columns_align_and_capabilities_are_summarised() {
        let text = render(&[
            node("n1", NodeStatus::Online),
            node("node-long", NodeStatus::Offline),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("NAME       STATUS   LAST HEARTBEAT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("n1         online   2026-11-25T20:00:00Z"),
            "{text}"
        );
        assert!(lines[2].contains("offline"));
        assert!(!text.contains("service="), "{text}");
        let mut serving = node("n1", NodeStatus::Online);
        serving.capabilities.service_tools = vec!["mcast".into()];
        serving.capabilities.service_endpoint = "10.253.0.11:7090".into();
        let text = render(&[serving]);
        assert!(
            text.lines()
                .nth(1)
                .unwrap_or_default()
                .ends_with("tools=mcast service=10.253.0.11:7090"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                "libvirt=test:///default netns=yes ovs=netdev,system qos=linux-htb tools=-"
            ),
            "{text}"
        );
    }
}
