//! Platform gateways (WireGuard endpoints into a platform subnet) and their
//! peers: where a gateway runs, its key pair and tunnel network, and the
//! peers' public keys and tunnel addresses.
//!
//! The gateway's private key is stored because its node receives it in every
//! desired state. A peer's private key, when the controller generates it, is
//! never stored: the API returns it once (see `api::peers`).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use crate::store::sql::{params, Connection, OptionalExtension};
use measurelab_api::http::{GatewayState, PlatformGatewaySpec, PlatformGatewayStatus};

use super::codec::new_id;
use super::error::StoreError;
use super::registry::Registry;
use super::resources::{insert_tenant_event, TxContext};
use crate::{placement, validation, wg_keys};

/// A platform's gateway row.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct GatewayRow {
    pub platform_id: String,
    pub node_id: String,
    pub listen_port: u16,
    /// Base64; goes to the gateway's node only.
    pub private_key: String,
    pub public_key: String,
    /// The platform's /24 of the tunnel pool.
    pub tunnel_network: String,
    /// What the controller last heard of it (see [`GatewayState`]).
    pub state: GatewayState,
    /// Why, unless `Ready`.
    pub state_message: String,
}

// By hand: a row printed in a log or panic must not carry the private key.
impl fmt::Debug for GatewayRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayRow")
            .field("platform_id", &self.platform_id)
            .field("node_id", &self.node_id)
            .field("listen_port", &self.listen_port)
            .field("public_key", &self.public_key)
            .field("tunnel_network", &self.tunnel_network)
            .field("state", &self.state)
            .field("state_message", &self.state_message)
            .finish_non_exhaustive()
    }
}

impl GatewayRow {
    /// `public_address:listen_port`; `None` while the node reports no
    /// public address (it stopped reporting one after the gateway was set).
    pub fn endpoint(&self, registry: &Registry) -> Option<String> {
        registry
            .by_id(&self.node_id)
            .map(|n| n.capabilities.public_address.clone())
            .filter(|a| !a.is_empty())
            .map(|address| format!("{address}:{}", self.listen_port))
    }

    /// The gateway's own tunnel address, CIDR: the network's first host.
    pub fn tunnel_address(&self) -> Result<String, StoreError> {
        let (network, prefix) = placement::parse_cidr(&self.tunnel_network).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "platform_gateways.tunnel_network {:?}",
                self.tunnel_network
            ))
        })?;
        Ok(format!("{}/{prefix}", first_host(network)))
    }

    pub fn spec(&self, registry: &Registry) -> PlatformGatewaySpec {
        PlatformGatewaySpec {
            node: registry
                .by_id(&self.node_id)
                .map(|n| n.name.clone())
                .unwrap_or_else(|| self.node_id.clone()),
            listen_port: u32::from(self.listen_port),
        }
    }

    pub fn status(&self) -> PlatformGatewayStatus {
        PlatformGatewayStatus {
            state: self.state,
            message: self.state_message.clone(),
        }
    }
}

/// The first host of a network: the gateway's address in the platform subnet
/// and in its tunnel network (placement gives VMs and peers `.2` onwards).
pub(crate) fn first_host(network: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(network) + 1)
}

/// What a gateway is set up for: the platform as the caller already loaded it.
pub(crate) struct PlatformRef<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub tenant_id: &'a str,
    pub node_ids: &'a [String],
}

const SELECT: &str = "SELECT platform_id, node_id, listen_port, private_key, public_key,
                             tunnel_network, state, state_message FROM platform_gateways";

fn row_to_gateway(row: &crate::store::sql::Row<'_>) -> crate::store::sql::Result<GatewayRow> {
    Ok(GatewayRow {
        platform_id: row.get(0)?,
        node_id: row.get(1)?,
        listen_port: row.get::<i64>(2)? as u16,
        private_key: row.get(3)?,
        public_key: row.get(4)?,
        tunnel_network: row.get(5)?,
        // An unknown spelling can only come from a newer controller sharing
        // the database; say nothing is known rather than fail the read.
        state: GatewayState::parse(&row.get::<String>(6)?).unwrap_or(GatewayState::Pending),
        state_message: row.get(7)?,
    })
}

