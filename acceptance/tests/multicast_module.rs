//! The paper's experiment end to end: `examples/multicast-lab` (the
//! `multicast-measurement` module) applied against `measurelab lab up --nodes 4`
//! yields per-receiver multicast results as outputs, converges, and destroy
//! leaves nothing at the controller; once on one lab switch, once with
//! every node at its own routed site.

use measurelab_acceptance::multicast_example::{paper_experiment, programs_hold_the_platform_key};
use measurelab_acceptance::{acc_enabled, Lab};

#[test]
fn acc_multicast_module_paper_experiment() -> anyhow::Result<()> {
    if !acc_enabled("acc_multicast_module_paper_experiment") {
        return Ok(());
    }
    let lab = Lab::up(4)?;
    paper_experiment(&lab, || programs_hold_the_platform_key(&lab))
}

/// The same experiment with every node at its own site behind a router
/// (`lab up --topology routed`): the slice's VLAN, and the multicast in it,
/// reach the other nodes only through the agents' VXLAN tunnels.
#[test]
fn acc_multicast_module_paper_experiment_routed() -> anyhow::Result<()> {
    if !acc_enabled("acc_multicast_module_paper_experiment_routed") {
        return Ok(());
    }
    let lab = Lab::up_with(4, &["--topology", "routed"])?;
    for node in lab.nodes()? {
        anyhow::ensure!(
            !node.capabilities.tunnel_address.is_empty() && node.capabilities.uplink.is_none(),
            "{} is not a routed node: {:?}",
            node.name,
            node.capabilities
        );
    }
    paper_experiment(&lab, || programs_hold_the_platform_key(&lab))
}
