//! Helpers shared by the agent's real-OVS tests (`ovs_*.rs`). OVS is configured
//! only through the agent's driver; ovs-vsctl appears only to inspect state or
//! to simulate a hand edit.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use measurelab_agent::ovs::{
    reconcile, Datapath, FlowExportSpec, OvsdbSwitch, QosSpec, ReconcileReport, SwitchSpec,
    VmPortSpec,
};
use measurelab_testbed::{Netns, OvsSandbox};

pub fn vm(name: &str, vlan: u16) -> VmPortSpec {
    VmPortSpec {
        name: name.to_string(),
        vlan,
        qos: None,
        ingress_policing: None,
    }
}

pub fn vm_with_rate(name: &str, vlan: u16, max_rate_bps: u64) -> VmPortSpec {
    VmPortSpec {
        qos: Some(QosSpec {
            max_rate_bps,
            min_rate_bps: None,
            burst_bits: None,
        }),
        ..vm(name, vlan)
    }
}

pub fn switch_spec(owner: &str, bridge: &str, ports: Vec<VmPortSpec>) -> SwitchSpec {
    SwitchSpec {
        owner: owner.to_string(),
        bridge: bridge.to_string(),
        uplink: None,
        ports,
        tunnels: vec![],
        flow_export: FlowExportSpec::default(),
        datapath: Datapath::Netdev,
    }
}

pub async fn driver(ovs: &OvsSandbox) -> Result<OvsdbSwitch> {
    Ok(OvsdbSwitch::connect(&ovs.db_target()).await?)
}

pub async fn apply(switch: &OvsdbSwitch, spec: &SwitchSpec) -> Result<ReconcileReport> {
    Ok(reconcile(switch, spec).await?)
}

/// Number of Port rows called `name` (anywhere).
pub fn port_rows(ovs: &OvsSandbox, name: &str) -> Result<usize> {
    let out = ovs.vsctl(&[
        "--bare",
        "--columns=_uuid",
        "find",
        "Port",
        &format!("name={name}"),
    ])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

pub fn rows(ovs: &OvsSandbox, table: &str) -> Result<usize> {
    let out = ovs.vsctl(&["--bare", "--columns=_uuid", "list", table])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

pub fn pings(from: &Netns, to_ip: &str) -> bool {
    from.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "1", to_ip])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// Ping until it answers (ovs-vswitchd applies the database asynchronously).
pub fn wait_ping(from: &Netns, to_ip: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while !pings(from, to_ip) {
        if Instant::now() > deadline {
            bail!("{} cannot reach {to_ip} within {within:?}", from.name());
        }
    }
    Ok(())
}

/// Waits until ovs-vswitchd has put a linux-htb qdisc on `port` (`present`) or taken it
/// off (`!present`). `apply` returns once OVSDB committed; the switch changes the kernel's
/// traffic control afterwards, so a rate measured right after `apply` would race it.
pub fn wait_htb(ovs: &OvsSandbox, port: &str, present: bool, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let qdiscs = ovs.netns().run(&["tc", "qdisc", "show", "dev", port])?;
        if qdiscs.contains("qdisc htb") == present {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "htb on {port} still {} after {within:?}:\n{qdiscs}",
                !present
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `work` on a thread that has entered namespace `ns_name`; sockets it
/// opens live in that namespace.
pub fn in_netns<T, F>(ns_name: &str, work: F) -> std::thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = format!("/run/netns/{ns_name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        work()
    })
}

/// Join `group` on `local` in `ns` and record (source, payload) of every
/// datagram to `port` for `listen`. `ready` fires once the group is joined.
pub fn multicast_receiver(
    ns: &Netns,
    local: std::net::Ipv4Addr,
    group: std::net::Ipv4Addr,
    port: u16,
    listen: Duration,
    ready: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Result<Vec<(std::net::IpAddr, String)>>> {
    in_netns(ns.name(), move || {
        let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port))?;
        socket.join_multicast_v4(&group, &local)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        ready.send(())?;
        let deadline = Instant::now() + listen;
        let mut seen = Vec::new();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    seen.push((from.ip(), String::from_utf8_lossy(&buf[..len]).into_owned()))
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(seen)
    })
}

/// Send `count` datagrams `"{label}-{seq}"` from `local` in `ns` to `group:port`.
pub fn multicast_sender(
    ns: &Netns,
    local: std::net::Ipv4Addr,
    group: std::net::Ipv4Addr,
    port: u16,
    label: &str,
    count: u32,
) -> std::thread::JoinHandle<Result<u32>> {
    let label = label.to_string();
    in_netns(ns.name(), move || {
        let socket = std::net::UdpSocket::bind((local, 0))?;
        socket.set_multicast_ttl_v4(1)?;
        for seq in 0..count {
            socket.send_to(format!("{label}-{seq}").as_bytes(), (group, port))?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(count)
    })
}

/// iperf3 from `client` to `server_ip` (a server started in `server`);
/// returns the receiver-side throughput in bit/s.
pub fn iperf3_received_bps(
    server: &Netns,
    server_ip: &str,
    client: &Netns,
    seconds: u32,
) -> Result<f64> {
    let mut daemon = server
        .command("iperf3")
        .args(["-s", "-1", "-B", server_ip, "-p", "5399"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = client
                .command("iperf3")
                .args([
                    "-c",
                    server_ip,
                    "-p",
                    "5399",
                    "-t",
                    &seconds.to_string(),
                    "-O",
                    "1",
                    "-J",
                ])
                .output()?;
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps);
            }
            if Instant::now() > deadline {
                bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}