pub(crate) fn of_platform(
    conn: &Connection,
    platform_id: &str,
) -> Result<Option<GatewayRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("{SELECT} WHERE platform_id = ?1"))?
        .query_row([platform_id], row_to_gateway)
        .optional()?)
}

/// Gateways node `node_id` runs.
pub(crate) fn of_node(conn: &Connection, node_id: &str) -> Result<Vec<GatewayRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("{SELECT} WHERE node_id = ?1 ORDER BY platform_id"))?
        .query_map([node_id], row_to_gateway)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Names of the platforms whose gateway node `node_id` runs.
pub(crate) fn platforms_on_node(
    conn: &Connection,
    node_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT p.name FROM platform_gateways g JOIN platforms p ON p.id = g.platform_id
             WHERE g.node_id = ?1 ORDER BY 1",
        )?
        .query_map([node_id], |r| r.get::<String>(0))?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Node `node_name` (`node_id`) was revoked: its gateways serve nobody the
/// controller can vouch for, so each is marked `failed` saying so, with an
/// event for its platform's tenant. The rows stay (keys, tunnel network,
/// peers), so moving the gateway or approving the node brings it back.
pub(crate) fn node_revoked(
    tx: &Connection,
    now: time::OffsetDateTime,
    node_id: &str,
    node_name: &str,
) -> Result<(), StoreError> {
    let platforms: Vec<(String, String, String)> = tx
        .prepare_cached(
            "SELECT p.id, p.name, p.tenant_id FROM platform_gateways g
             JOIN platforms p ON p.id = g.platform_id
             WHERE g.node_id = ?1 ORDER BY p.name",
        )?
        .query_map([node_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let message = format!(
        "node {node_name} was revoked; move the gateway (`gateway.node`) or approve the node's next registration"
    );
    for (platform_id, platform_name, tenant_id) in platforms {
        tx.prepare_cached(
            "UPDATE platform_gateways SET state = ?2, state_message = ?3 WHERE platform_id = ?1",
        )?
        .execute(params![platform_id, GatewayState::Failed.as_str(), message])?;
        insert_tenant_event(
            tx,
            now,
            Some(&tenant_id),
            "GatewayFailed",
            "platform",
            &platform_id,
            &format!("the gateway of platform {platform_name} is down: {message}"),
        )?;
    }
    Ok(())
}

/// The longest `message` of a reported gateway state that is kept.
pub(crate) const MAX_STATE_MESSAGE: usize = 1024;

/// Apply what node `node_id` reports of platform `platform_id`'s gateway;
/// `Err(reason)` (naming the field) refuses the item and changes nothing.
/// A change of state is an event for the platform's tenant.
pub(crate) fn apply_report(
    cx: &mut TxContext<'_>,
    node_id: &str,
    index: usize,
    report: &measurelab_api::node_v1::GatewayStatus,
) -> Result<Result<(), String>, StoreError> {
    let field = |name: &str| format!("gateways[{index}].{name}");
    let Some(gateway) = of_platform(cx.tx, &report.platform_id)?.filter(|g| g.node_id == node_id)
    else {
        return Ok(Err(format!(
            "{}: this node runs no gateway of that platform",
            field("platform_id")
        )));
    };
    let Some(state) = GatewayState::parse(&report.state) else {
        return Ok(Err(format!(
            "{}: {:?} is not one of pending, ready, failed",
            field("state"),
            report.state
        )));
    };
    let message: String = match state {
        GatewayState::Ready => String::new(),
        _ => report.message.chars().take(MAX_STATE_MESSAGE).collect(),
    };
    if (gateway.state, gateway.state_message.as_str()) == (state, message.as_str()) {
        return Ok(Ok(()));
    }
    cx.tx
        .prepare_cached(
            "UPDATE platform_gateways SET state = ?2, state_message = ?3 WHERE platform_id = ?1",
        )?
        .execute(params![gateway.platform_id, state.as_str(), message])?;
    if gateway.state != state {
        let (name, tenant_id): (String, String) = cx.tx.query_row(
            "SELECT name, tenant_id FROM platforms WHERE id = ?1",
            [&gateway.platform_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (reason, text) = match state {
            GatewayState::Ready => (
                "GatewayReady",
                format!(
                    "the gateway of platform {name} is up and listens on port {}",
                    gateway.listen_port
                ),
            ),
            GatewayState::Failed => (
                "GatewayFailed",
                format!("the gateway of platform {name} is down: {message}"),
            ),
            GatewayState::Pending => (
                "GatewayPending",
                format!("the gateway of platform {name} is being set up: {message}"),
            ),
        };
        cx.event(
            Some(&tenant_id),
            reason,
            "platform",
            &gateway.platform_id,
            text,
        )?;
    }
    Ok(Ok(()))
}

/// Where `spec` puts the gateway: the node's id, after every check that
/// names a field of `gateway`.
fn check_spec(
    cx: &TxContext<'_>,
    platform: &PlatformRef<'_>,
    spec: &PlatformGatewaySpec,
) -> Result<(String, u16), StoreError> {
    let port = u16::try_from(spec.listen_port)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| {
            StoreError::invalid(
                "gateway.listen_port",
                format!("{} is out of range 1..=65535", spec.listen_port),
            )
        })?;
    let node = cx.registry.by_id_or_name(&spec.node).ok_or_else(|| {
        StoreError::invalid(
            "gateway.node",
            format!("no node named {:?} is registered", spec.node),
        )
    })?;
    if !platform.node_ids.contains(&node.id) {
        return Err(StoreError::invalid(
            "gateway.node",
            format!(
                "node {} is not one of platform {}'s nodes; the gateway needs the platform's VLAN, so add the node to `nodes`",
                node.name, platform.name
            ),
        ));
    }
    if node.capabilities.public_address.is_empty() {
        return Err(StoreError::invalid(
            "gateway.node",
            format!(
                "node {} reports no public_address (its agent runs without --public-address), so peers could not reach a gateway there",
                node.name
            ),
        ));
    }
    let taken: Option<String> = cx
        .tx
        .query_row(
            "SELECT platform_id FROM platform_gateways
             WHERE node_id = ?1 AND listen_port = ?2 AND platform_id != ?3",
            params![node.id, port, platform.id],
            |r| r.get(0),
        )
        .optional()?;
    if taken.is_some() {
        // Another tenant's platform may hold it: say so without naming it.
        return Err(StoreError::conflict(
            Some("gateway.listen_port"),
            format!(
                "gateway.listen_port: port {port} on node {} is already used by another platform's gateway; choose another port",
                node.name
            ),
        ));
    }
    Ok((node.id.clone(), port))
}

/// Add the platform's gateway, or move it (node, port) in place: the key
/// pair, the tunnel network and the peers stay, so peers only update their
/// `Endpoint`. Returns the row as it is now.
pub(crate) fn set(
    cx: &mut TxContext<'_>,
    platform: &PlatformRef<'_>,
    spec: &PlatformGatewaySpec,
) -> Result<GatewayRow, StoreError> {
    let (node_id, listen_port) = check_spec(cx, platform, spec)?;
    let node_name = spec.node.clone();
    match of_platform(cx.tx, platform.id)? {
        Some(current) if current.node_id == node_id && current.listen_port == listen_port => {
            Ok(current)
        }
        Some(mut current) => {
            // Whatever the old node reported says nothing of the new place.
            let waiting = format!("waiting for node {node_name} to report it");
            cx.tx
                .prepare_cached(
                    "UPDATE platform_gateways SET node_id = ?2, listen_port = ?3, state = ?4,
                                                  state_message = ?5
                     WHERE platform_id = ?1",
                )?
                .execute(params![
                    platform.id,
                    node_id,
                    listen_port,
                    GatewayState::Pending.as_str(),
                    waiting
                ])?;
            cx.touch_node(&current.node_id)?;
            cx.touch_node(&node_id)?;
            current.node_id = node_id;
            current.listen_port = listen_port;
            current.state = GatewayState::Pending;
            current.state_message = waiting;
            cx.event(
                Some(platform.tenant_id),
                "GatewayMoved",
                "platform",
                platform.id,
                format!(
                    "the gateway of platform {} now listens on node {node_name} port {listen_port}; its peers keep their keys and addresses",
                    platform.name
                ),
            )?;
            Ok(current)
        }
        None => {
            let used: HashSet<String> = cx
                .tx
                .prepare_cached("SELECT tunnel_network FROM platform_gateways")?
                .query_map([], |r| r.get::<String>(0))?
                .collect::<Result<_, _>>()?;
            let tunnel_network = placement::tunnel_network(cx.pools, &used)?;
            let keys = wg_keys::generate()?;
            let row = GatewayRow {
                platform_id: platform.id.to_string(),
                node_id,
                listen_port,
                private_key: keys.private_key,
                public_key: keys.public_key,
                tunnel_network,
                state: GatewayState::Pending,
                state_message: format!("waiting for node {node_name} to report it"),
            };
            cx.tx
                .prepare_cached(
                    "INSERT INTO platform_gateways (platform_id, node_id, listen_port, private_key,
                                                    public_key, tunnel_network, state,
                                                    state_message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    row.platform_id,
                    row.node_id,
                    row.listen_port,
                    row.private_key,
                    row.public_key,
                    row.tunnel_network,
                    row.state.as_str(),
                    row.state_message
                ])?;
            cx.touch_node(&row.node_id)?;
            cx.event(
                Some(platform.tenant_id),
                "GatewayAdded",
                "platform",
                platform.id,
                format!(
                    "platform {} has a WireGuard gateway on node {node_name} port {listen_port}, public key {}, tunnel network {}",
                    platform.name, row.public_key, row.tunnel_network
                ),
            )?;
            Ok(row)
        }
    }
}

/// Remove the platform's gateway; refused while it has peers, whose
/// configurations would silently stop working.
pub(crate) fn remove(
    cx: &mut TxContext<'_>,
    platform: &PlatformRef<'_>,
) -> Result<bool, StoreError> {
    let Some(current) = of_platform(cx.tx, platform.id)? else {
        return Ok(false);
    };
    let peers = peers(cx.tx, platform.id)?;
    if !peers.is_empty() {
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        return Err(StoreError::conflict(
            Some("gateway"),
            format!(
                "gateway: platform {} still has peers ({}); delete them first",
                platform.name,
                names.join(", ")
            ),
        ));
    }
    cx.tx
        .prepare_cached("DELETE FROM platform_gateways WHERE platform_id = ?1")?
        .execute([platform.id])?;
    cx.touch_node(&current.node_id)?;
    cx.event(
        Some(platform.tenant_id),
        "GatewayRemoved",
        "platform",
        platform.id,
        format!("platform {} has no gateway any more", platform.name),
    )?;
    Ok(true)
}

/// A peer row. Its private key, if the controller generated one, is not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerRow {
    pub id: String,
    pub platform_id: String,
    pub name: String,
    pub public_key: String,
    pub tunnel_address: String,
    pub created_at: String,
}

const SELECT_PEER: &str =
    "SELECT id, platform_id, name, public_key, tunnel_address, created_at FROM platform_peers";

fn row_to_peer(row: &crate::store::sql::Row<'_>) -> crate::store::sql::Result<PeerRow> {
    Ok(PeerRow {
        id: row.get(0)?,
        platform_id: row.get(1)?,
        name: row.get(2)?,
        public_key: row.get(3)?,
        tunnel_address: row.get(4)?,
        created_at: row.get(5)?,
    })
}

/// Peers of a platform, by name.
pub(crate) fn peers(conn: &Connection, platform_id: &str) -> Result<Vec<PeerRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "{SELECT_PEER} WHERE platform_id = ?1 ORDER BY name"
        ))?
        .query_map([platform_id], row_to_peer)?
        .collect::<Result<Vec<_>, _>>()?)
}

