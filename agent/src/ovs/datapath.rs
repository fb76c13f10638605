//! Which datapath the integration bridge runs on: the kernel one where the
//! openvswitch module is there (less CPU per packet), else the userspace one,
//! unless the operator pinned one.

use super::error::OvsError;
use super::spec::Datapath;
use super::switch::SwitchCapabilities;

/// The operator's wish (`--datapath`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DatapathChoice {
    /// Kernel datapath when usable, userspace otherwise.
    #[default]
    Auto,
    /// Always the kernel datapath; refused where it does not work.
    System,
    /// Always the userspace datapath (the lab: one vswitchd per namespace).
    Netdev,
}

impl DatapathChoice {
    /// Parse `auto`, `system` or `netdev`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(DatapathChoice::Auto),
            "system" => Some(DatapathChoice::System),
            "netdev" => Some(DatapathChoice::Netdev),
            _ => None,
        }
    }
}

/// The datapath to build the bridge on, given what this switch and kernel
/// offer. A pinned datapath that cannot work here is an error naming `datapath`.
pub fn choose(choice: DatapathChoice, caps: &SwitchCapabilities) -> Result<Datapath, OvsError> {
    let offers = |wanted: Datapath| caps.datapath_types.iter().any(|t| t == wanted.as_str());
    // OVS lists "system" even without the module; bridges on it then fail.
    let kernel_ok = offers(Datapath::System) && caps.kernel_datapath.is_available();
    let unsupported = |reason: String| OvsError::Unsupported {
        field: "datapath".to_string(),
        reason,
    };
    match choice {
        DatapathChoice::Auto if kernel_ok => Ok(Datapath::System),
        DatapathChoice::Auto | DatapathChoice::Netdev if offers(Datapath::Netdev) => {
            Ok(Datapath::Netdev)
        }
        DatapathChoice::Auto | DatapathChoice::Netdev => Err(unsupported(format!(
            "the switch offers datapath types {:?}, not the userspace 'netdev' datapath",
            caps.datapath_types
        ))),
        DatapathChoice::System if kernel_ok => Ok(Datapath::System),
        DatapathChoice::System => Err(unsupported(format!(
            "the kernel datapath does not work here: {}",
            if offers(Datapath::System) {
                caps.kernel_datapath
                    .reason()
                    .unwrap_or("the openvswitch module is missing")
                    .to_string()
            } else {
                format!("the switch offers only {:?}", caps.datapath_types)
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::probe::KernelFeature;

    fn caps(types: &[&str], kernel: KernelFeature) -> SwitchCapabilities {
        SwitchCapabilities {
            ovs_version: Some("3.1.0".into()),
            datapath_types: types.iter().map(|t| t.to_string()).collect(),
            iface_types: Vec::new(),
            linux_htb: KernelFeature::Available,
            ingress_policing: KernelFeature::Available,
            kernel_datapath: kernel,
        }
    }

    fn missing() -> KernelFeature {
        KernelFeature::Missing("kernel lacks CONFIG_OPENVSWITCH".into())
    }

    #[test]
    fn auto_takes_the_kernel_datapath_only_when_the_module_works() {
        let both = ["netdev", "system"];
        assert_eq!(
            choose(DatapathChoice::Auto, &caps(&both, KernelFeature::Available)).unwrap(),
            Datapath::System
        );
        // This machine: OVS lists "system", the module is absent.
        assert_eq!(
            choose(DatapathChoice::Auto, &caps(&both, missing())).unwrap(),
            Datapath::Netdev
        );
        assert_eq!(
            choose(
                DatapathChoice::Auto,
                &caps(&both, KernelFeature::Unknown("no /proc/config.gz".into()))
            )
            .unwrap(),
            Datapath::Netdev
        );
        // A module without the type listed (vswitchd built without it).
        assert_eq!(
            choose(
                DatapathChoice::Auto,
                &caps(&["netdev"], KernelFeature::Available)
            )
            .unwrap(),
            Datapath::Netdev
        );
    }

    #[test]
    fn a_pinned_datapath_is_kept_or_refused_naming_the_field() {
        let both = ["netdev", "system"];
        assert_eq!(
            choose(
                DatapathChoice::Netdev,
                &caps(&both, KernelFeature::Available)
            )
            .unwrap(),
            Datapath::Netdev
        );
        assert_eq!(
            choose(
                DatapathChoice::System,
                &caps(&both, KernelFeature::Available)
            )
            .unwrap(),
            Datapath::System
        );
        match choose(DatapathChoice::System, &caps(&both, missing())) {
            Err(OvsError::Unsupported { field, reason }) => {
                assert_eq!(field, "datapath");
                assert!(reason.contains("CONFIG_OPENVSWITCH"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        match choose(
            DatapathChoice::Auto,
            &caps(&["system"], KernelFeature::Missing("x".into())),
        ) {
            Err(OvsError::Unsupported { field, .. }) => assert_eq!(field, "datapath"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn choices_parse_from_their_flag_values() {
        assert_eq!(DatapathChoice::parse("auto"), Some(DatapathChoice::Auto));
        assert_eq!(
            DatapathChoice::parse("system"),
            Some(DatapathChoice::System)
        );
        assert_eq!(
            DatapathChoice::parse("netdev"),
            Some(DatapathChoice::Netdev)
        );
        assert_eq!(DatapathChoice::parse("kernel"), None);
    }
}
