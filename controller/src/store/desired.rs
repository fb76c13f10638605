//! The node side of platforms, VMs, programs and tasks: a node's desired state, and what
//! its agent reports back (VM states, guests, program runs, cleanup acks).

use std::collections::HashMap;

use crate::access::Scope;
use crate::store::sql::{Connection, OptionalExtension};
use measurelab_api::http::{Condition, PlatformPowerState, VmPowerState};
use measurelab_api::node_v1::{
    self, DesiredAppliance, DesiredGateway, DesiredGatewayPeer, DesiredPlatform, DesiredQos,
    DesiredState, DesiredVm, ProgramRun, ServicePeer, ServiceTask, StatusReport,
};
use time::OffsetDateTime;

use super::codec::{rfc3339, to_json};
use super::error::StoreError;
use super::registry::Registry;
use super::resources::TxContext;
use super::{
    appliances, comparisons, control_keys, flows, gateways, platform_points, platforms, programs,
    qos_policies, tasks, tunnels, vm_usage, vms,
};

const GUEST_LOG_LINES_PER_VM: i64 = 10_000;
const MAX_CONDITIONS: usize = 32;

/// Desired-state generation of a node as committed (0: nothing was ever
/// desired of it).
pub(crate) fn generation(conn: &Connection, node_id: &str) -> Result<u64, StoreError> {
    let generation: Option<i64> = conn
        .query_row(
            "SELECT generation FROM node_generations WHERE node_id = ?1",
            [node_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(generation.unwrap_or(0) as u64)
}

/// Everything node `node_id` should run, at `generation`.
pub(crate) fn desired_state(
    conn: &Connection,
    registry: &Registry,
    node_id: &str,
    generation: u64,
) -> Result<DesiredState, StoreError> {
    let member_of = platforms::of_node(conn, node_id)?;
    let mut state = DesiredState {
        generation,
        platforms: member_of
            .iter()
            .map(|p| DesiredPlatform {
                id: p.id.clone(),
                name: p.name.clone(),
                vlan_tag: u32::from(p.vlan_tag),
                subnet: p.subnet.clone(),
                gateway: p.gateway.clone().unwrap_or_default(),
                power_state: p.power_state.as_str().into(),
                flow_monitoring: p.flow_monitoring,
            })
            .collect(),
        flow_export: flows::node_export(conn, node_id)?
            .map(|export| flows::desired_export(&export)),
        tunnels: tunnels::of_node(node_id, &member_of, &tunnels::ends(registry)),
        ..Default::default()
    };
    state.gateways = desired_gateways(conn, node_id)?;
    // A program run's VM is one of this node's: its platform names the key.
    let mut platform_of_vm = HashMap::new();
    for vm in vms::of_node(conn, node_id)? {
        platform_of_vm.insert(vm.id.clone(), vm.platform_id.clone());
        let platform = platforms::get(conn, &Scope::All, &vm.platform_id)?;
        let appliance = appliances::get_by_id(conn, &vm.appliance_id)?;
        let qos = match &vm.qos_policy_id {
            Some(id) => Some(qos_policies::get(conn, &Scope::All, id)?),
            None => None,
        };
        let (_, prefix) = platform.network()?;
        // A paused platform suspends every VM that would otherwise run.
        let power = match (platform.power_state, vm.power_state) {
            (PlatformPowerState::Paused, VmPowerState::Running) => VmPowerState::Paused,
            (_, own) => own,
        };
        state.vms.push(DesiredVm {
            id: vm.id.clone(),
            name: vm.name.clone(),
            platform_id: vm.platform_id.clone(),
            vlan_tag: u32::from(platform.vlan_tag),
            backend: vm.backend.as_str().into(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disk_mib: vm.disk_mib,
            swap_mib: vm.swap_mib,
            appliance: Some(DesiredAppliance {
                name: appliance.name,
                kernel: appliance.kernel,
                initrd: appliance.initrd,
                disk: appliance.disk.unwrap_or_default(),
                min_memory_mib: appliance.min_memory_mib,
                version: appliance.version,
                arch: appliance.arch,
                os: appliance.os,
                kernel_sha256: appliance.kernel_sha256.unwrap_or_default(),
                initrd_sha256: appliance.initrd_sha256.unwrap_or_default(),
                disk_sha256: appliance.disk_sha256.unwrap_or_default(),
            }),
            mac: vm.mac.clone(),
            ipv4_cidr: format!("{}/{prefix}", vm.address),
            gateway: platform.gateway.clone().unwrap_or_default(),
            power_state: power.as_str().into(),
            deleting: vm.deleting,
            qos: qos.map(|q| DesiredQos {
                name: q.name,
                ingress_max_kbps: q.ingress_max_kbps,
                ingress_min_kbps: q.ingress_min_kbps.unwrap_or(0),
                ingress_burst_kbytes: q.ingress_burst_kbytes.unwrap_or(0),
                egress_max_kbps: q.egress_max_kbps.unwrap_or(0),
                egress_min_kbps: q.egress_min_kbps.unwrap_or(0),
                egress_burst_kbytes: q.egress_burst_kbytes.unwrap_or(0),
            }),
            port_name: vm.port_name.clone(),
            generation: vm.generation,
            platform_name: vm.platform_name.clone(),
            // 0: no room beyond the requested size.
            max_vcpus: vm.max_vcpus.unwrap_or(0),
            max_memory_mib: vm.max_memory_mib.unwrap_or(0),
        });
    }
    for (deployment, vm_id) in programs::active_runs_of_node(conn, node_id)? {
        let env = match platform_of_vm.get(&vm_id) {
            Some(platform_id) => control_keys::with_platform_key(
                deployment.env,
                platform_id,
                control_keys::of(conn, platform_id)?,
            ),
            None => deployment.env,
        };
        state.program_runs.push(ProgramRun {
            deployment_id: deployment.id,
            vm_id,
            program_id: deployment.program_id,
            sha256: deployment.program_sha256,
            args: deployment.args,
            env: env.into_iter().collect(),
            program_name: deployment.program_name,
        });
    }
    if let Some(node) = registry.by_id(node_id) {
        // Comparisons' service-host runs travel as once service tasks.
        let comparing = comparisons::of_service_host(conn, &node.name)?;
        for task in tasks::of_service_host(conn, &node.name)?
            .into_iter()
            .chain(comparing)
        {
            // Every listed node learns every peer's point, so the first one
            // can drive the run without any other lookup.
            let peers = task
                .nodes
                .iter()
                .map(|name| {
                    let peer = registry.by_id_or_name(name);
                    ServicePeer {
                        node: name.clone(),
                        endpoint: peer
                            .map(|peer| peer.capabilities.service_endpoint.clone())
                            .unwrap_or_default(),
                        control_protocol_version: peer.and_then(legacy_control_protocol),
                    }
                })
                .collect();
            state.service_tasks.push(ServiceTask {
                task_id: task.id.clone(),
                spec_json: to_json(&task),
                peers,
                control_key: control_keys::of(conn, &task.id)?,
            });
        }
    }
    Ok(state)
}

/// The gateways node `node_id` runs, with their peers. Only this node's
/// desired state carries their private keys.
fn desired_gateways(conn: &Connection, node_id: &str) -> Result<Vec<DesiredGateway>, StoreError> {
    let mut desired = Vec::new();
    for gateway in gateways::of_node(conn, node_id)? {
        let platform = platforms::get(conn, &Scope::All, &gateway.platform_id)?;
        let (network, prefix) = platform.network()?;
        desired.push(DesiredGateway {
            platform_id: platform.id.clone(),
            platform_name: platform.name.clone(),
            vlan_tag: u32::from(platform.vlan_tag),
            platform_subnet: platform.subnet.clone(),
            inside_address: format!("{}/{prefix}", gateways::first_host(network)),
            listen_port: u32::from(gateway.listen_port),
            tunnel_address: gateway.tunnel_address()?,
            peers: gateways::peers(conn, &platform.id)?
                .into_iter()
                .map(|peer| DesiredGatewayPeer {
                    id: peer.id,
                    public_key: peer.public_key,
                    tunnel_address: peer.tunnel_address,
                })
                .collect(),
            private_key: gateway.private_key,
        });
    }
    Ok(desired)
}

/// `Some(1)` for a peer whose agent serves a service host but reported no
/// control protocol version: an agent older than version 2 (0.1.0), which
/// the orchestrator may then drive with unsigned version-1 orders. What the
/// agent reported in its capabilities, over its authenticated session, is
/// the only source: a point's own answer never lowers the version.
fn legacy_control_protocol(peer: &super::registry::NodeEntry) -> Option<u32> {
    let caps = &peer.capabilities;
    (!caps.service_endpoint.is_empty() && caps.control_protocol_version.is_none()).then_some(1)
}

fn ms_to_rfc3339(ms: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .filter(|t| (1970..=9999).contains(&t.year()))
        .map(rfc3339)
}

fn condition_status(c: &node_v1::Condition) -> bool {
    c.r#type == "Ready" && c.status == "True"
}

/// What a report changed, for the gRPC answer and the logs.
#[derive(Debug, Default)]
pub(crate) struct ReportOutcome {
    /// Items not applied, each with its reason; the rest were.
    pub refused: Vec<node_v1::RefusedItem>,
}

/// Longest tail a program run may report: twice what the store keeps (the
/// agent cuts tails far below this), so only a broken or hostile agent
/// trips it.
const MAX_REPORTED_TAIL_BYTES: usize = 128 * 1024;
/// Most log lines in one guest item (the agent keeps at most 1,000 per VM).
const MAX_GUEST_LOG_LINES: usize = 5_000;
/// Longest guest log line accepted; the store keeps the first 16 KiB.
const MAX_GUEST_LOG_LINE_BYTES: usize = 64 * 1024;
/// Longest condition type, status or reason.
const MAX_CONDITION_WORD: usize = 128;
/// Most characters of a guest agent version kept; a release's is a dozen.
const MAX_GUEST_AGENT_VERSION_CHARS: usize = 64;

fn refuse(outcome: &mut ReportOutcome, list: &str, index: usize, vm_id: &str, reason: String) {
    outcome.refused.push(node_v1::RefusedItem {
        list: list.into(),
        index: u32::try_from(index).unwrap_or(u32::MAX),
        // The id is node input; keep the refusal itself small.
        vm_id: vm_id.chars().take(64).collect(),
        reason,
    });
}

/// Why a VM status item cannot be applied, naming the field; `None` if it can.
fn check_vm_status(i: usize, status: &node_v1::VmStatus) -> Option<String> {
    if status.deleted {
        return None;
    }
    if status.conditions.len() > MAX_CONDITIONS {
        return Some(format!(
            "vms[{i}].conditions: has {} entries; at most {MAX_CONDITIONS}",
            status.conditions.len()
        ));
    }
    let state = status.actual_state.trim();
    if state.is_empty() || state.len() > 32 {
        return Some(format!(
            "vms[{i}].actual_state: must be 1 to 32 characters long"
        ));
    }
    for (j, c) in status.conditions.iter().enumerate() {
        for (field, value) in [
            ("type", &c.r#type),
            ("status", &c.status),
            ("reason", &c.reason),
        ] {
            if value.len() > MAX_CONDITION_WORD {
                return Some(format!(
                    "vms[{i}].conditions[{j}].{field}: is {} bytes; at most {MAX_CONDITION_WORD}",
                    value.len()
                ));
            }
        }
    }
    None
}

fn check_guest(i: usize, guest: &node_v1::GuestReport) -> Option<String> {
    if guest.logs.len() > MAX_GUEST_LOG_LINES {
        return Some(format!(
            "guests[{i}].logs: has {} lines; at most {MAX_GUEST_LOG_LINES}",
            guest.logs.len()
        ));
    }
    if let Some(j) = guest
        .logs
        .iter()
        .position(|l| l.message.len() > MAX_GUEST_LOG_LINE_BYTES)
    {
        return Some(format!(
            "guests[{i}].logs[{j}].message: is {} bytes; at most {MAX_GUEST_LOG_LINE_BYTES}",
            guest.logs[j].message.len()
        ));
    }
    None
}

fn check_program_run(i: usize, run: &node_v1::ProgramRunStatus) -> Option<String> {
    if !programs::RUN_STATUSES.contains(&run.status.as_str()) {
        return Some(format!(
            "program_runs[{i}].status: {:?} is not one of {}",
            run.status.chars().take(32).collect::<String>(),
            programs::RUN_STATUSES.join(", ")
        ));
    }
    for (field, tail) in [
        ("stdout_tail", &run.stdout_tail),
        ("stderr_tail", &run.stderr_tail),
    ] {
        if tail.len() > MAX_REPORTED_TAIL_BYTES {
            return Some(format!(
                "program_runs[{i}].{field}: is {} bytes; at most {MAX_REPORTED_TAIL_BYTES}",
                tail.len()
            ));
        }
    }
    None
}

/// Apply a status report of node `node_id` (already authenticated), item by
/// item: an item that names a VM this node does not host, is oversized or
/// malformed, or names a program run the VM does not have is refused (and
/// listed in the outcome), and the rest are applied. One guest's bad output
/// must not cost every VM on its node its status, nor block deletions.
pub(crate) fn apply_report(
    cx: &mut TxContext<'_>,
    node_id: &str,
    report: &StatusReport,
) -> Result<ReportOutcome, StoreError> {
    let mut outcome = ReportOutcome::default();
    for (i, status) in report.vms.iter().enumerate() {
        let Some(vm) = vms::get_by_id(cx.tx, &status.vm_id)?.filter(|vm| vm.node_id == node_id)
        else {
            refuse(
                &mut outcome,
                "vms",
                i,
                &status.vm_id,
                format!("vms[{i}].vm_id: this node hosts no such VM"),
            );
            continue;
        };
        if let Some(reason) = check_vm_status(i, status) {
            refuse(&mut outcome, "vms", i, &status.vm_id, reason);
            continue;
        }
        if status.deleted {
            if vm.deleting {
                vms::remove(
                    cx,
                    &vm,
                    "VmDeleted",
                    "deleted: the node agent cleaned it up",
                )?;
            } else {
                refuse(
                    &mut outcome,
                    "vms",
                    i,
                    &status.vm_id,
                    format!("vms[{i}].deleted: the VM is not being deleted"),
                );
            }
            continue;
        }
        let state = status.actual_state.trim();
        let conditions: Vec<Condition> = status
            .conditions
            .iter()
            .map(|c| Condition {
                condition_type: c.r#type.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.chars().take(1024).collect(),
            })
            .collect();
        let was_ready = vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True");
        let is_ready = status.conditions.iter().any(condition_status);
        let name = format!("{}/{}", vm.platform_name, vm.name);
        if is_ready && !was_ready {
            cx.event(
                Some(&vm.tenant_id),
                "VmReady",
                "vm",
                &vm.id,
                format!("VM {name} is ready ({state}, address {})", vm.address),
            )?;
        } else if !is_ready && was_ready {
            let why = status
                .conditions
                .iter()
                .find(|c| c.r#type == "Ready")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            cx.event(
                Some(&vm.tenant_id),
                "VmNotReady",
                "vm",
                &vm.id,
                format!("VM {name} is no longer ready {why}"),
            )?;
        }
        if state == "failed" && vm.actual_state != "failed" {
            let why = status
                .conditions
                .iter()
                .find(|c| c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            cx.event(
                Some(&vm.tenant_id),
                "VmFailed",
                "vm",
                &vm.id,
                format!("VM {name} failed {why}"),
            )?;
        }
        // Guest content relayed by the node agent: cut rather than refused,
        // so a guest cannot freeze its VM's status with a long hello.
        let guest_agent_version: String = status
            .guest_agent_version
            .chars()
            .take(MAX_GUEST_AGENT_VERSION_CHARS)
            .collect();
        vms::save_status(
            cx,
            &vm,
            &vms::ReportedStatus {
                actual_state: state,
                restart_required: status.restart_required,
                conditions: &conditions,
                observed_generation: status.observed_generation.min(vm.generation),
                guest_agent_version: Some(guest_agent_version.as_str())
                    .filter(|version| !version.is_empty()),
            },
        )?;
    }
    for (i, guest) in report.guests.iter().enumerate() {
        let Some(vm) = vms::get_by_id(cx.tx, &guest.vm_id)?.filter(|vm| vm.node_id == node_id)
        else {
            refuse(
                &mut outcome,
                "guests",
                i,
                &guest.vm_id,
                format!("guests[{i}].vm_id: this node hosts no such VM"),
            );
            continue;
        };
        if let Some(reason) = check_guest(i, guest) {
            refuse(&mut outcome, "guests", i, &guest.vm_id, reason);
            continue;
        }
        if guest.last_heartbeat_unix_ms > 0 {
            if let Some(time) = ms_to_rfc3339(guest.last_heartbeat_unix_ms) {
                vms::save_guest_heartbeat(cx, &vm.id, &time)?;
                if vm.guest_last_heartbeat.is_none() {
                    cx.event(
                        Some(&vm.tenant_id),
                        "GuestRegistered",
                        "vm",
                        &vm.id,
                        format!(
                            "the guest agent of VM {}/{} reported in",
                            vm.platform_name, vm.name
                        ),
                    )?;
                }
            }
        }
        if let Some(usage) = &guest.usage {
            let sampled_ms = if guest.last_heartbeat_unix_ms > 0 {
                guest.last_heartbeat_unix_ms
            } else {
                (cx.now.unix_timestamp_nanos() / 1_000_000) as i64
            };
            vm_usage::record(cx.tx, &vm.id, sampled_ms, usage)?;
        }
        if let Some(list) = &guest.points {
            match platform_points::check(list) {
                Ok(points) => platform_points::save(cx, &vm, &points)?,
                // Guest content: a bad list must not cost the node its report.
                Err(err) => tracing::warn!(
                    node = %node_id, vm = %vm.id, error = %err,
                    "dropped a point list that fails its check"
                ),
            }
        }
        for line in &guest.logs {
            let time = ms_to_rfc3339(line.timestamp_unix_ms).unwrap_or_else(|| rfc3339(cx.now));
            cx.tx
                .prepare_cached(
                    "INSERT INTO guest_logs (vm_id, time, level, target, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(crate::store::sql::params![
                    vm.id,
                    time,
                    line.level.to_ascii_lowercase(),
                    line.target.chars().take(256).collect::<String>(),
                    line.message.chars().take(16 * 1024).collect::<String>()
                ])?;
        }
        if !guest.logs.is_empty() {
            cx.tx
                .prepare_cached(
                    "DELETE FROM guest_logs WHERE vm_id = ?1 AND id <=
                       (SELECT id FROM guest_logs WHERE vm_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )?
                .execute(crate::store::sql::params![vm.id, GUEST_LOG_LINES_PER_VM])?;
        }
    }
    for (i, run) in report.program_runs.iter().enumerate() {
        if let Some(reason) = check_program_run(i, run) {
            refuse(&mut outcome, "program_runs", i, &run.vm_id, reason);
            continue;
        }
        if !programs::run_exists(cx.tx, node_id, &run.deployment_id, &run.vm_id)? {
            refuse(
                &mut outcome,
                "program_runs",
                i,
                &run.vm_id,
                format!(
                    "program_runs[{i}].deployment_id: VM {:?} on this node has no run of deployment {:?}",
                    run.vm_id.chars().take(64).collect::<String>(),
                    run.deployment_id.chars().take(64).collect::<String>()
                ),
            );
            continue;
        }
        programs::save_run_status(cx, node_id, run)?;
    }
    for (i, status) in report.gateways.iter().enumerate() {
        if let Err(reason) = gateways::apply_report(cx, node_id, i, status)? {
            refuse(&mut outcome, "gateways", i, &status.platform_id, reason);
        }
    }
    Ok(outcome)
}

/// Guest log lines of a VM, oldest first.
pub(crate) fn guest_logs(
    conn: &Connection,
    vm_id: &str,
    limit: u32,
) -> Result<Vec<measurelab_api::http::LogLine>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT time, level, target, message FROM
               (SELECT id, time, level, target, message FROM guest_logs
                WHERE vm_id = ?1 ORDER BY id DESC LIMIT ?2) AS newest
             ORDER BY id ASC",
        )?
        .query_map(crate::store::sql::params![vm_id, limit], |r| {
            Ok(measurelab_api::http::LogLine {
                time: r.get(0)?,
                level: r.get(1)?,
                target: r.get(2)?,
                message: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}
