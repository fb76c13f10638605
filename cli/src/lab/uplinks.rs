//! `lab up --uplinks N`: how many veth pairs join each node to the lab
//! switch, and how the node's agent is told to use them. With one, the node's
//! `uplink0` is the trunk (the contract layout); with two, `uplink0` and
//! `uplink1` form the agent's bond `bond0`, so failover can be exercised by
//! taking either lab-switch peer (`<name>-nK-up`, `<name>-nK-up1`) down.

/// Most uplinks a lab node gets.
pub(super) const MAX_UPLINKS: u32 = 2;
/// The node-side name of the bond over several uplinks.
pub(super) const BOND_NAME: &str = "bond0";

/// Bond modes a lab can use: the lab switch is a plain OVS bridge, so LACP
/// would never negotiate.
pub(super) fn parse_lab_bond_mode(text: &str) -> Result<String, String> {
    match text {
        "active-backup" | "balance-slb" => Ok(text.to_string()),
        "lacp" => Err("lacp needs a partner that speaks LACP; the lab switch does not".into()),
        _ => Err(format!("{text:?} is not one of active-backup, balance-slb")),
    }
}

/// The node-side interface of uplink `i` (0-based).
pub(super) fn node_side(i: u32) -> String {
    format!("uplink{i}")
}

/// The agent flags for a node with `uplinks` uplinks bonded in `bond_mode`.
pub(super) fn agent_args(uplinks: u32, bond_mode: &str) -> Vec<String> {
    if uplinks <= 1 {
        return vec!["--uplink".into(), node_side(0)];
    }
    let mut args = vec!["--uplink-bond".to_string(), BOND_NAME.to_string()];
    for i in 0..uplinks {
        args.push("--bond-member".into());
        args.push(node_side(i));
    }
    args.extend(["--bond-mode".to_string(), bond_mode.to_string()]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uplink_is_the_plain_trunk_two_are_a_bond() {
        assert_eq!(agent_args(1, "active-backup"), ["--uplink", "uplink0"]);
        assert_eq!(
            agent_args(2, "balance-slb"),
            [
                "--uplink-bond",
                "bond0",
                "--bond-member",
                "uplink0",
                "--bond-member",
                "uplink1",
                "--bond-mode",
                "balance-slb"
            ]
        );
    }

    #[test]
    fn lacp_is_refused_for_the_plain_lab_switch() {
        assert!(parse_lab_bond_mode("active-backup").is_ok());
        assert!(parse_lab_bond_mode("balance-slb").is_ok());
        let reason = parse_lab_bond_mode("lacp").unwrap_err();
        assert!(reason.contains("LACP"), "{reason}");
        assert!(parse_lab_bond_mode("balance-tcp").is_err());
    }
}
