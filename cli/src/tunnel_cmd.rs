//! `measurelab tunnel up|down`: a researcher's WireGuard tunnel to a
//! platform gateway without the kernel module or the `wg` tools: the same
//! userspace device (`measurelab-wg`) the gateways run, configured from a
//! standard wg-quick file.
//!
//! `up` starts the device detached (it outlives the command), gives it the
//! file's addresses, configures key and peers over its UAPI socket and routes
//! every AllowedIPs network into it. A default route (`0.0.0.0/0`) is
//! installed as `0.0.0.0/1` + `128.0.0.0/1`, and each peer's endpoint keeps a
//! host route via the path it had, so the tunnel never carries its own
//! packets. `down` stops the device; its routes go with its TUN. The record
//! of a running tunnel is `/run/measurelab/tunnels/NAME.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use measurelab_hostnet as hostnet;
use measurelab_wireguard::device::RunOptions;
use measurelab_wireguard::{launch, quick, uapi, DeviceConfig};
use serde::{Deserialize, Serialize};

/// Where running tunnels are recorded.
const RECORD_DIR: &str = "/run/measurelab/tunnels";
/// MTU of the tunnel device unless the file sets one (wg-quick's default).
const DEFAULT_MTU: u32 = 1420;

#[derive(Debug, Args)]
pub struct TunnelArgs {
    #[command(subcommand)]
    command: TunnelCommand,
}

#[derive(Debug, Subcommand)]
enum TunnelCommand {
    /// Bring a tunnel up from a wg-quick config file.
    Up {
        /// The wg-quick file ([Interface] PrivateKey, Address; [Peer]
        /// PublicKey, Endpoint, AllowedIPs, PersistentKeepalive).
        #[arg(long)]
        config: PathBuf,
        /// Run the tunnel inside this named network namespace.
        #[arg(long)]
        netns: Option<String>,
        /// Device name (unique on this host).
        #[arg(long, default_value = "mlwg0")]
        name: String,
        /// The device binary (default: measurelab-wg beside this binary).
        #[arg(long)]
        wireguard_binary: Option<PathBuf>,
    },
    /// Take a tunnel down.
    Down {
        /// Device name given to `up`.
        #[arg(long, default_value = "mlwg0")]
        name: String,
    },
    /// Print a new private key (base64) and its public key, for a config.
    Genkey,
}

#[derive(Debug, Serialize, Deserialize)]
struct TunnelRecord {
    pid: u32,
    start_time: u64,
    netns: Option<String>,
}

pub fn main(args: TunnelArgs) -> anyhow::Result<()> {
    match args.command {
        TunnelCommand::Up {
            config,
            netns,
            name,
            wireguard_binary,
        } => up(&config, netns.as_deref(), &name, wireguard_binary),
        TunnelCommand::Down { name } => down(&name),
        TunnelCommand::Genkey => {
            let key = measurelab_wireguard::Key::generate();
            println!("PrivateKey = {}", key.to_base64());
            println!("# PublicKey = {}", key.public().to_base64());
            Ok(())
        }
    }
}

fn record_path(name: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("{name}.json"))
}

fn ip(netns: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    Ok(match netns {
        Some(ns) => hostnet::ip_in(ns, args)?,
        None => hostnet::ip(args)?,
    })
}

fn up(path: &Path, netns: Option<&str>, name: &str, binary: Option<PathBuf>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = quick::parse(&text).with_context(|| format!("{}", path.display()))?;
    if name.is_empty() || name.len() > 15 {
        bail!("--name: {name:?} must be 1 to 15 bytes");
    }
    if let Some(record) = read_record(name)? {
        if launch::process_start_time(record.pid) == Some(record.start_time) {
            bail!("tunnel {name} is up already (measurelab tunnel down --name {name} first)");
        }
        // Its device died (or the host rebooted): the record is stale.
    }
    let binary = binary.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("measurelab-wg")))
            .unwrap_or_else(|| PathBuf::from("measurelab-wg"))
    });
    std::fs::create_dir_all(RECORD_DIR).with_context(|| format!("creating {RECORD_DIR}"))?;
    let options = RunOptions {
        name: name.to_string(),
        netns: None,
        ready_file: Some(Path::new(RECORD_DIR).join(format!("{name}.ready"))),
    };
    let log = Path::new(RECORD_DIR).join(format!("{name}.log"));
    let pid = launch::start(&binary, &options, &log, netns)?;
    let record = TunnelRecord {
        pid,
        start_time: launch::process_start_time(pid).unwrap_or(0),
        netns: netns.map(str::to_string),
    };
    std::fs::write(record_path(name), serde_json::to_string(&record)?)?;
    if let Err(err) = configure(name, netns, &config) {
        // Nothing half-applied: the device (and with it its addresses and
        // routes) goes again.
        let _ = down(name);
        return Err(err);
    }
    println!("tunnel {name} up (pid {pid})");
    Ok(())
}

fn configure(name: &str, netns: Option<&str>, config: &quick::QuickConfig) -> anyhow::Result<()> {
    for address in &config.addresses {
        ip(netns, &["addr", "add", address, "dev", name])?;
    }
    let mtu = config.mtu.unwrap_or(DEFAULT_MTU).to_string();
    ip(netns, &["link", "set", name, "mtu", &mtu, "up"])?;
    uapi::apply(
        &measurelab_wireguard::socket_path(name),
        &DeviceConfig {
            private_key: config.private_key.clone(),
            listen_port: config.listen_port,
            peers: config.peers.clone(),
        },
    )?;
    for peer in &config.peers {
        if let Some(endpoint) = peer.endpoint {
            pin_endpoint(netns, endpoint.ip())?;
        }
        for net in &peer.allowed_ips {
            let family = if net.contains(':') { "-6" } else { "-4" };
            let routes: Vec<&str> = match net.as_str() {
                "0.0.0.0/0" => vec!["0.0.0.0/1", "128.0.0.0/1"],
                "::/0" => vec!["::/1", "8000::/1"],
                other => vec![other],
            };
            for route in routes {
                ip(netns, &[family, "route", "replace", route, "dev", name])?;
            }
        }
    }
    Ok(())
}

/// Keeps the endpoint on the route it has now (`ip route get`), so routing
/// AllowedIPs into the tunnel never captures the tunnel's own packets.
fn pin_endpoint(netns: Option<&str>, endpoint: std::net::IpAddr) -> anyhow::Result<()> {
    let target = endpoint.to_string();
    let got = ip(netns, &["-o", "route", "get", &target])?;
    let words: Vec<&str> = got.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let Some(dev) = after("dev") else {
        bail!("no route to the endpoint {target}: {got}");
    };
    let host = if endpoint.is_ipv4() {
        format!("{target}/32")
    } else {
        format!("{target}/128")
    };
    let mut args = vec!["route", "replace", host.as_str()];
    if let Some(via) = after("via") {
        args.extend(["via", via]);
    }
    args.extend(["dev", dev]);
    ip(netns, &args).map(drop)
}

fn read_record(name: &str) -> anyhow::Result<Option<TunnelRecord>> {
    let path = record_path(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn down(name: &str) -> anyhow::Result<()> {
    let path = record_path(name);
    let Some(record) = read_record(name)? else {
        bail!("tunnel {name} is not up (no {})", path.display());
    };
    launch::stop(record.pid, record.start_time)?;
    for file in [
        path.clone(),
        path.with_extension("ready"),
        path.with_extension("log"),
    ] {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}
