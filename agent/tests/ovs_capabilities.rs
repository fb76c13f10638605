//! Capability probing against a real ovs-vswitchd. Needs root, iproute2 (`tc`)
//! and openvswitch-switch.
//!
//! Every claim of the probe is checked against a source it did not read: the
//! datapath and interface types against `ovs-vsctl`, and each kernel feature
//! against the kernel itself, by trying to use it (a qdisc or filter that `tc`
//! can or cannot create, a `system` bridge that does or does not get a
//! datapath). The probe reads the kernel's build configuration; these checks
//! never do.

use anyhow::Result;
use measurelab_agent::ovs::{probe_capabilities, KernelFeature};
use measurelab_testbed::OvsSandbox;

/// `ovs-vsctl get` of a set column such as `[netdev, system]`, as sorted names.
fn vsctl_set(ovs: &OvsSandbox, column: &str) -> Result<Vec<String>> {
    let raw = ovs.vsctl(&["get", "Open_vSwitch", ".", column])?;
    let mut names: Vec<String> = raw
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|name| name.trim().trim_matches('"').to_string())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    Ok(names)
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut names = names.to_vec();
    names.sort();
    names
}

/// Whether `tc` in the switch's namespace accepts every step (a fresh veth
/// per check, so one check cannot leave state for the next; this kernel has
/// no dummy driver).
fn tc_accepts(ovs: &OvsSandbox, device: &str, steps: &[&[&str]]) -> Result<bool> {
    let ns = ovs.netns();
    let peer = format!("{device}p");
    ns.run(&[
        "ip", "link", "add", device, "type", "veth", "peer", "name", &peer,
    ])?;
    ns.run(&["ip", "link", "set", device, "up"])?;
    let mut accepted = true;
    for step in steps {
        let mut args = vec!["tc"];
        args.extend_from_slice(step);
        let args: Vec<&str> = args
            .into_iter()
            .map(|arg| if arg == "DEV" { device } else { arg })
            .collect();
        if ns.run(&args).is_err() {
            accepted = false;
            break;
        }
    }
    ns.run(&["ip", "link", "del", device])?;
    Ok(accepted)
}

/// Whether the kernel can police ingress as OVS does it: an ingress qdisc
/// plus a matchall (or, on older kernels, basic) filter with a police action.
fn kernel_polices_ingress(ovs: &OvsSandbox) -> Result<bool> {
    for classifier in ["matchall", "basic"] {
        let filter: &[&str] = &[
            "filter", "add", "dev", "DEV", "parent", "ffff:", classifier, "action", "police",
            "rate", "1mbit", "burst", "10k", "drop",
        ];
        let qdisc: &[&str] = &["qdisc", "add", "dev", "DEV", "ingress"];
        if tc_accepts(ovs, "capspol0", &[qdisc, filter])? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a `system` bridge gets a kernel datapath: ovs-vswitchd accepts
/// the row either way, but without the module the bridge's own (local)
/// interface gets no ofport.
fn system_bridge_works(ovs: &OvsSandbox) -> Result<bool> {
    const BRIDGE: &str = "brcapssys";
    ovs.vsctl(&[
        "add-br",
        BRIDGE,
        "--",
        "set",
        "Bridge",
        BRIDGE,
        "datapath_type=system",
    ])?;
    let ofport = ovs.vsctl(&["get", "Interface", BRIDGE, "ofport"])?;
    let error = ovs.vsctl(&["get", "Interface", BRIDGE, "error"])?;
    eprintln!(
        "system bridge: ofport {}, error {}",
        ofport.trim(),
        error.trim()
    );
    ovs.vsctl(&["del-br", BRIDGE])?;
    let ofport: i64 = ofport.trim().trim_matches(['[', ']']).parse().unwrap_or(-1);
    Ok(ofport > 0 && error.trim() == "[]")
}

#[tokio::test]
async fn reports_datapaths_and_qos_support_honestly() -> Result<()> {
    let ovs = OvsSandbox::start("agent-caps")?;
    let caps = probe_capabilities(&ovs.db_target()).await?;
    eprintln!("{caps:?}");

    // What the probe read over OVSDB, against ovs-vsctl's view of the same row.
    assert_eq!(
        sorted(&caps.datapath_types),
        vsctl_set(&ovs, "datapath_types")?,
        "{caps:?}"
    );
    assert_eq!(
        sorted(&caps.iface_types),
        vsctl_set(&ovs, "iface_types")?,
        "{caps:?}"
    );
    // An optional column: `[]` when unset (the sandbox does not set it, as
    // ovs-ctl would), else a quoted string.
    let version = ovs.vsctl(&["get", "Open_vSwitch", ".", "ovs_version"])?;
    let version = Some(version.trim().trim_matches('"')).filter(|v| *v != "[]" && !v.is_empty());
    assert_eq!(caps.ovs_version.as_deref(), version, "{caps:?}");
    // ovs-vswitchd fills datapath_types itself once it runs; netdev is what
    // every test bridge uses.
    assert!(
        caps.usable_datapath_types().contains(&"netdev".to_string()),
        "{caps:?}"
    );

    // Each kernel feature, against the kernel's behaviour.
    let htb = tc_accepts(
        &ovs,
        "capshtb0",
        &[&["qdisc", "add", "dev", "DEV", "root", "htb"]],
    )?;
    assert_eq!(
        caps.linux_htb.is_available(),
        htb,
        "tc htb: {htb}; {caps:?}"
    );
    assert_eq!(
        caps.qos_features().contains(&"linux-htb".to_string()),
        htb,
        "{caps:?}"
    );
    let policing = kernel_polices_ingress(&ovs)?;
    assert_eq!(
        caps.ingress_policing.is_available(),
        policing,
        "tc ingress police: {policing}; {caps:?}"
    );
    assert_eq!(
        caps.qos_features()
            .contains(&"ingress-policing".to_string()),
        policing,
        "{caps:?}"
    );
    if let KernelFeature::Missing(reason) = &caps.ingress_policing {
        assert!(
            reason.contains("CONFIG_NET_"),
            "reason must name the kernel option: {reason}"
        );
    }
    let system = system_bridge_works(&ovs)?;
    assert_eq!(
        caps.usable_datapath_types().contains(&"system".to_string()),
        system,
        "a system bridge works: {system}; {caps:?}"
    );

    let err = probe_capabilities("unix:/nonexistent/db.sock")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/db.sock"), "{err}");
    Ok(())
}
