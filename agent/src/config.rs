//! [`AgentConfig`] and its validation, and [`AgentError`]: kept apart from
//! the crate root so the session that consumes them does not import the root
//! that starts it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{capabilities, controller_tls, identity, ovs, reconcile, service_host};

/// Where appliances are installed (`scripts/build-appliance.sh` and the
/// controller's built-in appliance use it).
pub const DEFAULT_APPLIANCE_DIR: &str = "/var/lib/measurelab/appliances";

/// Everything the agent needs to join a lab.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Unique node name (a DNS label).
    pub name: String,
    /// gRPC endpoint of the controller, e.g. `http://10.254.0.1:7071`, or
    /// several separated by commas (all `http://` or all `https://`): the
    /// agent talks to one at a time and goes on to the next when it stops
    /// answering (see [`AgentConfig::controller_endpoints`]).
    pub controller: String,
    /// The lab's join token.
    pub join_token: String,
    /// SHA-256 (lower-case hex) of the controller CA's certificate, from a
    /// join bundle: on the first connection to an `https://` controller the
    /// agent pins the CA with this fingerprint (kept in the state dir) and
    /// trusts only it from then on. Needed for `https://` until a CA is pinned.
    pub ca_sha256: Option<String>,
    /// Directory holding `identity.json`; created if missing.
    pub state_dir: PathBuf,
    /// Labels reported at registration. They seed a new node's operator
    /// labels; afterwards the operator owns those and these are kept apart
    /// (`reported_labels`).
    pub labels: BTreeMap<String, String>,
    /// Address of the node on the management network.
    pub management_address: String,
    /// The node's own OVSDB, e.g. `unix:/path/db.sock`.
    pub ovsdb: Option<String>,
    /// libvirt URIs to probe.
    pub libvirt_uris: Vec<String>,
    /// Appliance files (kernel, initrd, disk image) of libvirt guests must
    /// lie under this directory; a VM whose appliance lies elsewhere is
    /// refused. Default [`DEFAULT_APPLIANCE_DIR`].
    pub appliance_dir: PathBuf,
    /// Integration bridge the VM ports join (created by the agent).
    pub bridge: String,
    /// Uplink port added to the bridge as a VLAN trunk, e.g. `uplink0`.
    pub uplink: Option<String>,
    /// A bond of several interfaces as the uplink instead of `uplink`.
    pub uplink_bond: Option<reconcile::UplinkBondSettings>,
    /// The bridge's datapath: kernel where the module works (`Auto`), or pinned.
    pub datapath: ovs::DatapathChoice,
    /// The node's underlay address, reported as `Capabilities.tunnel_address`
    /// and used as the local end of VXLAN tunnels to peers at other sites;
    /// `None`: nodes meet over the uplink trunk only.
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
    /// The MTU of every platform NIC of the guests this agent creates,
    /// within [`crate::underlay::GUEST_MTU_RANGE`]; `None`: chosen at start
    /// from `tunnel_ip`'s interface ([`crate::underlay::guest_mtu`]).
    pub guest_mtu: Option<u32>,
    /// The guest agent binary run in namespace guests; `None`:
    /// `measurelab-guest-agent` beside the running executable.
    pub guest_agent: Option<PathBuf>,
    /// The node's public address, reported as `Capabilities.public_address`:
    /// where peers reach its platform gateways. `None`: it runs none.
    pub public_address: Option<std::net::Ipv4Addr>,
    /// The gateways' `measurelab-wg` binary; `None`: beside the running
    /// executable.
    pub wireguard_binary: Option<PathBuf>,
    /// The service host (built-in measurement point on the service network);
    /// `None`: the node takes no service_host tasks.
    pub service_host: Option<service_host::ServiceHostConfig>,
    /// Flow export of the switch while the operator set none for this node
    /// (the operator's `flow_export` on the node overrides it); exported only
    /// while a platform on the node has flow monitoring on.
    pub flow_export: Option<reconcile::FlowExportSettings>,
    /// A running guest silent for longer than this turns its VM's
    /// `GuestRegistered` False. Default 15 s (3 guest heartbeats).
    pub guest_heartbeat_deadline: std::time::Duration,
    /// Where to serve Prometheus `/metrics` (plain HTTP, no token: bind it
    /// to the management address or loopback); `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// A configuration with no labels, no OVSDB and the default libvirt URIs.
    pub fn new(name: &str, controller: &str, join_token: &str, state_dir: PathBuf) -> Self {
        AgentConfig {
            name: name.to_string(),
            controller: controller.to_string(),
            join_token: join_token.to_string(),
            ca_sha256: None,
            state_dir,
            labels: BTreeMap::new(),
            management_address: String::new(),
            ovsdb: None,
            libvirt_uris: capabilities::DEFAULT_LIBVIRT_URIS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            appliance_dir: PathBuf::from(DEFAULT_APPLIANCE_DIR),
            bridge: "br-int".to_string(),
            uplink: None,
            uplink_bond: None,
            datapath: ovs::DatapathChoice::Auto,
            tunnel_ip: None,
            guest_mtu: None,
            guest_agent: None,
            public_address: None,
            wireguard_binary: None,
            service_host: None,
            flow_export: None,
            guest_heartbeat_deadline: reconcile::DEFAULT_GUEST_HEARTBEAT_DEADLINE,
            metrics_listen: None,
        }
    }

    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), AgentError> {
        let invalid = |field: &str, reason: String| AgentError::InvalidConfig {
            field: field.to_string(),
            reason,
        };
        if let Err(reason) = check_dns_label(&self.name) {
            return Err(invalid("name", reason));
        }
        let endpoints = self.controller_endpoints()?;
        if let Some(pin) = &self.ca_sha256 {
            if !endpoints[0].starts_with("https://") {
                return Err(invalid(
                    "ca_sha256",
                    format!(
                        "pins a CA, but the controller {:?} is not https://",
                        self.controller
                    ),
                ));
            }
            if pin.len() != 64
                || !pin
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(invalid(
                    "ca_sha256",
                    format!("{pin:?} must be 64 lower-case hex digits (SHA-256)"),
                ));
            }
        }
        if self.join_token.trim().is_empty() {
            return Err(invalid("join_token", "must not be empty".into()));
        }
        if self.guest_heartbeat_deadline < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "guest_heartbeat_deadline",
                "must be at least 1 s (guests heartbeat every 5 s by default)".into(),
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty".into()));
        }
        for key in self.labels.keys() {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(invalid(
                    "labels",
                    format!("label key {key:?} must be non-empty without spaces or '='"),
                ));
            }
        }
        if let Some(ovsdb) = &self.ovsdb {
            if !(ovsdb.starts_with("unix:") || ovsdb.starts_with("tcp:")) {
                return Err(invalid(
                    "ovsdb",
                    format!("{ovsdb:?} must look like unix:/path/db.sock or tcp:host:port"),
                ));
            }
        }
        if let Err(e) = ovs::spec::check_ifname("bridge", &self.bridge) {
            return Err(invalid("bridge", e.to_string()));
        }
        if let Some(uplink) = &self.uplink {
            if let Err(e) = ovs::spec::check_ifname("uplink", uplink) {
                return Err(invalid("uplink", e.to_string()));
            }
        }
        if let Some(bond) = &self.uplink_bond {
            if self.uplink.is_some() {
                return Err(invalid(
                    "uplink_bond",
                    "the uplink is either one interface (uplink) or a bond, not both".into(),
                ));
            }
            if let Err((field, reason)) = bond.validate(&self.bridge) {
                return Err(invalid(&field, reason));
            }
        }
        if let Some(ip) = self.tunnel_ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(
                    "tunnel_ip",
                    format!("{ip} is not a unicast address a peer could send VXLAN to"),
                ));
            }
        }
        if let Some(mtu) = self.guest_mtu {
            let range = crate::underlay::GUEST_MTU_RANGE;
            if !range.contains(&mtu) {
                return Err(invalid(
                    "guest_mtu",
                    format!("{mtu} is outside {}..={} bytes", range.start(), range.end()),
                ));
            }
        }
        if let Some(ip) = self.public_address {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(invalid(
                    "public_address",
                    format!("{ip} is not a unicast address a peer could send to"),
                ));
            }
        }
        if let Some(service) = &self.service_host {
            if let Err(service_host::ServiceHostError::InvalidConfig { field, reason }) =
                service.validate()
            {
                return Err(invalid(&field, reason));
            }
        }
        if let Some(export) = &self.flow_export {
            if let Err((field, reason)) = export.validate("flow_export_") {
                return Err(invalid(&field, reason));
            }
        }
        if !self.appliance_dir.is_absolute() {
            return Err(invalid(
                "appliance_dir",
                format!("{} must be an absolute path", self.appliance_dir.display()),
            ));
        }
        if let Some(agent) = &self.guest_agent {
            if !agent.is_absolute() {
                return Err(invalid(
                    "guest_agent",
                    format!("{} must be an absolute path", agent.display()),
                ));
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    /// The endpoints of [`AgentConfig::controller`], checked: each an
    /// `http://` or `https://` URL, all with the same scheme (one CA pin and
    /// one client certificate serve them all, so TLS is all or nothing).
    pub fn controller_endpoints(&self) -> Result<Vec<String>, AgentError> {
        let invalid = |reason: String| AgentError::InvalidConfig {
            field: "controller".to_string(),
            reason,
        };
        let endpoints =
            measurelab_api::client::split_endpoints(&self.controller).map_err(invalid)?;
        for endpoint in &endpoints {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(invalid(format!(
                    "{endpoint:?} must be an http:// or https:// URL such as http://10.254.0.1:7071"
                )));
            }
            if tonic::transport::Endpoint::from_shared(endpoint.clone()).is_err() {
                return Err(invalid(format!("{endpoint:?} is not a valid URL")));
            }
        }
        let tls = endpoints[0].starts_with("https://");
        if let Some(odd) = endpoints.iter().find(|e| e.starts_with("https://") != tls) {
            return Err(invalid(format!(
                "{odd:?} does not share the scheme of {:?}: mixing http:// and https:// \
                 controllers is refused (the agent would fall back to plaintext)",
                endpoints[0]
            )));
        }
        Ok(endpoints)
    }

    /// Whether the controllers are reached over TLS.
    pub fn controller_tls(&self) -> bool {
        self.controller.trim_start().starts_with("https://")
    }
}

