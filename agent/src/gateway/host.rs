//! The host pieces of a gateway: namespace, veth, forwarding, nftables, the
//! device process and its configuration. Every method blocks (it runs `ip`,
//! `nft` and the UAPI) and is idempotent: [`GatewayHost::ensure`] repairs
//! whatever is missing and leaves what is right alone.

use std::fs;
use std::path::{Path, PathBuf};

use measurelab_hostnet as hostnet;
use measurelab_wireguard::device::RunOptions;
use measurelab_wireguard::{launch, uapi, DeviceConfig};
use serde::{Deserialize, Serialize};

use super::error::GatewayError;
use super::rules;
use super::spec::{GatewayNames, GatewaySpec};

/// MTU of a gateway's TUN: 1500 minus WireGuard's 80 bytes of IPv6
/// overhead, as wg-quick picks, so tunnelled packets never fragment on a
/// 1500-byte path.
pub const TUNNEL_MTU: &str = "1420";

/// The ownership record of one gateway, `<state_dir>/gateways/<netns>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// The platform whose gateway this is.
    pub platform_id: String,
    /// The VLAN its port was last plugged into (kept on the switch while a
    /// changed desired gateway is refused).
    pub vlan: u16,
    /// Its namespace.
    pub netns: String,
    /// Its OVS port (host end of the veth).
    pub port: String,
    /// Its TUN.
    pub device: String,
    /// The device process; 0 before it was first started.
    pub pid: u32,
    /// That process's start time (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// What [`GatewayHost::ensure`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// The device process was (re)started.
    pub started: bool,
    /// The veth was (re)created: its OVS port must be re-added.
    pub port_rebuilt: bool,
    /// The device's key, port or peer set was changed.
    pub reconfigured: bool,
}

/// Runs the gateways of one agent.
#[derive(Debug, Clone)]
pub struct GatewayHost {
    dir: PathBuf,
    binary: PathBuf,
}

impl GatewayHost {
    /// Gateways recorded under `<state_dir>/gateways`, run with `binary`
    /// (`measurelab-wg`).
    pub fn new(state_dir: &Path, binary: PathBuf) -> Self {
        GatewayHost {
            dir: state_dir.join("gateways"),
            binary,
        }
    }

    fn file(&self, names_netns: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{names_netns}.{ext}"))
    }

    fn state_err(&self, path: &Path, reason: impl ToString) -> GatewayError {
        GatewayError::State {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Every gateway this agent owns (has a record of).
    pub fn list_owned(&self) -> Result<Vec<GatewayRecord>, GatewayError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.state_err(&self.dir, e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| self.state_err(&self.dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                records.push(self.read(&path)?);
            }
        }
        Ok(records)
    }

    fn read(&self, path: &Path) -> Result<GatewayRecord, GatewayError> {
        let text = fs::read_to_string(path).map_err(|e| self.state_err(path, e))?;
        serde_json::from_str(&text).map_err(|e| self.state_err(path, e))
    }

    fn write(&self, record: &GatewayRecord) -> Result<(), GatewayError> {
        let path = self.file(&record.netns, "json");
        let tmp = self.file(&record.netns, "json.tmp");
        let text = serde_json::to_string_pretty(record).map_err(|e| self.state_err(&path, e))?;
        fs::create_dir_all(&self.dir)
            .and_then(|_| fs::write(&tmp, text))
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|e| self.state_err(&path, e))
    }

