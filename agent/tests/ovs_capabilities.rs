//! Capability probing against a real ovs-vswitchd. Needs root and
//! openvswitch-switch.

use anyhow::Result;
use measurelab_agent::ovs::{probe_capabilities, KernelFeature};
use measurelab_testbed::OvsSandbox;

#[tokio::test]
async fn reports_datapaths_and_qos_support_honestly() -> Result<()> {
    let ovs = OvsSandbox::start("agent-caps")?;
    let caps = probe_capabilities(&ovs.db_target()).await?;
    eprintln!("{caps:?}");
    // ovs-vswitchd fills datapath_types itself once it runs.
    assert!(
        caps.datapath_types.iter().any(|t| t == "netdev"),
        "{caps:?}"
    );
    assert!(caps.iface_types.iter().any(|t| t == "internal"), "{caps:?}");
    // `system` is listed by OVS regardless; it is usable only with the module.
    assert_eq!(
        caps.usable_datapath_types().contains(&"system".to_string()),
        caps.kernel_datapath.is_available()
    );
    assert!(caps.usable_datapath_types().contains(&"netdev".to_string()));
    let features = caps.qos_features();
    assert_eq!(
        features.contains(&"linux-htb".to_string()),
        caps.linux_htb.is_available()
    );
    assert_eq!(
        features.contains(&"ingress-policing".to_string()),
        caps.ingress_policing.is_available()
    );
    if let KernelFeature::Missing(reason) = &caps.ingress_policing {
        assert!(
            reason.contains("CONFIG_NET_"),
            "reason must name the kernel option: {reason}"
        );
    }
    let err = probe_capabilities("unix:/nonexistent/db.sock")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/db.sock"), "{err}");
    Ok(())
}
