//! The libvirt backend against libvirt's real in-process test driver
//! (`test:///default`): real API calls, no guests. The driver's state lives
//! as long as a connection is open and is shared by all connections of this
//! process, so the tests (which run in parallel threads) use distinct names
//! and only assert about the guests they created themselves.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use measurelab_agent::hypervisor::{
    BootImage, DefineOutcome, DiskConfig, DomainFlavor, GuestSpec, GuestState, Hypervisor,
    HypervisorError, LibvirtHypervisor, NicAttach, NicSpec, ResizeOutcome,
};
use uuid::Uuid;

fn spec(name: &str) -> GuestSpec {
    let id = Uuid::new_v4();
    GuestSpec {
        id,
        name: name.to_string(),
        platform_id: Some(Uuid::new_v4()),
        vcpus: 2,
        memory_mib: 512,
        disk_mib: 0,
        swap_mib: 0,
        boot: BootImage {
            kernel: "/var/lib/measurelab/appliances/measurelab-tiny/vmlinuz".into(),
            initrd: "/var/lib/measurelab/appliances/measurelab-tiny/initrd.img".into(),
            disk: None,
            extra_cmdline: String::new(),
            console_log: None,
        },
        nic: Some(NicSpec {
            mac: "52:54:00:12:34:56".into(),
            bridge: "br-int".into(),
            vlan_tag: Some(100),
            port_name: format!("vm-{}", &id.simple().to_string()[..8]),
            ipv4_cidr: Some("10.200.1.2/24".into()),
            attach: NicAttach::OvsVirtualport,
        }),
        channel_socket: None,
        egress_limit: None,
        max_vcpus: None,
        max_memory_mib: None,
    }
}

fn backend() -> LibvirtHypervisor {
    let hv = LibvirtHypervisor::connect("test:///default").expect("open test:///default");
    assert_eq!(hv.flavor(), DomainFlavor::Test);
    hv
}

#[test]
fn lifecycle_is_idempotent() {
    let hv = backend();
    let spec = spec("ml-life");

    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Created);
    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Unchanged);
    let info = hv.info(spec.id).unwrap().expect("defined guest is visible");
    assert_eq!(info.state, GuestState::Stopped);
    assert_eq!(info.name, "ml-life");
    assert_eq!(info.spec_hash, spec.spec_hash());
    assert_eq!(info.platform_id, spec.platform_id);

    hv.start(spec.id).unwrap();
    hv.start(spec.id).unwrap(); // already running: no error
    assert_eq!(
        hv.info(spec.id).unwrap().unwrap().state,
        GuestState::Running
    );

    hv.pause(spec.id).unwrap();
    hv.pause(spec.id).unwrap();
    assert_eq!(hv.info(spec.id).unwrap().unwrap().state, GuestState::Paused);

    hv.resume(spec.id).unwrap();
    hv.resume(spec.id).unwrap();
    assert_eq!(
        hv.info(spec.id).unwrap().unwrap().state,
        GuestState::Running
    );

    hv.stop(spec.id).unwrap();
    hv.stop(spec.id).unwrap();
    assert_eq!(
        hv.info(spec.id).unwrap().unwrap().state,
        GuestState::Stopped
    );

    // Pausing a stopped guest is a state error the next pass can fix.
    let err = hv.pause(spec.id).unwrap_err();
    assert!(matches!(err, HypervisorError::InvalidState { .. }), "{err}");
    assert!(err.is_transient());

    hv.undefine(spec.id).unwrap();
    hv.undefine(spec.id).unwrap(); // missing: no error
    assert!(hv.info(spec.id).unwrap().is_none());
    assert!(matches!(
        hv.start(spec.id),
        Err(HypervisorError::NotFound { .. })
    ));
}

#[test]
fn undefine_stops_a_running_guest() {
    let hv = backend();
    let spec = spec("ml-undef-running");
    hv.define(&spec).unwrap();
    hv.start(spec.id).unwrap();
    hv.undefine(spec.id).unwrap();
    assert!(hv.info(spec.id).unwrap().is_none());
    assert!(hv.list_owned().unwrap().iter().all(|g| g.id != spec.id));
}

