//! linux-htb QoS on one port of a userspace bridge must not cost the OTHER
//! ports their traffic. ovs-vswitchd sends to every Linux netdev through one
//! shared AF_PACKET socket; with the default 1000-packet htb leaf queue a
//! flood towards the limited port keeps enough packets queued to fill that
//! socket's send buffer, and sends to the unlimited ports fail silently.
//! The namespace backend gives guest ports `txqueuelen`
//! HOST_PORT_TXQUEUELEN (20), which makes the limited port drop its own
//! excess. This test floods a multicast group (flooded to every port) and
//! counts what an unlimited receiver gets: with the product's port, and
//! then with the same port at txqueuelen 1000 to show the test detects the
//! problem. Needs root and openvswitch-switch; prints the loss figures.

mod ovs_common;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use measurelab_agent::hypervisor::{
    BootImage, GuestSpec, Hypervisor, NamespaceConfig, NamespaceHypervisor, NicAttach, NicSpec,
    HOST_PORT_TXQUEUELEN,
};
use measurelab_testbed::{plug_veth, Netns, OvsSandbox};
use ovs_common::*;
use uuid::Uuid;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 0, 1);
const PORT: u16 = 5577;
const DATAGRAMS: u32 = 20_000;
const PAYLOAD: usize = 1200;
/// Sender pace: ~4 packets per ms (~40 Mbit/s), far above the 5 Mbit/s limit.
const PER_MS: u32 = 4;

/// Sends DATAGRAMS datagrams to GROUP at ~PER_MS per millisecond.
fn flood(ns: &Netns, local: Ipv4Addr) -> std::thread::JoinHandle<Result<u32>> {
    in_netns(ns.name(), move || {
        let socket = std::net::UdpSocket::bind((local, 0))?;
        socket.set_multicast_ttl_v4(1)?;
        let payload = vec![0x5au8; PAYLOAD];
        let start = Instant::now();
        for seq in 0..DATAGRAMS {
            socket.send_to(&payload, (GROUP, PORT))?;
            let due = Duration::from_micros(u64::from(seq) * 1000 / u64::from(PER_MS));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(DATAGRAMS)
    })
}

/// Datagrams the unlimited receiver got out of one flood.
fn flood_and_count(sender: &Netns, receiver: &Netns) -> Result<usize> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listen = Duration::from_millis(u64::from(DATAGRAMS / PER_MS) + 3000);
    let rx = multicast_receiver(
        receiver,
        Ipv4Addr::new(10, 200, 44, 3),
        GROUP,
        PORT,
        listen,
        ready_tx,
    );
    // Joined: the bridge floods multicast (no snooping), so nothing else is awaited.
    ready_rx.recv_timeout(Duration::from_secs(5))?;
    flood(sender, Ipv4Addr::new(10, 200, 44, 1))
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let seen = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(seen.len())
}

/// Undefines the guest and removes the cgroup parent, also when an
/// assertion panics.
struct GuestCleanup {
    config: NamespaceConfig,
    id: Uuid,
    cgroup_parent: String,
}

impl Drop for GuestCleanup {
    fn drop(&mut self) {
        if let Ok(hv) = NamespaceHypervisor::new(self.config.clone()) {
            let _ = hv.undefine(self.id);
        }
        for hierarchy in ["unified", "cpu", "memory", ""] {
            let _ = fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(hierarchy)
                    .join(&self.cgroup_parent),
            );
        }
    }
}

fn loss_percent(received: usize) -> f64 {
    100.0 * (1.0 - received as f64 / f64::from(DATAGRAMS))
}

