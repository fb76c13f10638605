//! The service network on the node: an OVS internal port on the integration
//! bridge (access port of the service VLAN) carrying the service address,
//! with the multicast route on it. Idempotent: every call checks and repairs.

use std::time::{Duration, Instant};

use measurelab_hostnet as hostnet;
use measurelab_ovsdb::ops;
use measurelab_ovsdb::value;
use measurelab_ovsdb::OvsdbClient;
use serde_json::{json, Value};

use super::config::{ServiceHostConfig, ServiceHostError, SERVICE_ROLE};
use crate::ovs::{OWNER_KEY, ROLE_KEY};

const DB: &str = "Open_vSwitch";
/// How long ovs-vswitchd may take to create the internal port's netdev.
const INTERFACE_WAIT: Duration = Duration::from_secs(10);
/// The multicast range routed onto the service interface.
const MULTICAST_ROUTE: &str = "224.0.0.0/4";

/// Makes the service network of `config` exist: with an OVSDB the internal
/// port on `bridge` (tagged [`ServiceHostConfig::vlan`], owned by `owner`),
/// then, in this process's network namespace, the interface up with the
/// address, tx checksum offload off (userspace OVS otherwise delivers UDP
/// with bad checksums) and the multicast route.
pub async fn ensure_service_network(
    config: &ServiceHostConfig,
    ovsdb: Option<&str>,
    bridge: &str,
    owner: &str,
) -> Result<(), ServiceHostError> {
    if let Some(target) = ovsdb {
        ensure_port(config, target, bridge, owner).await?;
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || configure_interface(&config))
        .await
        .map_err(|e| ServiceHostError::Command {
            command: "configure the service interface".into(),
            reason: e.to_string(),
        })?
}

async fn ensure_port(
    config: &ServiceHostConfig,
    target: &str,
    bridge: &str,
    owner: &str,
) -> Result<(), ServiceHostError> {
    let ovsdb_error = |reason: String| ServiceHostError::Ovsdb {
        target: target.to_string(),
        reason,
    };
    let client = OvsdbClient::connect(target)
        .await
        .map_err(|e| ovsdb_error(e.to_string()))?;
    let port_name = config.interface.as_str();
    let read = client
        .transact(
            DB,
            vec![
                ops::select(
                    "Bridge",
                    vec![ops::eq("name", json!(bridge))],
                    Some(&["_uuid"]),
                ),
                ops::select(
                    "Port",
                    vec![ops::eq("name", json!(port_name))],
                    Some(&["_uuid", "tag", "external_ids"]),
                ),
                ops::select(
                    "Interface",
                    vec![ops::eq("name", json!(port_name))],
                    Some(&["_uuid", "type", "external_ids"]),
                ),
            ],
        )
        .await
        .map_err(|e| ovsdb_error(e.to_string()))?;
    let rows = |i: usize| {
        read.get(i)
            .ok_or_else(|| ovsdb_error(format!("answer {i} missing")))
            .and_then(|r| ops::selected_rows(r).map_err(|e| ovsdb_error(e.to_string())))
    };
    if rows(0)?.is_empty() {
        return Err(ServiceHostError::BridgeMissing {
            bridge: bridge.to_string(),
        });
    }
    let ours = |row: &serde_json::Map<String, Value>| {
        row.get("external_ids")
            .and_then(|ids| value::parse_string_map(ids).ok())
            .is_some_and(|ids| ids.get(OWNER_KEY).map(String::as_str) == Some(owner))
    };
    let ports = rows(1)?;
    let interfaces = rows(2)?;
    if ports.iter().chain(interfaces.iter()).any(|row| !ours(row)) {
        return Err(ServiceHostError::Conflict {
            port: port_name.to_string(),
        });
    }
    let owned_by = json!([
        "external_ids",
        "includes",
        value::string_map([(OWNER_KEY, owner)])
    ]);
    let mut tx = Vec::new();
    match ports.first() {
        Some(port) => {
            let tag = port.get("tag").and_then(Value::as_i64);
            if tag != Some(i64::from(config.vlan)) {
                tx.push(ops::update(
                    "Port",
                    vec![ops::eq("name", json!(port_name)), owned_by.clone()],
                    json!({"tag": config.vlan}),
                ));
            }
            let internal = interfaces
                .first()
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
                == Some("internal");
            if !internal {
                tx.push(ops::update(
                    "Interface",
                    vec![ops::eq("name", json!(port_name)), owned_by],
                    json!({"type": "internal"}),
                ));
            }
        }
        None => {
            // A leftover Interface row of ours without its Port is garbage
            // OVS collects once unreferenced; a fresh pair replaces it.
            let iface = value::fresh_uuid_name("svc_iface");
            let port = value::fresh_uuid_name("svc_port");
            tx.push(ops::insert(
                "Interface",
                json!({
                    "name": port_name,
                    "type": "internal",
                    "external_ids": value::string_map([(OWNER_KEY, owner)]),
                }),
                Some(&iface),
            ));
            tx.push(ops::insert(
                "Port",
                json!({
                    "name": port_name,
                    "tag": config.vlan,
                    "interfaces": ["set", [value::named_uuid(&iface)]],
                    "external_ids": value::string_map([(OWNER_KEY, owner), (ROLE_KEY, SERVICE_ROLE)]),
                }),
                Some(&port),
            ));
            tx.push(ops::mutate(
                "Bridge",
                vec![ops::eq("name", json!(bridge))],
                vec![ops::mutation_insert(
                    "ports",
                    json!(["set", [value::named_uuid(&port)]]),
                )],
            ));
        }
    }
    if tx.is_empty() {
        return Ok(());
    }
    client
        .transact(DB, tx)
        .await
        .map_err(|e| ovsdb_error(e.to_string()))?;
    tracing::info!(
        port = port_name,
        vlan = config.vlan,
        bridge,
        "service port set on the switch"
    );
    Ok(())
}

fn configure_interface(config: &ServiceHostConfig) -> Result<(), ServiceHostError> {
    let interface = config.interface.as_str();
    let started = Instant::now();
    // Not /sys/class/net: the agent may run under `nsenter --net` with the
    // host's sysfs, which lists the host's interfaces.
    while !hostnet::link_exists(None, interface) {
        if started.elapsed() > INTERFACE_WAIT {
            return Err(ServiceHostError::NoInterface {
                interface: interface.to_string(),
                waited: INTERFACE_WAIT,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cidr = format!("{}/{}", config.address, config.prefix_len);
    let addresses = hostnet::ip(&["-o", "-4", "addr", "show", "dev", interface])?;
    let has_address = addresses
        .split_whitespace()
        .any(|word| word == cidr.as_str());
    let up = hostnet::ip(&["-o", "link", "show", "dev", interface])?.contains(",UP");
    let routes = hostnet::ip(&["-4", "route", "show", MULTICAST_ROUTE])?;
    let routed = routes.contains(&format!("dev {interface}"));
    if has_address && up && routed {
        return Ok(());
    }
    // Checksums: a tap of the userspace datapath hands UDP over with the
    // checksum left to an offload that never happens.
    if let Err(err) = hostnet::tx_offload_off(None, interface) {
        tracing::warn!(error = %err, "cannot turn off tx checksum offload on the service interface");
    }
    hostnet::ip(&["link", "set", "dev", interface, "up"])?;
    if !has_address {
        hostnet::ip(&["addr", "replace", &cidr, "dev", interface])?;
    }
    if !routed {
        hostnet::ip(&["route", "replace", MULTICAST_ROUTE, "dev", interface])?;
    }
    tracing::info!(interface, address = %cidr, "service interface configured");
    Ok(())
}