#[test]
fn changed_spec_is_redefined() {
    let hv = backend();
    let mut spec = spec("ml-redefine");
    hv.define(&spec).unwrap();
    spec.boot.extra_cmdline = "loglevel=3".into();
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: false
        }
    );
    hv.start(spec.id).unwrap();
    spec.boot.extra_cmdline = "loglevel=4".into();
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: true
        }
    );
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!(info.spec_hash, spec.spec_hash());
    assert!(
        info.restart_pending,
        "running guest still has the old definition"
    );
    // Level-triggered: the next pass sees the new hash and does nothing.
    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Unchanged);
    hv.stop(spec.id).unwrap();
    hv.start(spec.id).unwrap();
    assert!(!hv.info(spec.id).unwrap().unwrap().restart_pending);
    hv.undefine(spec.id).unwrap();
}

#[test]
fn resize_live_and_above_maximum() {
    let hv = backend();
    let spec = spec("ml-resize");
    hv.define(&spec).unwrap();

    // Stopped: any value goes into the config.
    assert_eq!(hv.set_memory(spec.id, 384).unwrap(), ResizeOutcome::Applied);
    assert_eq!(hv.set_vcpus(spec.id, 1).unwrap(), ResizeOutcome::Applied);
    hv.start(spec.id).unwrap();
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (1, 384));

    // Running, within the boot-time maximum: live.
    assert_eq!(hv.set_memory(spec.id, 256).unwrap(), ResizeOutcome::Applied);
    assert_eq!(hv.info(spec.id).unwrap().unwrap().memory_mib, 256);

    // Running, above the maximum it booted with: next boot.
    assert_eq!(
        hv.set_memory(spec.id, 1024).unwrap(),
        ResizeOutcome::RestartRequired
    );
    assert_eq!(
        hv.set_vcpus(spec.id, 4).unwrap(),
        ResizeOutcome::RestartRequired
    );
    hv.stop(spec.id).unwrap();
    hv.start(spec.id).unwrap();
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (4, 1024));

    let err = hv.set_memory(spec.id, 1).unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::InvalidSpec {
                field: "memory_mib",
                ..
            }
        ),
        "{err}"
    );
    hv.undefine(spec.id).unwrap();
}

#[test]
fn size_changes_within_maxima_apply_live_and_beyond_them_wait_for_a_restart() {
    let hv = backend();
    let mut spec = spec("ml-resize-define");
    spec.vcpus = 1;
    spec.memory_mib = 256;
    spec.max_vcpus = Some(2);
    spec.max_memory_mib = Some(512);
    hv.define(&spec).unwrap();
    hv.start(spec.id).unwrap();
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (1, 256));

    // Within the maxima: the running guest takes the new sizes, through
    // the same define the reconcile loop calls.
    spec.vcpus = 2;
    spec.memory_mib = 384;
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: false
        }
    );
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (2, 384));
    assert!(!info.restart_pending, "a live resize left the guest stale");
    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Unchanged);

    // Beyond the vCPU maximum it booted with: next boot.
    spec.vcpus = 4;
    spec.max_vcpus = Some(4);
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: true
        }
    );
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!(info.vcpus, 2, "the running guest cannot have grown");
    assert!(info.restart_pending);
    // Still pending on the next pass (level-triggered), cleared by a restart.
    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Unchanged);
    assert!(hv.info(spec.id).unwrap().unwrap().restart_pending);
    hv.stop(spec.id).unwrap();
    hv.start(spec.id).unwrap();
    let info = hv.info(spec.id).unwrap().unwrap();
    assert_eq!((info.vcpus, info.memory_mib), (4, 384));
    assert!(!info.restart_pending);

    // A memory maximum beyond the booted one waits as well, even though
    // the requested size itself would fit.
    spec.max_memory_mib = Some(1024);
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: true
        }
    );
    assert!(hv.info(spec.id).unwrap().unwrap().restart_pending);

    // A non-size change is never applied live.
    hv.stop(spec.id).unwrap();
    hv.start(spec.id).unwrap();
    spec.boot.extra_cmdline = "loglevel=4".into();
    spec.vcpus = 3;
    assert_eq!(
        hv.define(&spec).unwrap(),
        DefineOutcome::Updated {
            restart_required: true
        }
    );
    assert_eq!(hv.info(spec.id).unwrap().unwrap().vcpus, 4);
    hv.undefine(spec.id).unwrap();
}

