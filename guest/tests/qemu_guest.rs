//! The real thing: the measurelab-tiny appliance with the guest agent baked
//! in boots under QEMU/TCG (libvirt, qemu:///system); its agent says hello
//! over the virtio-serial port (`/dev/vport0p1`, named
//! `org.measurelab.guest.0`, inside; libvirt's
//! `<channel type='unix' mode='bind'>` outside) to the node agent's
//! `GuestChannels::connect_serial`, heartbeats with the guest's own /proc,
//! runs a distributed shell program (`uname -r`) whose output comes back,
//! takes a larger program in chunks, and says hello again after the node side reconnects.
//!
//! Prints where the define -> hello time goes (kernel boot vs /init vs our
//! agent); run with `--nocapture`. Needs root and the packages listed in
//! `agent/tests/hypervisor_qemu.rs`; starts libvirtd/virtlogd only if none
//! answers, and stops exactly what it started.

mod common;
#[path = "../../agent/tests/libvirt_setup/mod.rs"]
mod libvirt_setup;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use libvirt_setup::{
    build_appliance, wait_for_line, GuestGuard, LibvirtSetup, Result, BOOT_TIMEOUT, QEMU_URI,
};
use measurelab_agent::guest_channel::{channel_socket_path, GuestChannels, ProgramSend};
use measurelab_agent::hypervisor::{
    BootImage, GuestSpec, GuestState, Hypervisor, LibvirtHypervisor, NicAttach, NicSpec,
};
use measurelab_api::guest::{GuestMessage, ProgramRunState};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;

