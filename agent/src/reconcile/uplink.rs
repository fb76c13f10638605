//! A bonded uplink from the agent's configuration (`--uplink-bond`,
//! `--bond-member`, `--bond-mode`) and how it becomes the switch's
//! [`UplinkSpec`].

use crate::ovs::spec::check_ifname;
use crate::ovs::{BondMode, BondSpec, UplinkSpec};

/// How the bond spreads traffic and fails over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UplinkBondMode {
    /// One member carries everything; another takes over when its carrier goes.
    #[default]
    ActiveBackup,
    /// Source-MAC balancing over all members; no switch support needed.
    BalanceSlb,
    /// balance-slb negotiated with the partner switch over LACP (802.3ad);
    /// the partner must speak LACP or the bond carries nothing.
    Lacp,
}

impl UplinkBondMode {
    /// Parse `active-backup`, `balance-slb` or `lacp`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active-backup" => Some(UplinkBondMode::ActiveBackup),
            "balance-slb" => Some(UplinkBondMode::BalanceSlb),
            "lacp" => Some(UplinkBondMode::Lacp),
            _ => None,
        }
    }

    /// The name the flags and capabilities use.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkBondMode::ActiveBackup => "active-backup",
            UplinkBondMode::BalanceSlb => "balance-slb",
            UplinkBondMode::Lacp => "lacp",
        }
    }

    fn bond_spec(self) -> BondSpec {
        match self {
            UplinkBondMode::ActiveBackup => BondSpec {
                mode: BondMode::ActiveBackup,
                lacp: false,
            },
            UplinkBondMode::BalanceSlb => BondSpec {
                mode: BondMode::BalanceSlb,
                lacp: false,
            },
            UplinkBondMode::Lacp => BondSpec {
                mode: BondMode::BalanceSlb,
                lacp: true,
            },
        }
    }
}

/// A node uplink made of several interfaces bonded into one trunk port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkBondSettings {
    /// The bond's port name on the integration bridge, e.g. `bond0`.
    pub name: String,
    /// Member interfaces (at least two), e.g. `uplink0`, `uplink1`.
    pub members: Vec<String>,
    /// Balancing and failover.
    pub mode: UplinkBondMode,
}

impl UplinkBondSettings {
    /// Check the settings; the error is `(field, reason)` with the fields
    /// `uplink_bond` and `bond_member`.
    pub fn validate(&self, bridge: &str) -> Result<(), (String, String)> {
        let named = |field: &str, e: crate::ovs::OvsError| (field.to_string(), e.to_string());
        check_ifname("uplink_bond", &self.name).map_err(|e| named("uplink_bond", e))?;
        if self.name == bridge {
            return Err((
                "uplink_bond".into(),
                format!("{:?} is the integration bridge's own name", self.name),
            ));
        }
        if self.members.len() < 2 {
            return Err((
                "bond_member".into(),
                format!(
                    "a bond needs at least 2 members, got {}; for one interface use --uplink",
                    self.members.len()
                ),
            ));
        }
        for (i, member) in self.members.iter().enumerate() {
            check_ifname("bond_member", member).map_err(|e| named("bond_member", e))?;
            if member == &self.name || member == bridge {
                return Err((
                    "bond_member".into(),
                    format!("{member:?} is also the bond's or the bridge's name"),
                ));
            }
            if self.members[..i].contains(member) {
                return Err(("bond_member".into(), format!("{member:?} is given twice")));
            }
        }
        Ok(())
    }

    /// The switch's uplink port for these settings.
    pub fn to_spec(&self) -> UplinkSpec {
        UplinkSpec {
            name: self.name.clone(),
            members: self.members.clone(),
            bond: Some(self.mode.bond_spec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bond() -> UplinkBondSettings {
        UplinkBondSettings {
            name: "bond0".into(),
            members: vec!["uplink0".into(), "uplink1".into()],
            mode: UplinkBondMode::ActiveBackup,
        }
    }

    #[test]
    fn modes_map_to_the_ovs_bond() {
        for (text, mode, lacp) in [
            ("active-backup", BondMode::ActiveBackup, false),
            ("balance-slb", BondMode::BalanceSlb, false),
            ("lacp", BondMode::BalanceSlb, true),
        ] {
            let parsed = UplinkBondMode::parse(text).unwrap();
            assert_eq!(parsed.as_str(), text);
            let spec = UplinkBondSettings {
                mode: parsed,
                ..bond()
            }
            .to_spec();
            assert_eq!(spec.bond, Some(BondSpec { mode, lacp }), "{text}");
            assert_eq!(spec.members, vec!["uplink0", "uplink1"]);
        }
        assert_eq!(UplinkBondMode::parse("balance-tcp"), None);
    }

    #[test]
    fn bad_bonds_name_the_field() {
        assert_eq!(bond().validate("br-int"), Ok(()));
        type Mutation = Box<dyn Fn(&mut UplinkBondSettings)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("uplink_bond", Box::new(|b| b.name = "".into())),
            ("uplink_bond", Box::new(|b| b.name = "br-int".into())),
            ("bond_member", Box::new(|b| b.members.truncate(1))),
            ("bond_member", Box::new(|b| b.members[1] = "uplink0".into())),
            ("bond_member", Box::new(|b| b.members[1] = "bond0".into())),
            (
                "bond_member",
                Box::new(|b| b.members[0] = "a-name-that-is-too-long".into()),
            ),
        ];
        for (field, mutate) in cases {
            let mut b = bond();
            mutate(&mut b);
            match b.validate("br-int") {
                Err((f, _)) => assert_eq!(f, field, "{b:?}"),
                Ok(()) => panic!("{b:?} should be refused on {field}"),
            }
        }
    }
}
