//! Kernel features behind OVS QoS. ovs-vswitchd configures linux-htb and
//! ingress policing through the kernel's traffic control on the port's netdev,
//! even with the userspace datapath, and only logs a warning when that fails; the
//! database would happily accept a policing rate that does nothing. So we read
//! the running kernel's build configuration and report honestly.

use std::collections::BTreeMap;
use std::process::Command;

/// Whether a kernel feature is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelFeature {
    /// Built in or available as a module.
    Available,
    /// Not built; the string names the missing kernel options.
    Missing(String),
    /// The kernel configuration could not be read.
    Unknown(String),
}

impl KernelFeature {
    /// Only a proven feature counts.
    pub fn is_available(&self) -> bool {
        matches!(self, KernelFeature::Available)
    }

    /// Human-readable reason when not available.
    pub fn reason(&self) -> Option<&str> {
        match self {
            KernelFeature::Available => None,
            KernelFeature::Missing(reason) | KernelFeature::Unknown(reason) => Some(reason),
        }
    }
}

/// `CONFIG_*` options of the running kernel.
#[derive(Debug, Clone, Default)]
pub(crate) struct KernelConfig {
    options: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Read `/proc/config.gz` or `/boot/config-$(uname -r)`.
    pub(crate) fn read() -> Result<Self, String> {
        if let Ok(output) = Command::new("gzip")
            .args(["-dc", "/proc/config.gz"])
            .output()
        {
            if output.status.success() {
                return Ok(Self::parse(&String::from_utf8_lossy(&output.stdout)));
            }
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|err| format!("cannot read the kernel release: {err}"))?;
        let path = format!("/boot/config-{}", release.trim());
        std::fs::read_to_string(&path)
            .map(|text| Self::parse(&text))
            .map_err(|err| format!("no /proc/config.gz and cannot read {path}: {err}"))
    }

    pub(crate) fn parse(text: &str) -> Self {
        let options = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(key, _)| key.starts_with("CONFIG_"))
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        KernelConfig { options }
    }

    fn has(&self, option: &str) -> bool {
        matches!(
            self.options.get(option).map(String::as_str),
            Some("y" | "m")
        )
    }

    /// Available when every group has at least one enabled option.
    fn feature(&self, all_of_any: &[&[&str]]) -> KernelFeature {
        let missing: Vec<String> = all_of_any
            .iter()
            .filter(|any| !any.iter().any(|option| self.has(option)))
            .map(|any| any.join(" or "))
            .collect();
        if missing.is_empty() {
            KernelFeature::Available
        } else {
            KernelFeature::Missing(format!("kernel lacks {}", missing.join(", ")))
        }
    }

    pub(crate) fn linux_htb(&self) -> KernelFeature {
        self.feature(&[&["CONFIG_NET_SCH_HTB"]])
    }

    /// OVS polices with an ingress qdisc plus a matchall (or, on older kernels,
    /// basic) filter carrying a police action.
    pub(crate) fn ingress_policing(&self) -> KernelFeature {
        self.feature(&[
            &["CONFIG_NET_SCH_INGRESS"],
            &["CONFIG_NET_CLS_MATCHALL", "CONFIG_NET_CLS_BASIC"],
            &["CONFIG_NET_ACT_POLICE"],
        ])
    }

    /// The kernel datapath (`datapath_type=system`): OVS lists the type even
    /// when the module is absent, and bridges of that type then fail.
    pub(crate) fn kernel_datapath(&self) -> KernelFeature {
        if std::path::Path::new("/sys/module/openvswitch").exists() {
            return KernelFeature::Available;
        }
        self.feature(&[&["CONFIG_OPENVSWITCH"]])
    }
}

/// Kernel support for linux-htb, ingress policing and the kernel datapath.
#[derive(Debug, Clone)]
pub(crate) struct KernelProbe {
    pub(crate) linux_htb: KernelFeature,
    pub(crate) ingress_policing: KernelFeature,
    pub(crate) kernel_datapath: KernelFeature,
}

/// Probe the kernel; an unreadable configuration yields `Unknown`.
pub(crate) fn probe_kernel() -> KernelProbe {
    match KernelConfig::read() {
        Ok(config) => KernelProbe {
            linux_htb: config.linux_htb(),
            ingress_policing: config.ingress_policing(),
            kernel_datapath: config.kernel_datapath(),
        },
        Err(reason) => KernelProbe {
            linux_htb: KernelFeature::Unknown(reason.clone()),
            ingress_policing: KernelFeature::Unknown(reason.clone()),
            kernel_datapath: KernelFeature::Unknown(reason),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_kind_of_config() {
        // The relevant lines of this build machine's /proc/config.gz.
        let config = KernelConfig::parse(
            "CONFIG_NET_SCH_HTB=y\nCONFIG_NET_SCH_INGRESS=y\n# CONFIG_NET_CLS_BASIC is not set\n\
             # CONFIG_NET_ACT_POLICE is not set\n# CONFIG_NET_CLS_MATCHALL is not set\nCONFIG_NET_CLS_ACT=y\n",
        );
        assert_eq!(config.linux_htb(), KernelFeature::Available);
        let policing = config.ingress_policing();
        assert!(!policing.is_available());
        let reason = policing.reason().unwrap();
        assert!(reason.contains("CONFIG_NET_ACT_POLICE"), "{reason}");
        assert!(
            reason.contains("CONFIG_NET_CLS_MATCHALL or CONFIG_NET_CLS_BASIC"),
            "{reason}"
        );
    }

    #[test]
    fn modules_count_as_available() {
        let config = KernelConfig::parse(
            "CONFIG_NET_SCH_INGRESS=m\nCONFIG_NET_CLS_BASIC=m\nCONFIG_NET_ACT_POLICE=m\n",
        );
        assert!(config.ingress_policing().is_available());
        assert!(!config.linux_htb().is_available());
    }
}
