//! The libvirt backend against libvirt's real in-process test driver
//! (`test:///default`): real API calls, no guests. The driver's state lives
//! as long as a connection is open and is shared by all connections of this
//! process, so the tests (which run in parallel threads) use distinct names
//! and only assert about the guests they created themselves.

use measurelab_agent::hypervisor::{
    BootImage, DefineOutcome, DomainFlavor, GuestSpec, GuestState, Hypervisor, HypervisorError,
    LibvirtHypervisor, NicAttach, NicSpec, ResizeOutcome,
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