    /// Makes `spec`'s gateway run as specified.
    pub fn ensure(&self, spec: &GatewaySpec) -> Result<EnsureOutcome, GatewayError> {
        let names = &spec.names;
        let host_err = |source| GatewayError::Host {
            platform: spec.platform_name.clone(),
            source,
        };
        let path = self.file(&names.netns, "json");
        let mut record = match path.exists() {
            true => self.read(&path)?,
            false => GatewayRecord {
                platform_id: spec.platform_id.clone(),
                vlan: spec.vlan,
                netns: names.netns.clone(),
                port: names.port.clone(),
                device: names.device.clone(),
                pid: 0,
                start_time: 0,
            },
        };
        // Recorded before anything exists, so a crash half-way leaves
        // pieces this agent knows it owns.
        record.vlan = spec.vlan;
        self.write(&record)?;

        let mut outcome = EnsureOutcome::default();
        hostnet::netns_ensure(&names.netns).map_err(host_err)?;
        outcome.port_rebuilt = ensure_veth(names).map_err(host_err)?;
        ensure_address(&names.netns, "eth0", &spec.inside_address).map_err(host_err)?;
        hostnet::in_netns(&names.netns, || {
            fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .map_err(host_err)?
        .map_err(|e| self.state_err(Path::new("/proc/sys/net/ipv4/ip_forward"), e))?;
        let script = self.file(&names.netns, "nft");
        fs::write(&script, rules::script(spec)).map_err(|e| self.state_err(&script, e))?;
        hostnet::run(
            hostnet::command_in(Some(&names.netns), "nft")
                .arg("-f")
                .arg(&script),
        )
        .map_err(host_err)?;

        let running = record.pid != 0
            && launch::process_start_time(record.pid) == Some(record.start_time)
            && hostnet::link_exists(Some(&names.netns), &names.device);
        if !running {
            // A process whose TUN is gone (namespace deleted) serves nobody.
            launch::stop(record.pid, record.start_time).map_err(|source| GatewayError::Launch {
                platform: spec.platform_name.clone(),
                source,
            })?;
            let options = RunOptions {
                name: names.device.clone(),
                netns: Some(names.netns.clone()),
                ready_file: Some(self.file(&names.netns, "ready")),
            };
            let pid = launch::start(
                &self.binary,
                &options,
                &self.file(&names.netns, "log"),
                None,
            )
            .map_err(|source| GatewayError::Launch {
                platform: spec.platform_name.clone(),
                source,
            })?;
            record.pid = pid;
            record.start_time = launch::process_start_time(pid).unwrap_or(0);
            self.write(&record)?;
            outcome.started = true;
        }
        ensure_address(&names.netns, &names.device, &spec.tunnel_address).map_err(host_err)?;
        hostnet::ip_in(
            &names.netns,
            &["link", "set", &names.device, "mtu", TUNNEL_MTU, "up"],
        )
        .map_err(host_err)?;
        let config = DeviceConfig {
            private_key: spec.private_key.clone(),
            listen_port: Some(spec.listen_port),
            peers: spec.peers.clone(),
        };
        outcome.reconfigured =
            uapi::apply(&measurelab_wireguard::socket_path(&names.device), &config).map_err(
                |source| match source {
                    // What the device answers when it cannot bind the port.
                    uapi::UapiError::Errno { errno, .. }
                        if std::io::Error::from_raw_os_error(errno).kind()
                            == std::io::ErrorKind::AddrInUse =>
                    {
                        GatewayError::PortInUse {
                            platform: spec.platform_name.clone(),
                            port: spec.listen_port,
                        }
                    }
                    source => GatewayError::Uapi {
                        platform: spec.platform_name.clone(),
                        source,
                    },
                },
            )?;
        Ok(outcome)
    }

    /// Stops and deletes everything of `record`'s gateway, then the record.
    pub fn remove(&self, record: &GatewayRecord) -> Result<(), GatewayError> {
        let host_err = |source| GatewayError::Host {
            platform: record.platform_id.clone(),
            source,
        };
        launch::stop(record.pid, record.start_time).map_err(|source| GatewayError::Launch {
            platform: record.platform_id.clone(),
            source,
        })?;
        if hostnet::netns_exists(&record.netns) {
            hostnet::netns_delete(&record.netns).map_err(host_err)?;
        }
        // Normally gone with its peer in the namespace.
        if hostnet::link_exists(None, &record.port) {
            hostnet::ip(&["link", "del", &record.port]).map_err(host_err)?;
        }
        for ext in ["ready", "nft", "log", "json"] {
            let path = self.file(&record.netns, ext);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.state_err(&path, e)),
            }
        }
        Ok(())
    }
}

/// Creates the veth `port` <-> `eth0` (in the gateway namespace) unless both
/// ends exist; true when it did.
fn ensure_veth(names: &GatewayNames) -> Result<bool, hostnet::HostnetError> {
    let host = hostnet::link_exists(None, &names.port);
    let inner = hostnet::link_exists(Some(&names.netns), "eth0");
    if host && inner {
        return Ok(false);
    }
    // A half pair (one end deleted by hand, or an interrupted create).
    if host {
        hostnet::ip(&["link", "del", &names.port])?;
    }
    if inner {
        hostnet::ip_in(&names.netns, &["link", "del", "eth0"])?;
    }
    hostnet::veth_add(None, &names.port, "eth0", Some(&names.netns))?;
    // Userspace OVS does not complete offloaded checksums (see the
    // namespace backend's veths).
    hostnet::tx_offload_off(Some(&names.netns), "eth0")?;
    hostnet::tx_offload_off(None, &names.port)?;
    hostnet::ip_in(&names.netns, &["link", "set", "eth0", "up"])?;
    hostnet::ip(&["link", "set", &names.port, "up"])?;
    Ok(true)
}

/// Makes `cidr` the only IPv4 address of `link` in `netns`, without
/// touching it when it already is (a flush would drop conntrack's NAT
/// source for a moment).
fn ensure_address(netns: &str, link: &str, cidr: &str) -> Result<(), hostnet::HostnetError> {
    let shown = hostnet::ip_in(netns, &["-o", "-4", "addr", "show", "dev", link])?;
    let addresses: Vec<&str> = shown
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.position(|w| w == "inet")?;
            words.next()
        })
        .collect();
    if addresses == [cidr] {
        return Ok(());
    }
    hostnet::ip_in(netns, &["addr", "flush", "dev", link])?;
    hostnet::ip_in(netns, &["addr", "add", cidr, "dev", link]).map(drop)
}
