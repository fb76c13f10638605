//! A hostile program in a namespace guest, for real: it tries to reach the
//! node's secrets and sockets, other guests, the node's namespaces and the
//! host filesystem, and to outgrow its disk. Every attempt must fail, and
//! from the host every process of the guest runs as its own unprivileged
//! uid without capabilities. Needs root (run under the heavy-test lock).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use measurelab_agent::guest_channel::{channel_socket_path, GuestChannels};
use measurelab_agent::hypervisor::{
    BootImage, GuestSpec, Hypervisor, NamespaceConfig, NamespaceHypervisor, NicAttach, NicSpec,
    GUEST_UID_FIRST, GUEST_UID_LAST,
};
use measurelab_testbed::OvsSandbox;
use uuid::Uuid;

/// Each attempt prints `<name> ESCAPED` if it worked, `<name> blocked` if
/// not; then the program stays up so the host can look at it.
const ATTACKS: &str = r#"out=/tmp/ml-sbx-$MEASURELAB_VM_ID
attempt() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name ESCAPED"; else echo "$name blocked"; fi >> "$out"; }
connect='import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])'
attempt identity cat "$IDENTITY"
attempt other_channel python3 -c "$connect" "$OTHER_CHANNEL"
attempt ovsdb python3 -c "$connect" "$OVSDB"
attempt nsenter_init nsenter --target 1 --mount --net true
attempt nsenter_other_netns nsenter --net="/run/netns/$OTHER_NETNS" true
attempt write_host sh -c 'echo escaped > "$1"' sh "$HOST_MARKER"
attempt write_usr touch /usr/ml-sbx-escape
attempt exceed_disk dd if=/dev/zero of="/var/tmp/ml-sbx-fill-$MEASURELAB_VM_ID" bs=1M count=$((DISK_MIB + 1))
echo "inside_uid $(id -u)" >> "$out"
sleep 3600 &
echo done >> "$out"
wait
"#;

const DISK_MIB: u64 = 16;

