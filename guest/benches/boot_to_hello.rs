//! Where define -> hello goes for a measurelab-tiny QEMU/TCG guest.
//!
//! Boots two appliances BOOTS times each (default 3), interleaved, through libvirt
//! (qemu:///system) and prints per-boot phases and medians:
//! - `baseline`: the appliance around a placeholder guest program
//!   (/usr/bin/true), i.e. kernel + busybox initramfs only;
//! - `agent`: the appliance with measurelab-guest-agent baked in, its hello
//!   arriving over the serial channel at `GuestChannels::connect_serial`.
//!
//! Phases (host clock, console markers polled every 50 ms): kernel =
//! define -> "/init reached"; init = modules + eth0 -> "guest started";
//! agent = exec -> hello. The kernel phase of `agent` minus that of
//! `baseline` is the cost of the bigger initramfs.
//!
//! Run: `cargo bench -p measurelab-guest --bench boot_to_hello` (root; same
//! requirements as guest/tests/qemu_guest.rs). Prints figures, asserts none.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../agent/tests/libvirt_setup/mod.rs"]
mod libvirt_setup;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{expect, AGENT_BIN};
use libvirt_setup::{
    build_appliance, wait_for_line, GuestGuard, LibvirtSetup, Result, BOOT_TIMEOUT, QEMU_URI,
};
use measurelab_agent::guest_channel::{channel_socket_path, GuestChannels};
use measurelab_agent::hypervisor::{
    BootImage, GuestSpec, Hypervisor, LibvirtHypervisor, NicAttach, NicSpec,
};
use measurelab_api::guest::GuestMessage;
use uuid::Uuid;

struct Phases {
    kernel: Duration,
    init: Duration,
    agent: Option<Duration>,
}

fn spec(id: Uuid, appliance: &Path, console: &Path, socket: Option<&Path>) -> GuestSpec {
    let short = id.simple().to_string()[..8].to_string();
    GuestSpec {
        id,
        name: format!("mlb-{short}"),
        platform_id: None,
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: appliance.join("vmlinuz"),
            initrd: appliance.join("initrd.img"),
            disk: None,
            extra_cmdline: "quiet".into(),
            console_log: Some(console.to_path_buf()),
        },
        nic: Some(NicSpec {
            mac: "52:54:00:c8:0b:02".into(),
            bridge: "unused".into(),
            vlan_tag: None,
            port_name: format!("tb{}", &short[..6]),
            ipv4_cidr: Some("10.200.11.2/24".into()),
            attach: NicAttach::UserMode,
        }),
        channel_socket: socket.map(Path::to_path_buf),
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    }
}

async fn boot_once(hv: &LibvirtHypervisor, appliance: &Path, with_agent: bool) -> Result<Phases> {
    let work = tempfile::tempdir()?;
    let id = Uuid::new_v4();
    let console = work.path().join("console.log");
    let socket = channel_socket_path(&work.path().join("agent"), id);
    std::fs::create_dir_all(socket.parent().expect("socket has a parent"))?;
    let channels = GuestChannels::new();
    let mut inbound = if with_agent {
        Some(channels.connect_serial(id, &socket)?)
    } else {
        None
    };
    let spec = spec(
        id,
        appliance,
        &console,
        with_agent.then_some(socket.as_path()),
    );
    let t0 = Instant::now();
    hv.define(&spec)?;
    let _guard = GuestGuard {
        hv,
        id,
        name: spec.name.clone(),
    };
    hv.start(id)?;
    let markers = {
        let console = console.clone();
        tokio::task::spawn_blocking(move || -> Result<(Duration, Duration)> {
            wait_for_line(&console, "measurelab-tiny: init reached", BOOT_TIMEOUT)?;
            let init = t0.elapsed();
            wait_for_line(&console, "measurelab-tiny: guest started", BOOT_TIMEOUT)?;
            Ok((init, t0.elapsed()))
        })
    };
    let hello = match inbound.as_mut() {
        Some(inbound) => {
            expect(inbound, BOOT_TIMEOUT, "hello", |m| {
                matches!(m, GuestMessage::Hello { .. }).then_some(())
            })
            .await;
            Some(t0.elapsed())
        }
        None => None,
    };
    let (t_init, t_guest) = markers.await??;
    channels.close(id);
    Ok(Phases {
        kernel: t_init,
        init: t_guest - t_init,
        agent: hello.map(|h| h.saturating_sub(t_guest)),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let boots: usize = std::env::var("BOOTS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(3);
    let work = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _libvirt = LibvirtSetup::ensure()?;
    let hv = LibvirtHypervisor::connect(QEMU_URI)?
        .with_owner(&format!("bench-boot-{}", std::process::id()))?;
    let variants = [
        ("baseline", Path::new("/usr/bin/true"), false),
        ("agent", Path::new(AGENT_BIN), true),
    ];
    struct Samples {
        kernel: Vec<f64>,
        init: Vec<f64>,
        agent: Vec<f64>,
        total: Vec<f64>,
    }
    let mut samples: Vec<Samples> = Vec::new();
    let mut initrd_mib = Vec::new();
    for (label, binary, _) in variants {
        let appliance = work.path().join(label);
        build_appliance(binary, &appliance)?;
        initrd_mib.push(std::fs::metadata(appliance.join("initrd.img"))?.len() as f64 / 1048576.0);
        samples.push(Samples {
            kernel: Vec::new(),
            init: Vec::new(),
            agent: Vec::new(),
            total: Vec::new(),
        });
    }
    // Interleaved, so load changes on the shared machine hit both variants.
    for run in 1..=boots {
        for ((label, _, with_agent), samples) in variants.iter().zip(samples.iter_mut()) {
            let appliance = work.path().join(label);
            let phases = runtime.block_on(boot_once(&hv, &appliance, *with_agent))?;
            let agent_s = phases.agent.map(|a| a.as_secs_f64());
            println!(
                "{label} boot {run}: kernel {:.2} s, init {:.2} s, agent {}",
                phases.kernel.as_secs_f64(),
                phases.init.as_secs_f64(),
                agent_s.map_or("-".into(), |a| format!("{a:.2} s"))
            );
            samples.kernel.push(phases.kernel.as_secs_f64());
            samples.init.push(phases.init.as_secs_f64());
            if let Some(a) = agent_s {
                samples.agent.push(a);
            }
            samples
                .total
                .push((phases.kernel + phases.init).as_secs_f64() + agent_s.unwrap_or(0.0));
        }
    }
    for (((label, _, with_agent), samples), initrd) in variants.iter().zip(samples).zip(initrd_mib)
    {
        println!(
            "{label} (initrd {initrd:.1} MiB, {boots} boots) median: kernel {:.2} s, init {:.2} s, agent {}, define -> {} {:.2} s",
            median(samples.kernel),
            median(samples.init),
            if samples.agent.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2} s", median(samples.agent))
            },
            if *with_agent { "hello" } else { "guest started" },
            median(samples.total)
        );
    }
    Ok(())
}