/// A peer of the platform by id or name.
pub(crate) fn peer(conn: &Connection, platform_id: &str, key: &str) -> Result<PeerRow, StoreError> {
    conn.prepare_cached(&format!(
        "{SELECT_PEER} WHERE platform_id = ?1 AND (id = ?2 OR name = ?2)"
    ))?
    .query_row(params![platform_id, key], row_to_peer)
    .optional()?
    .ok_or_else(|| StoreError::NotFound {
        kind: "peer",
        id: key.to_string(),
    })
}

/// A new peer of the platform's gateway with `public_key` (already checked).
pub(crate) fn add_peer(
    cx: &mut TxContext<'_>,
    platform: &PlatformRef<'_>,
    name: &str,
    public_key: &str,
) -> Result<(GatewayRow, PeerRow), StoreError> {
    validation::dns_label("name", name)?;
    let gateway = of_platform(cx.tx, platform.id)?.ok_or_else(|| {
        StoreError::conflict(
            None,
            format!(
                "platform {} has no gateway; give it a `gateway` block (node, listen_port) before adding peers",
                platform.name
            ),
        )
    })?;
    let existing = peers(cx.tx, platform.id)?;
    if existing.iter().any(|p| p.name == name) {
        return Err(StoreError::conflict(
            Some("name"),
            format!(
                "name: platform {} already has a peer named {name:?}",
                platform.name
            ),
        ));
    }
    if let Some(twin) = existing.iter().find(|p| p.public_key == public_key) {
        return Err(StoreError::conflict(
            Some("public_key"),
            format!(
                "public_key: peer {} of platform {} already has this key; WireGuard tells peers apart by key",
                twin.name, platform.name
            ),
        ));
    }
    let used: HashSet<String> = existing
        .iter()
        .map(|p| p.tunnel_address.trim_end_matches("/32").to_string())
        .collect();
    let address = placement::address(platform.name, &gateway.tunnel_network, &used)?;
    let row = PeerRow {
        id: new_id(),
        platform_id: platform.id.to_string(),
        name: name.to_string(),
        public_key: public_key.to_string(),
        tunnel_address: format!("{address}/32"),
        created_at: cx.now_text(),
    };
    cx.tx
        .prepare_cached(
            "INSERT INTO platform_peers (id, platform_id, name, public_key, tunnel_address, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            row.id,
            row.platform_id,
            row.name,
            row.public_key,
            row.tunnel_address,
            row.created_at
        ])?;
    cx.touch_node(&gateway.node_id)?;
    cx.event(
        Some(platform.tenant_id),
        "PeerAdded",
        "platform",
        platform.id,
        format!(
            "peer {} (public key {}, tunnel address {}) may reach platform {}",
            row.name, row.public_key, row.tunnel_address, platform.name
        ),
    )?;
    Ok((gateway, row))
}

/// Remove a peer: its node's next desired state lacks it, which cuts it off.
pub(crate) fn remove_peer(
    cx: &mut TxContext<'_>,
    platform: &PlatformRef<'_>,
    key: &str,
) -> Result<(GatewayRow, PeerRow), StoreError> {
    let row = peer(cx.tx, platform.id, key)?;
    let gateway = of_platform(cx.tx, platform.id)?.ok_or_else(|| {
        StoreError::Corrupt(format!("peer {} of a platform without a gateway", row.id))
    })?;
    cx.tx
        .prepare_cached("DELETE FROM platform_peers WHERE id = ?1")?
        .execute([&row.id])?;
    cx.touch_node(&gateway.node_id)?;
    cx.event(
        Some(platform.tenant_id),
        "PeerRemoved",
        "platform",
        platform.id,
        format!(
            "peer {} ({}) of platform {} removed",
            row.name, row.tunnel_address, platform.name
        ),
    )?;
    Ok((gateway, row))
}
