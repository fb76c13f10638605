//! What can go wrong with a gateway: a leaf, so every part can name it.

/// A gateway that could not be checked or run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The desired gateway is wrong; nothing of it was applied.
    #[error("gateway of platform {platform}: {field}: {reason}")]
    Invalid {
        /// The platform's name (its id when it has none).
        platform: String,
        /// The `DesiredGateway` field, e.g. `peers[2].public_key`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host tool (`ip`, `nft`) failed.
    #[error("gateway of platform {platform}: {source}")]
    Host {
        /// The platform's name or id.
        platform: String,
        /// The failure.
        source: measurelab_hostnet::HostnetError,
    },
    /// The device process did not start or stop.
    #[error("gateway of platform {platform}: {source}")]
    Launch {
        /// The platform's name or id.
        platform: String,
        /// The failure.
        source: measurelab_wireguard::launch::LaunchError,
    },
    /// Another socket on the node holds the gateway's UDP port.
    #[error("gateway of platform {platform}: listen port {port} is already in use on this node; free it or choose another `gateway.listen_port`")]
    PortInUse {
        /// The platform's name or id.
        platform: String,
        /// The desired `listen_port`.
        port: u16,
    },
    /// The running device refused or missed its configuration.
    #[error("gateway of platform {platform}: configuring the device: {source}")]
    Uapi {
        /// The platform's name or id.
        platform: String,
        /// The failure.
        source: measurelab_wireguard::UapiError,
    },
    /// The gateway's record (or another agent-owned file) is unreadable.
    #[error("gateway state {path}: {reason}")]
    State {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl GatewayError {
    /// Worth retrying: everything but a bad desired gateway.
    pub fn is_transient(&self) -> bool {
        !matches!(self, GatewayError::Invalid { .. })
    }
}