fn check_dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{name:?} must be 1 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} must not start or end with '-'"));
    }
    Ok(())
}

/// Errors that stop the agent. Controller trouble is never one of them.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration field is unusable.
    #[error("invalid agent configuration: {field}: {reason}")]
    InvalidConfig {
        /// Field name.
        field: String,
        /// Why.
        reason: String,
    },
    /// The state directory cannot be created.
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        /// Directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// identity.json cannot be read or written.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// TLS to the controller cannot be set up: the pinned CA does not
    /// match the join bundle, or a state file is unusable.
    #[error(transparent)]
    ControllerTls(#[from] controller_tls::ControllerTlsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig::new(
            "n1",
            "http://127.0.0.1:7071",
            "tok",
            PathBuf::from("/tmp/x"),
        )
    }

    fn bond() -> reconcile::UplinkBondSettings {
        reconcile::UplinkBondSettings {
            name: "bond0".into(),
            members: vec!["uplink0".into(), "uplink1".into()],
            mode: reconcile::UplinkBondMode::ActiveBackup,
        }
    }

    #[test]
    fn valid_config_passes() {
        config().validate().unwrap();
        let mut bonded = config();
        bonded.uplink_bond = Some(bond());
        bonded.validate().unwrap();
        let mut routed = config();
        routed.tunnel_ip = Some(std::net::Ipv4Addr::new(10, 60, 1, 2));
        routed.validate().unwrap();
        routed.guest_mtu = Some(1450);
        routed.validate().unwrap();
        let mut several = config();
        several.controller = "http://127.0.0.1:7071, http://127.0.0.2:7071/".into();
        several.validate().unwrap();
        assert_eq!(
            several.controller_endpoints().unwrap(),
            ["http://127.0.0.1:7071", "http://127.0.0.2:7071"]
        );
    }

    #[test]
    fn mixed_schemes_name_the_odd_entry() {
        let mut c = config();
        c.controller = "https://a:7071,https://b:7071,http://c:7071".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("controller") && err.contains("http://c:7071"),
            "{err}"
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut AgentConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|c| c.name = "Bad_Name".into())),
            ("name", Box::new(|c| c.name = "-x".into())),
            (
                "controller",
                Box::new(|c| c.controller = "10.0.0.1:7071".into()),
            ),
            (
                "controller",
                Box::new(|c| c.controller = "http://127.0.0.1:7071,".into()),
            ),
            (
                "controller",
                Box::new(|c| c.controller = "http://127.0.0.1:7071,127.0.0.1:7072".into()),
            ),
            (
                "controller",
                Box::new(|c| c.controller = "https://127.0.0.1:7071,http://127.0.0.1:7072".into()),
            ),
            ("join_token", Box::new(|c| c.join_token = " ".into())),
            (
                "labels",
                Box::new(|c| {
                    c.labels.insert("a b".into(), "v".into());
                }),
            ),
            ("ovsdb", Box::new(|c| c.ovsdb = Some("/run/db.sock".into()))),
            (
                "tunnel_ip",
                Box::new(|c| c.tunnel_ip = Some(std::net::Ipv4Addr::new(239, 1, 1, 1))),
            ),
            (
                "tunnel_ip",
                Box::new(|c| c.tunnel_ip = Some(std::net::Ipv4Addr::UNSPECIFIED)),
            ),
            (
                "public_address",
                Box::new(|c| c.public_address = Some(std::net::Ipv4Addr::LOCALHOST)),
            ),
            ("guest_mtu", Box::new(|c| c.guest_mtu = Some(575))),
            ("guest_mtu", Box::new(|c| c.guest_mtu = Some(9001))),
            (
                "appliance_dir",
                Box::new(|c| c.appliance_dir = "appliances".into()),
            ),
            (
                "uplink_bond",
                Box::new(|c| {
                    c.uplink = Some("uplink0".into());
                    c.uplink_bond = Some(bond());
                }),
            ),
            (
                "bond_member",
                Box::new(|c| {
                    let mut b = bond();
                    b.members.pop();
                    c.uplink_bond = Some(b);
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = config();
            mutate(&mut c);
            match c.validate() {
                Err(AgentError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected {field} to be rejected, got {other:?}"),
            }
        }
    }
}