/// First time (since `t0`) a console line contains `needle`, polling.
fn marker_time(console: &Path, needle: &str, t0: Instant) -> Result<Duration> {
    wait_for_line(console, needle, BOOT_TIMEOUT)?;
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_guest_agent_over_virtio_serial_channel() -> Result<()> {
    let work = tempfile::tempdir()?;
    let appliance = work.path().join("appliance");
    let manifest = build_appliance(Path::new(AGENT_BIN), &appliance)?;
    let kernel_version = manifest["kernel_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let initrd_mib = std::fs::metadata(appliance.join("initrd.img"))?.len() as f64 / MIB as f64;

    let _libvirt = tokio::task::spawn_blocking(LibvirtSetup::ensure).await??;
    // Scoped, so other tests' orphan collection on the shared libvirtd
    // cannot destroy this guest (and this test cannot touch theirs).
    let hv = LibvirtHypervisor::connect(QEMU_URI)?
        .with_owner(&format!("test-qemu-guest-{}", std::process::id()))?;
    let id = Uuid::new_v4();
    let short = id.simple().to_string()[..8].to_string();
    let console = work.path().join("console.log");
    let socket = channel_socket_path(&work.path().join("agent"), id);
    // libvirt binds the socket; the directory is ours to create.
    std::fs::create_dir_all(socket.parent().expect("socket has a parent"))?;
    let spec = GuestSpec {
        id,
        name: format!("mlg-{short}"),
        platform_id: None,
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: appliance.join("vmlinuz"),
            initrd: appliance.join("initrd.img"),
            disk: None,
            extra_cmdline: "quiet measurelab.heartbeat_seconds=1".into(),
            console_log: Some(console.clone()),
        },
        // User-mode NIC: eth0 exists (so /init does not wait for it) without
        // touching any host network. OVS attachment is covered by
        // agent/tests/hypervisor_qemu.rs.
        nic: Some(NicSpec {
            mac: "52:54:00:c8:0a:02".into(),
            bridge: "unused".into(),
            vlan_tag: None,
            port_name: format!("tg{}", &short[..6]),
            ipv4_cidr: Some("10.200.10.2/24".into()),
            attach: NicAttach::UserMode,
        }),
        channel_socket: Some(socket.clone()),
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    };

    // The node agent connects before the VM exists and keeps retrying.
    let channels = GuestChannels::new();
    let mut inbound = channels.connect_serial(id, &socket)?;

    let t0 = Instant::now();
    hv.define(&spec)?;
    let _guard = GuestGuard {
        hv: &hv,
        id,
        name: spec.name.clone(),
    };
    hv.start(id)?;
    let t_started = t0.elapsed();

    let console_markers = {
        let console = console.clone();
        tokio::task::spawn_blocking(move || -> Result<(Duration, Duration)> {
            let init = marker_time(&console, "measurelab-tiny: init reached", t0)?;
            let guest = marker_time(&console, "measurelab-tiny: guest started", t0)?;
            Ok((init, guest))
        })
    };
    let hello_version = expect(
        &mut inbound,
        BOOT_TIMEOUT,
        "hello over virtio-serial",
        |m| match m {
            GuestMessage::Hello {
                vm_id,
                agent_version,
                ..
            } if *vm_id == id.to_string() => Some(agent_version.clone()),
            _ => None,
        },
    )
    .await;
    let t_hello = t0.elapsed();
    let (t_init, t_guest) = console_markers.await??;
    assert_eq!(hello_version, env!("CARGO_PKG_VERSION"));
    assert!(channels.state(id).map(|s| s.registered).unwrap_or(false));

    // Heartbeat usage comes from the guest's /proc: 256 MiB of RAM, not the host's.
    let usage = expect(
        &mut inbound,
        Duration::from_secs(60),
        "heartbeat",
        |m| match m {
            GuestMessage::Heartbeat { usage } => Some(usage.clone()),
            _ => None,
        },
    )
    .await;
    assert!(
        usage.memory_total_bytes > 100 * MIB && usage.memory_total_bytes <= 256 * MIB,
        "guest memory {} bytes",
        usage.memory_total_bytes
    );
    assert_eq!(usage.cpu_count, 1);

    // A distributed program, through the channel and back.
    let t_run = Instant::now();
    channels.send(
        id,
        &run_message(
            "dep-uname",
            "kernel.sh",
            b"#!/bin/sh\necho \"kernel $(uname -r) on $MEASURELAB_VM_ID\"\n",
            &[],
            &[],
        ),
    )?;
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        Duration::from_secs(60),
        "program exit",
        status_of("dep-uname", ProgramRunState::Exited),
    )
    .await;
    let run_round_trip = t_run.elapsed();
    assert_eq!(exit_code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, format!("kernel {kernel_version} on {id}\n"));

    // Channel throughput host -> guest: a BIG_PROGRAM_KIB (default 1024)
    // KiB program, in base64 chunks through virtio-serial. The rate is
    // printed, not asserted.
    let mut big = b"#!/bin/sh\necho big $(wc -c < \"$0\")\nexit 0\n".to_vec();
    let big_kib: usize = std::env::var("BIG_PROGRAM_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    while big.len() < big_kib * 1024 {
        big.extend_from_slice(b"# padding padding padding padding padding padding padding\n");
    }
    let big_len = big.len();
    let t_big = Instant::now();
    channels.send_program(
        id,
        ProgramSend {
            deployment_id: "dep-big".into(),
            program_name: "big.sh".into(),
            content: std::sync::Arc::new(big),
            args: vec![],
            env: Default::default(),
        },
    )?;
    let (_, exit_code, stdout, stderr) = expect(
        &mut inbound,
        Duration::from_secs(300),
        "big program exit",
        status_of("dep-big", ProgramRunState::Exited),
    )
    .await;
    let big_round_trip = t_big.elapsed();
    assert_eq!(exit_code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, format!("big {big_len}\n"));
    let wire_kib = (big_len as f64 * 4.0 / 3.0) / 1024.0;

    // Node agent restart: a new connection to libvirt's socket asks for
    // hello again, and the run table is re-reported.
    drop(inbound);
    drop(channels);
    let channels = GuestChannels::new();
    let t_reconnect = Instant::now();
    let mut inbound = channels.connect_serial(id, &socket)?;
    expect(
        &mut inbound,
        Duration::from_secs(60),
        "hello after reconnect",
        |m| matches!(m, GuestMessage::Hello { .. }).then_some(()),
    )
    .await;
    let t_rehello = t_reconnect.elapsed();
    expect(
        &mut inbound,
        Duration::from_secs(60),
        "program re-reported",
        status_of("dep-uname", ProgramRunState::Exited),
    )
    .await;
    assert_eq!(hv.info(id)?.map(|i| i.state), Some(GuestState::Running));

    println!(
        "measurelab-tiny + guest agent under QEMU/TCG (initrd {initrd_mib:.1} MiB):\n  \
         define+start {:.2} s\n  kernel boot (define -> /init) {:.2} s\n  \
         /init (modules, eth0) {:.2} s\n  guest agent (exec -> hello on virtio-serial) {:.2} s\n  \
         define -> hello {:.2} s\n  run uname -r round trip {:.3} s\n  \
         re-hello after node-side reconnect {:.3} s\n  \
         {big_len} B program ({wire_kib:.0} KiB base64) over virtio-serial -> exit {:.2} s ({:.0} KiB/s)",
        t_started.as_secs_f64(),
        t_init.as_secs_f64(),
        (t_guest - t_init).as_secs_f64(),
        t_hello.saturating_sub(t_guest).as_secs_f64(),
        t_hello.as_secs_f64(),
        run_round_trip.as_secs_f64(),
        t_rehello.as_secs_f64(),
        big_round_trip.as_secs_f64(),
        wire_kib / big_round_trip.as_secs_f64(),
    );

    channels.close(id);
    hv.undefine(id)?;
    assert!(hv.info(id)?.is_none());
    Ok(())
}
