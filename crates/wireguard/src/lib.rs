//! A userspace WireGuard endpoint on Cloudflare's `boringtun`: the one
//! implementation that needs no kernel module (the build machine and many
//! lab hosts have none), used both by the node agent's platform gateways and
//! by `measurelab tunnel up` on a researcher's machine.
//!
//! # Layout
//! - [`key`]: X25519 keys as they travel (base64) and as the UAPI wants them (hex).
//! - [`uapi`]: configuring a running device over the `wg` UAPI text protocol
//!   on its unix socket: read its state, replace its peer set.
//! - [`quick`]: parsing a wg-quick configuration file.
//! - [`device`]: running a device (what the `measurelab-wg` binary does).
//! - [`launch`]: starting and stopping that binary detached.
//!
//! A device is a separate process (`measurelab-wg device NAME`), never a
//! thread of its user: the agent's gateways must outlive agent restarts, and
//! a researcher's tunnel must outlive the command that brought it up.

pub mod device;
pub mod key;
pub mod launch;
pub mod quick;
pub mod uapi;

pub use key::{Key, KeyError};
pub use uapi::{DeviceConfig, DeviceState, PeerConfig, UapiError};

/// Where boringtun puts a device's UAPI socket: `/var/run/wireguard/NAME.sock`
/// (fixed by boringtun; one directory for every network namespace, so device
/// names must be unique host-wide).
pub fn socket_path(device: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/var/run/wireguard/{device}.sock"))
}