#[test]
fn list_owned_ignores_foreign_domains() {
    let hv = backend();
    let conn = hv.connection().unwrap();
    // test:///default ships a domain named "test"; add another untagged one
    // on the same connection (state is per connection).
    let foreign_xml = "<domain type='test'><name>foreign-vm</name><memory unit='MiB'>64</memory>\
                       <os><type>hvm</type></os></domain>";
    let foreign = conn.define_domain_xml(foreign_xml).unwrap();
    let before: Vec<String> = conn
        .list_all_domains(0)
        .unwrap()
        .iter()
        .map(|d| d.name().unwrap())
        .collect();
    assert!(before.contains(&"test".to_string()));
    assert!(before.contains(&"foreign-vm".to_string()));

    let a = spec("ml-own-a");
    let b = spec("ml-own-b");
    hv.define(&a).unwrap();
    hv.define(&b).unwrap();
    hv.start(b.id).unwrap();
    let listed = hv.list_owned().unwrap();
    // Parallel tests' guests may be listed too, but never an untagged domain.
    assert!(
        listed.iter().all(|g| g.name.starts_with("ml-")),
        "{listed:?}"
    );
    let owned: Vec<(String, GuestState)> = listed
        .into_iter()
        .filter(|g| g.id == a.id || g.id == b.id)
        .map(|g| (g.name, g.state))
        .collect();
    assert_eq!(
        owned,
        vec![
            ("ml-own-a".to_string(), GuestState::Stopped),
            ("ml-own-b".to_string(), GuestState::Running)
        ]
    );

    // A foreign domain's UUID or name is never touched through the trait.
    let foreign_id = Uuid::parse_str(&foreign.uuid_string().unwrap()).unwrap();
    let err = hv.stop(foreign_id).unwrap_err();
    assert!(matches!(err, HypervisorError::NotOwned { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(matches!(
        hv.undefine(foreign_id),
        Err(HypervisorError::NotOwned { .. })
    ));
    let mut clash = spec("foreign-vm");
    clash.nic = None;
    assert!(matches!(
        hv.define(&clash),
        Err(HypervisorError::NotOwned { .. })
    ));
    assert!(conn.lookup_domain_by_name("foreign-vm").is_ok());

    hv.undefine(a.id).unwrap();
    hv.undefine(b.id).unwrap();
    assert!(hv
        .list_owned()
        .unwrap()
        .iter()
        .all(|g| g.id != a.id && g.id != b.id));
    foreign.undefine().unwrap();
}

#[test]
fn invalid_spec_is_rejected_before_libvirt() {
    let hv = backend();
    let mut bad = spec("ml-bad");
    bad.nic.as_mut().unwrap().port_name = "this-name-is-too-long".into();
    let err = hv.define(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::InvalidSpec {
                field: "nic.port_name",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert!(hv.info(bad.id).unwrap().is_none());
}

#[test]
fn unknown_uri_scheme_is_a_clear_error() {
    match LibvirtHypervisor::connect("lxc:///") {
        Err(HypervisorError::InvalidSpec { field, reason }) => {
            assert_eq!(field, "libvirt_uri");
            assert!(reason.contains("lxc:///"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("lxc:/// must be rejected"),
    }
}

/// Two node agents sharing one libvirtd (the lab runs every node on one
/// host) must not see, touch or garbage-collect each other's guests.
#[test]
fn owner_scopes_keep_agents_apart() {
    let node_a = backend().with_owner("node-a").unwrap();
    let node_b = backend().with_owner("node-b").unwrap();
    let unscoped = backend();
    let s = spec("mlab-owner-scope");
    node_a.define(&s).unwrap();
    node_a.start(s.id).unwrap();

    assert!(node_a.list_owned().unwrap().iter().any(|g| g.id == s.id));
    for other in [&node_b, &unscoped] {
        assert!(!other.list_owned().unwrap().iter().any(|g| g.id == s.id));
        assert!(matches!(
            other.undefine(s.id),
            Err(HypervisorError::NotOwned { .. })
        ));
        assert!(matches!(
            other.define(&s),
            Err(HypervisorError::NotOwned { .. })
        ));
    }
    // Still there, still running, for its owner.
    assert_eq!(
        node_a.info(s.id).unwrap().map(|g| g.state),
        Some(GuestState::Running)
    );
    assert!(matches!(
        backend().with_owner("bad owner"),
        Err(HypervisorError::InvalidSpec { field: "owner", .. })
    ));
    node_a.undefine(s.id).unwrap();
    assert!(node_a.info(s.id).unwrap().is_none());
}

/// An appliance directory with a raw disk image, and a state dir for the
/// per-VM disks, in a fresh temp dir.
struct DiskRig {
    dir: tempfile::TempDir,
    apps: PathBuf,
    base: PathBuf,
    guests: PathBuf,
}

impl DiskRig {
    fn new() -> DiskRig {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let apps = root.join("appliances");
        let guests = root.join("state/guests");
        std::fs::create_dir_all(apps.join("tiny")).unwrap();
        let base = apps.join("tiny/disk.img");
        // 8 MiB with recognisable content in its first block.
        let mut image = vec![0u8; 8 << 20];
        image[..16].copy_from_slice(b"measurelab-base!");
        std::fs::write(&base, image).unwrap();
        DiskRig {
            dir,
            apps,
            base,
            guests,
        }
    }

    fn config(&self) -> DiskConfig {
        DiskConfig {
            appliance_dir: self.apps.clone(),
            guests_dir: self.guests.clone(),
        }
    }

    fn backend(&self, owner: &str) -> LibvirtHypervisor {
        backend()
            .with_owner(owner)
            .unwrap()
            .with_disks(self.config())
    }

    fn spec(&self, name: &str, disk_mib: u64, swap_mib: u64) -> GuestSpec {
        let mut s = spec(name);
        s.boot.kernel = self.apps.join("tiny/vmlinuz");
        s.boot.initrd = self.apps.join("tiny/initrd.img");
        s.boot.disk = Some(self.base.clone());
        s.disk_mib = disk_mib;
        s.swap_mib = swap_mib;
        s
    }

    fn vm_file(&self, id: Uuid, name: &str) -> PathBuf {
        self.guests.join(id.to_string()).join(name)
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn qemu_img_info(path: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a qemu-io command against an image (as the guest's writes would).
fn qemu_io(path: &Path, command: &str) -> std::process::Output {
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(path)
        .output()
        .expect("qemu-io (qemu-utils) is installed")
}

fn domain_config(hv: &LibvirtHypervisor, id: Uuid) -> String {
    hv.connection()
        .unwrap()
        .lookup_domain_by_uuid_string(&id.to_string())
        .unwrap()
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .unwrap()
}

#[test]
fn guest_gets_its_own_overlay_and_swap_never_the_base() {
    let rig = DiskRig::new();
    let hv = rig.backend("disk-overlay");
    let spec = rig.spec("ml-disk-overlay", 64, 32);
    let base_hash = sha256(&rig.base);

    assert_eq!(hv.define(&spec).unwrap(), DefineOutcome::Created);
    let overlay = rig.vm_file(spec.id, "disk.qcow2");
    let swap = rig.vm_file(spec.id, "swap.img");
    let xml = domain_config(&hv, spec.id);
    assert!(
        xml.contains(&format!("<source file='{}'", overlay.display())),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("<source file='{}'", swap.display())),
        "{xml}"
    );
    assert!(
        !xml.contains(&format!("<source file='{}'", rig.base.display())),
        "the base image is attached: {xml}"
    );
    assert!(
        xml.contains("measurelab.data=/dev/vda measurelab.swap=/dev/vdb"),
        "{xml}"
    );

    let info = qemu_img_info(&overlay);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 << 20);
    assert_eq!(
        info["full-backing-filename"].as_str(),
        Some(rig.base.to_str().unwrap())
    );
    assert_eq!(info["backing-filename-format"], "raw");
    let swap_meta = std::fs::metadata(&swap).unwrap();
    assert_eq!(swap_meta.len(), 32 << 20);
    assert!(
        swap_meta.blocks() * 512 < swap_meta.len() / 4,
        "swap file is not sparse: {} bytes allocated",
        swap_meta.blocks() * 512
    );
    // mkswap's signature at the end of the first 4 KiB page.
    let head = std::fs::read(&swap).unwrap();
    assert_eq!(&head[4086..4096], b"SWAPSPACE2");
    let base_mode = std::fs::metadata(&rig.base).unwrap().permissions().mode();
    assert_eq!(
        base_mode & 0o222,
        0,
        "base image still writable: {base_mode:o}"
    );

    // The guest writes through the overlay; the base does not change.
    let write = qemu_io(&overlay, "write -P 0xab 0 4k");
    assert!(write.status.success(), "{write:?}");
    hv.start(spec.id).unwrap();
    hv.stop(spec.id).unwrap();

    // An agent restart adopts the overlay: same spec, nothing redefined, and
    // the data written before is still there.
    let restarted = rig.backend("disk-overlay");
    assert_eq!(restarted.define(&spec).unwrap(), DefineOutcome::Unchanged);
    let read = qemu_io(&overlay, "read -P 0xab 0 4k");
    assert!(
        read.status.success()
            && !String::from_utf8_lossy(&read.stdout).contains("verification failed"),
        "data written before the restart is gone: {read:?}"
    );
    assert_eq!(sha256(&rig.base), base_hash, "the base image changed");

    restarted.undefine(spec.id).unwrap();
    assert!(!overlay.exists(), "overlay left after undefine");
    assert!(!swap.exists(), "swap disk left after undefine");
    assert_eq!(sha256(&rig.base), base_hash);
    drop(rig.dir);
}

#[test]
fn disk_defaults_to_the_base_size_and_no_swap_means_no_swap_disk() {
    let rig = DiskRig::new();
    let hv = rig.backend("disk-default");
    let spec = rig.spec("ml-disk-default", 0, 0);
    hv.define(&spec).unwrap();
    let overlay = rig.vm_file(spec.id, "disk.qcow2");
    assert_eq!(qemu_img_info(&overlay)["virtual-size"], 8 << 20);
    assert!(!rig.vm_file(spec.id, "swap.img").exists());
    let xml = domain_config(&hv, spec.id);
    assert_eq!(xml.matches("<disk ").count(), 1, "{xml}");
    assert!(!xml.contains("measurelab.swap"), "{xml}");

    // Another appliance image under the same VM: the overlay holds the
    // VM's data on top of the old one, so it is kept and the define refused.
    let other_base = rig.apps.join("tiny/other.img");
    std::fs::write(&other_base, vec![0u8; 8 << 20]).unwrap();
    let mut moved = spec.clone();
    moved.boot.disk = Some(other_base);
    let err = hv.define(&moved).unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::InvalidSpec {
                field: "boot.disk",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        qemu_img_info(&overlay)["full-backing-filename"].as_str(),
        Some(rig.base.to_str().unwrap())
    );

    // No appliance disk but disk_mib: a blank disk of that size.
    let mut blank = rig.spec("ml-disk-blank", 16, 0);
    blank.boot.disk = None;
    hv.define(&blank).unwrap();
    let info = qemu_img_info(&rig.vm_file(blank.id, "disk.qcow2"));
    assert_eq!(info["virtual-size"], 16 << 20);
    assert!(info.get("backing-filename").is_none(), "{info}");
    hv.undefine(blank.id).unwrap();

    // Smaller than the image: the filesystem would not fit.
    let small = rig.spec("ml-disk-small", 4, 0);
    let err = hv.define(&small).unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::InvalidSpec {
                field: "disk_mib",
                ..
            }
        ),
        "{err}"
    );
    hv.undefine(spec.id).unwrap();
}

#[test]
fn appliance_outside_the_appliance_dir_is_refused() {
    let rig = DiskRig::new();
    let hv = rig.backend("disk-outside");
    let root = rig.apps.parent().unwrap().to_path_buf();
    let elsewhere = root.join("elsewhere.img");
    std::fs::write(&elsewhere, vec![0u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&root, rig.apps.join("up")).unwrap();
    type Mutation<'a> = Box<dyn Fn(&mut GuestSpec) + 'a>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "boot.disk",
            Box::new(|s| s.boot.disk = Some(elsewhere.clone())),
        ),
        (
            "boot.disk",
            Box::new(|s| s.boot.disk = Some(rig.apps.join("up/elsewhere.img"))),
        ),
        (
            "boot.disk",
            Box::new(|s| s.boot.disk = Some(rig.apps.join("tiny/../../elsewhere.img"))),
        ),
        (
            "boot.kernel",
            Box::new(|s| s.boot.kernel = "/boot/vmlinuz".into()),
        ),
        (
            "boot.initrd",
            Box::new(|s| s.boot.initrd = "/etc/shadow".into()),
        ),
    ];
    for (field, mutate) in cases {
        let mut spec = rig.spec("ml-disk-outside", 16, 8);
        mutate(&mut spec);
        let err = hv.define(&spec).unwrap_err();
        match &err {
            HypervisorError::OutsideApplianceDir {
                field: got, dir, ..
            } => {
                assert_eq!(*got, field, "{err}");
                assert_eq!(dir, &rig.apps);
            }
            other => panic!("{field}: expected OutsideApplianceDir, got {other}"),
        }
        assert!(!err.is_transient());
        assert!(
            hv.info(spec.id).unwrap().is_none(),
            "{field}: defined anyway"
        );
        assert!(
            !rig.guests.join(spec.id.to_string()).exists(),
            "{field}: disk files made for a refused VM"
        );
    }
}

/// The refusal reaches the VM's status like any reconcile failure.
#[tokio::test]
async fn refused_appliance_sets_a_ready_false_condition() {
    use measurelab_agent::guest_channel::GuestChannels;
    use measurelab_agent::reconcile::{
        Backends, DesiredState, DesiredVm, Reconciler, ReconcilerConfig,
    };
    use measurelab_api::node_v1::DesiredAppliance;

    let rig = DiskRig::new();
    let hv = std::sync::Arc::new(rig.backend("disk-reconcile"));
    let (events, _rx) = tokio::sync::mpsc::channel(16);
    let mut reconciler = Reconciler::new(
        ReconcilerConfig::new(rig.guests.parent().unwrap(), "disk-reconcile"),
        Backends {
            namespace: None,
            libvirt: Some(hv.clone() as std::sync::Arc<dyn Hypervisor>),
        },
        None,
        GuestChannels::new(),
        events,
    );
    let id = Uuid::new_v4();
    let vm = DesiredVm {
        id: id.to_string(),
        name: "outside".into(),
        vlan_tag: 101,
        backend: "libvirt".into(),
        vcpus: 1,
        memory_mib: 128,
        disk_mib: 16,
        appliance: Some(DesiredAppliance {
            name: "stray".into(),
            kernel: rig.apps.join("tiny/vmlinuz").display().to_string(),
            initrd: rig.apps.join("tiny/initrd.img").display().to_string(),
            disk: "/etc/passwd".into(),
            ..Default::default()
        }),
        power_state: "running".into(),
        generation: 1,
        ..Default::default()
    };
    let pass = reconciler
        .pass(&DesiredState {
            generation: 1,
            vms: vec![vm],
            ..Default::default()
        })
        .await;
    let status = pass
        .statuses
        .iter()
        .find(|s| s.vm_id == id.to_string())
        .expect("a status for the refused VM");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "ApplianceOutsideDir");
    assert!(
        ready.message.contains("/etc/passwd") && ready.message.contains("appliance directory"),
        "{}",
        ready.message
    );
    assert_eq!(status.actual_state, "failed");
    assert!(hv.info(id).unwrap().is_none());
}
