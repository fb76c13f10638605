//! The service host's settings, defaults and error: a leaf, so `network` and
//! `runner` take them without importing the parent module that runs them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Control port of the service host's point when none is configured.
pub const DEFAULT_PORT: u16 = 7090;
/// Reserved VLAN of the service network: above the controller's default
/// platform pool (100-3999), so no slice shares it.
pub const DEFAULT_VLAN: u16 = 4000;
/// Name of the OVS internal port that carries the service address.
pub const DEFAULT_INTERFACE: &str = "svc0";
/// `external_ids:measurelab-role` of the service port.
pub const SERVICE_ROLE: &str = "service";
/// How often the desired state is re-read without a generation change, and
/// the service network re-checked.
pub const RESYNC: Duration = Duration::from_secs(10);

/// Errors of the service host.
#[derive(Debug, thiserror::Error)]
pub enum ServiceHostError {
    /// A setting is unusable.
    #[error("invalid service host configuration: {field}: {reason}")]
    InvalidConfig {
        /// Field (flag) name.
        field: String,
        /// Why.
        reason: String,
    },
    /// The node's OVSDB refused or failed a request.
    #[error("service network: OVSDB {target}: {reason}")]
    Ovsdb {
        /// OVSDB target.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The integration bridge is not there yet (the reconcile loop creates it).
    #[error("service network: bridge {bridge} does not exist yet")]
    BridgeMissing {
        /// Bridge name.
        bridge: String,
    },
    /// A port of that name exists but is not ours.
    #[error("service network: port {port} exists on the switch but is not owned by this agent; refusing to touch it")]
    Conflict {
        /// Port name.
        port: String,
    },
    /// A command that configures the interface failed.
    #[error("service network: `{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// stderr or the OS error.
        reason: String,
    },
    /// `ip` or `ethtool` failed on the service interface.
    #[error("service network: {0}")]
    Host(#[from] measurelab_hostnet::HostnetError),
    /// The interface did not show up.
    #[error("service network: interface {interface} did not appear within {waited:?}")]
    NoInterface {
        /// Interface name.
        interface: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The measurement point could not start.
    #[error("service host point: {0}")]
    Point(#[from] measurelab_mcast::service::ServiceError),
    /// The task state file cannot be read or written.
    #[error("service host state {path}: {reason}")]
    State {
        /// File.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// Settings of the service host (`measurelab agent --service-address ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceHostConfig {
    /// The node's address on the service network: points send and join there
    /// and listen for control on it.
    pub address: Ipv4Addr,
    /// Prefix length of the service network.
    pub prefix_len: u8,
    /// VLAN of the service port on the integration bridge.
    pub vlan: u16,
    /// TCP control port of the point.
    pub port: u16,
    /// Interface that carries the address: an OVS internal port the agent
    /// creates when it has an OVSDB, else an existing interface.
    pub interface: String,
    /// Bound (µs) on the clock error between nodes, for one-way delay; `None`
    /// when the listed nodes share one clock (nodes of a local lab).
    pub clock_sync_bound_us: Option<f64>,
}

impl ServiceHostConfig {
    /// Defaults around `address/prefix_len`: VLAN [`DEFAULT_VLAN`], port
    /// [`DEFAULT_PORT`], interface [`DEFAULT_INTERFACE`], one shared clock.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Self {
        ServiceHostConfig {
            address,
            prefix_len,
            vlan: DEFAULT_VLAN,
            port: DEFAULT_PORT,
            interface: DEFAULT_INTERFACE.to_string(),
            clock_sync_bound_us: None,
        }
    }

    /// Parses `A.B.C.D/LEN` (the `--service-address` flag).
    pub fn parse_address(text: &str) -> Result<(Ipv4Addr, u8), ServiceHostError> {
        let invalid = |reason: String| ServiceHostError::InvalidConfig {
            field: "service_address".into(),
            reason,
        };
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| invalid(format!("{text:?} must be IPv4/PREFIX, e.g. 10.253.0.11/24")))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid(format!("{address:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid(format!("prefix {prefix:?} is not a number")))?;
        Ok((address, prefix))
    }

    /// The control endpoint reported to the controller.
    pub fn endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ServiceHostError> {
        let invalid = |field: &str, reason: String| ServiceHostError::InvalidConfig {
            field: field.to_string(),
            reason,
        };
        let a = self.address;
        if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback() {
            return Err(invalid(
                "service_address",
                format!("{a} must be a unicast address of the node on the service network"),
            ));
        }
        if !(8..=30).contains(&self.prefix_len) {
            return Err(invalid(
                "service_address",
                format!("prefix /{} must be between /8 and /30", self.prefix_len),
            ));
        }
        if !(1..=4094).contains(&self.vlan) {
            return Err(invalid(
                "service_vlan",
                format!("{} is not a VLAN tag (1-4094)", self.vlan),
            ));
        }
        if self.port == 0 {
            return Err(invalid("service_port", "must not be 0".into()));
        }
        if let Err(e) = crate::ovs::spec::check_ifname("service_interface", &self.interface) {
            return Err(invalid("service_interface", e.to_string()));
        }
        if let Some(bound) = self.clock_sync_bound_us {
            if !(bound.is_finite() && bound >= 0.0) {
                return Err(invalid(
                    "service_clock_sync_bound_us",
                    format!("{bound} is not a finite number >= 0"),
                ));
            }
        }
        Ok(())
    }
}