#[tokio::test(flavor = "multi_thread")]
async fn htb_on_one_port_does_not_starve_the_others() -> Result<()> {
    let pid = std::process::id();
    let ovs = OvsSandbox::start("htbq")?;
    let sender = Netns::new(&format!("htbq-snd-{pid}"))?;
    let open_rx = Netns::new(&format!("htbq-rcv-{pid}"))?;
    let (snd_port, rcv_port) = (
        format!("hqs{}", pid % 100_000),
        format!("hqr{}", pid % 100_000),
    );
    plug_veth(&ovs, &snd_port, &sender, "eth0", "10.200.44.1/24")?;
    plug_veth(&ovs, &rcv_port, &open_rx, "eth0", "10.200.44.3/24")?;
    // Multicast leaves by the default route.
    sender.run(&["ip", "route", "add", "default", "dev", "eth0"])?;

    // The limited port as the product makes it: a namespace guest's veth,
    // created where vswitchd runs.
    let state = tempfile::tempdir()?;
    let cgroup_parent = format!("mlhtbq-{pid}");
    let mut config = NamespaceConfig::new(state.path().join("state"), vec!["true".into()]);
    config.cgroup_parent = cgroup_parent.clone();
    let limited_port = format!("hql{}", pid % 100_000);
    let spec = GuestSpec {
        id: Uuid::new_v4(),
        name: format!("htbq-{pid}"),
        platform_id: None,
        vcpus: 1,
        memory_mib: 64,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: "/unused/vmlinuz".into(),
            initrd: "/unused/initrd".into(),
            disk: None,
            extra_cmdline: String::new(),
            console_log: None,
        },
        nic: Some(NicSpec {
            mac: "52:54:00:44:00:02".into(),
            bridge: "unused".into(),
            vlan_tag: Some(10),
            port_name: limited_port.clone(),
            ipv4_cidr: Some("10.200.44.2/24".into()),
            attach: NicAttach::TapOnly,
        }),
        channel_socket: None,
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    };
    let _cleanup = GuestCleanup {
        config: config.clone(),
        id: spec.id,
        cgroup_parent: cgroup_parent.clone(),
    };
    let result = async {
        {
            let (config, spec) = (config.clone(), spec.clone());
            in_netns(ovs.netns().name(), move || {
                NamespaceHypervisor::new(config)?.define(&spec)?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("define panicked"))??;
        }
        let link = ovs.netns().run(&["ip", "link", "show", "dev", &limited_port])?;
        assert!(link.contains(&format!("qlen {HOST_PORT_TXQUEUELEN}")), "{link}");

        let switch = driver(&ovs).await?;
        let owner = format!("node-htbq-{pid}");
        let limited = vm_with_rate(&limited_port, 10, 5_000_000);
        let mut spec = switch_spec(
            &owner,
            "br-htbq",
            vec![vm(&snd_port, 10), vm(&rcv_port, 10), limited.clone()],
        );
        apply(&switch, &spec).await?;
        wait_ping(&sender, "10.200.44.3", Duration::from_secs(10))?;

        let product = flood_and_count(&sender, &open_rx)?;
        eprintln!(
            "unlimited receiver, limited port at txqueuelen {HOST_PORT_TXQUEUELEN}: {product}/{DATAGRAMS} ({:.1} % lost)",
            loss_percent(product)
        );

        // The same port with the kernel default queue; the QoS is removed
        // and re-added so htb's leaf queue takes the new length.
        ovs.netns()
            .run(&["ip", "link", "set", &limited_port, "txqueuelen", "1000"])?;
        // Each step waits for the switch: two commits it saw in one pass
        // would leave the old htb (and its old queue length) in place.
        spec.ports[2] = vm(&limited_port, 10);
        apply(&switch, &spec).await?;
        wait_htb(&ovs, &limited_port, false, Duration::from_secs(10))?;
        spec.ports[2] = limited;
        apply(&switch, &spec).await?;
        wait_htb(&ovs, &limited_port, true, Duration::from_secs(10))?;
        let default_queue = flood_and_count(&sender, &open_rx)?;
        eprintln!(
            "unlimited receiver, limited port at txqueuelen 1000: {default_queue}/{DATAGRAMS} ({:.1} % lost)",
            loss_percent(default_queue)
        );

        // Measured on the 2-core build machine: 0 to 5 % with 20 (noise
        // from other jobs sharing the cores), 51 to 99 % with 1000.
        assert!(
            loss_percent(product) < 10.0,
            "the unlimited port lost {:.1} % with the product's txqueuelen",
            loss_percent(product)
        );
        // The flood is strong enough to show the problem; otherwise the
        // first assertion would prove nothing.
        assert!(
            loss_percent(default_queue) > 20.0,
            "txqueuelen 1000 lost only {:.1} %: the flood does not reproduce the problem",
            loss_percent(default_queue)
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;

    result.context("htb txqueue test")
}