struct Fixture {
    dir: tempfile::TempDir,
    tag: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tag = format!("mlsbx-{}", std::process::id());
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            tag,
        }
    }

    /// The agent's state dir, laid out as the real agent lays it out.
    fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn config(&self, command: Vec<String>) -> NamespaceConfig {
        let mut config = NamespaceConfig::new(self.agent_dir().join("namespace"), command);
        config.cgroup_parent = self.tag.clone();
        config
    }

    fn spec(&self, k: u8) -> GuestSpec {
        let id = Uuid::new_v4();
        let short = &id.simple().to_string()[..8];
        GuestSpec {
            id,
            name: format!("sbx-g{k}-{short}"),
            platform_id: None,
            vcpus: 1,
            memory_mib: 128,
            disk_mib: DISK_MIB,
            swap_mib: 0,
            boot: BootImage {
                kernel: "/unused/vmlinuz".into(),
                initrd: "/unused/initrd".into(),
                disk: None,
                extra_cmdline: String::new(),
                console_log: None,
            },
            nic: Some(NicSpec {
                mac: format!("52:54:00:5b:00:{:02x}", 10 + k),
                bridge: "br-int".into(),
                vlan_tag: None,
                port_name: format!("msb{short}"),
                ipv4_cidr: Some(format!("10.200.79.{}/24", 10 + k)),
                attach: NicAttach::TapOnly,
            }),
            channel_socket: Some(channel_socket_path(&self.agent_dir(), id)),
            egress_limit: None,
            max_vcpus: None,
            max_memory_mib: None,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(hv) = NamespaceHypervisor::new(self.config(vec!["true".into()])) {
            for guest in hv.list_owned().unwrap_or_default() {
                // Without the sandbox these would be the host's files.
                let _ = fs::remove_file(format!("/tmp/ml-sbx-{}", guest.id));
                let _ = fs::remove_file(format!("/var/tmp/ml-sbx-fill-{}", guest.id));
                let _ = hv.undefine(guest.id);
            }
        }
        let _ = fs::remove_file("/usr/ml-sbx-escape");
        for hierarchy in ["unified", "cpu", "memory", ""] {
            let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.tag));
        }
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Uid:` (real, effective, saved, fs), `CapEff:` and `NoNewPrivs:` of a
/// process, as the host sees it.
fn host_view(pid: u32) -> Option<(Vec<u32>, String, String)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let uids = field("Uid:")?
        .split_whitespace()
        .filter_map(|u| u.parse().ok())
        .collect();
    Some((uids, field("CapEff:")?, field("NoNewPrivs:")?))
}

fn procs_in(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_program_cannot_reach_the_host() {
    let fx = Fixture::new();
    let ovs = OvsSandbox::start("sbx").unwrap();
    let ovsdb = ovs.dir().join("db.sock");
    assert!(ovsdb.exists(), "the node's OVSDB socket is there to attack");

    // The node's secret, as the agent stores it.
    let identity = measurelab_agent::identity::identity_path(&fx.agent_dir());
    fs::create_dir_all(fx.agent_dir()).unwrap();
    fs::write(&identity, "{\"secret\":\"node-secret\"}").unwrap();
    fs::set_permissions(&identity, fs::Permissions::from_mode(0o600)).unwrap();

    // The victim: another guest, its channel open as the agent opens it.
    let victim_hv =
        NamespaceHypervisor::new(fx.config(vec!["sleep".into(), "3600".into()])).unwrap();
    let victim = fx.spec(1);
    let channels = GuestChannels::new();
    let victim_socket = victim.channel_socket.clone().unwrap();
    let _victim_inbound = channels.open_unix(victim.id, &victim_socket).unwrap();
    victim_hv.define(&victim).unwrap();
    victim_hv.start(victim.id).unwrap();
    let victim_uid = victim_hv.guest_uid(victim.id).unwrap().unwrap();

    let marker = fx.dir.path().join("escaped-marker");
    let attacker = fx.spec(2);
    let attacker_hv = NamespaceHypervisor::new(fx.config(vec![
        "env".into(),
        format!("IDENTITY={}", identity.display()),
        format!("OTHER_CHANNEL={}", victim_socket.display()),
        format!("OVSDB={}", ovsdb.display()),
        format!("OTHER_NETNS={}", NamespaceHypervisor::netns_name(victim.id)),
        format!("HOST_MARKER={}", marker.display()),
        format!("DISK_MIB={DISK_MIB}"),
        "sh".into(),
        "-c".into(),
        ATTACKS.into(),
    ]))
    .unwrap();
    attacker_hv.define(&attacker).unwrap();
    attacker_hv.start(attacker.id).unwrap();
    let pid = attacker_hv.guest_pid(attacker.id).unwrap().unwrap();
    let results_path = format!("/proc/{pid}/root/tmp/ml-sbx-{}", attacker.id);
    let results = wait_for("the attack results", Duration::from_secs(30), || {
        fs::read_to_string(&results_path)
            .ok()
            .filter(|t| t.lines().any(|l| l == "done"))
    });
    println!("{results}");

    for attempt in [
        "identity",
        "other_channel",
        "ovsdb",
        "nsenter_init",
        "nsenter_other_netns",
        "write_host",
        "write_usr",
        "exceed_disk",
    ] {
        assert!(
            results.lines().any(|l| l == format!("{attempt} blocked")),
            "{attempt} was not blocked:\n{results}"
        );
    }
    assert!(!marker.exists(), "the guest wrote into the host filesystem");
    assert_eq!(
        fs::read_to_string(&identity).unwrap(),
        "{\"secret\":\"node-secret\"}"
    );

    // From the host: every process of the guest is its own uid, never 0;
    // the guest and its program hold no capability and cannot gain one.
    let uid = attacker_hv.guest_uid(attacker.id).unwrap().unwrap();
    assert!((GUEST_UID_FIRST..=GUEST_UID_LAST).contains(&uid), "{uid}");
    assert_ne!(uid, victim_uid, "two guests share a uid");
    let members = procs_in(&attacker_hv.cgroup_dir(attacker.id));
    assert!(members.len() >= 2, "{members:?}");
    for member in &members {
        let Some((uids, cap_eff, no_new_privs)) = host_view(*member) else {
            continue;
        };
        assert!(
            uids.iter().all(|u| *u == uid),
            "process {member} runs as {uids:?}, not the guest's uid {uid}"
        );
        if *member == pid {
            assert_eq!(cap_eff, "0000000000000000", "guest has capabilities");
            assert_eq!(no_new_privs, "1");
        }
    }
    // The program (the guest's `sleep`, a child of the guest process).
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let (uids, cap_eff, no_new_privs) = host_view(child).unwrap();
    assert!(uids.iter().all(|u| *u == uid), "{uids:?}");
    assert_eq!(cap_eff, "0000000000000000");
    assert_eq!(no_new_privs, "1");

    // The victim's channel: a directory only its uid may open.
    let channel_dir = victim_socket.parent().unwrap();
    let meta = fs::metadata(channel_dir).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (victim_uid, 0o700));
    let meta = fs::metadata(&victim_socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (victim_uid, 0o600));
    channels.close(victim.id);
}

/// A guest started by an older agent (its record has no uid: it ran as
/// root) is stopped when the backend opens; started again it is boxed.
#[test]
fn unboxed_guests_of_an_older_agent_are_replaced() {
    let fx = Fixture::new();
    let config = fx.config(vec!["sleep".into(), "3600".into()]);
    let hv = NamespaceHypervisor::new(config.clone()).unwrap();
    let spec = fx.spec(3);
    hv.define(&spec).unwrap();
    hv.start(spec.id).unwrap();
    let old_pid = hv.guest_pid(spec.id).unwrap().unwrap();

    // What an older agent wrote: the same record without a uid.
    let record_path = config.state_dir.join(format!("{}.json", spec.id));
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record_path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("uid");
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

    let restarted = NamespaceHypervisor::new(config).unwrap();
    assert_eq!(restarted.guest_pid(spec.id).unwrap(), None);
    let left = procs_in(&restarted.cgroup_dir(spec.id));
    assert!(
        left.is_empty(),
        "the unboxed guest {old_pid} still runs: {left:?}"
    );
    let uid = restarted.guest_uid(spec.id).unwrap().unwrap();
    restarted.start(spec.id).unwrap();
    let pid = restarted.guest_pid(spec.id).unwrap().unwrap();
    let (uids, _, _) = host_view(pid).unwrap();
    assert!(uids.iter().all(|u| *u == uid), "{uids:?}");
}
