//! Nodes: what registration, heartbeats and log shipping carry, the node
//! secrets, and the SQL of the node table, its logs and the event journal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::store::sql::{Connection, Row};
use measurelab_api::http::{self, Capabilities, NodeStatus, Resources};

use super::codec::{from_json, parse_time};
use super::error::StoreError;
use super::registry::{NodeEntry, Registry};
use crate::placement::overcommit::Overcommit;

/// Log lines kept per node; older lines are deleted as new ones arrive.
pub const LOG_LINES_PER_NODE: i64 = 10_000;

pub(crate) fn status_text(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Online => "online",
        NodeStatus::Offline => "offline",
        // Revocation is its own column (`revoked_at`); the status column
        // keeps liveness, which a revoked node no longer renews.
        NodeStatus::Revoked => "offline",
    }
}

/// A registration, already validated by the gRPC layer.
#[derive(Debug, Clone)]
pub(crate) struct RegisterInput {
    pub name: String,
    /// The id the agent persisted, if any.
    pub node_id: Option<String>,
    pub agent_version: String,
    pub capabilities: Capabilities,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub management_address: String,
    /// The secret of the agent's previous registration; empty if it has none.
    pub node_secret: String,
    /// How the join token checked out.
    pub join: JoinCredential,
    /// Where the request came from, for the operator's pending list.
    pub peer_address: String,
}

/// The join token of a registration.
#[derive(Debug, Clone)]
pub(crate) enum JoinCredential {
    /// The data directory's join token (checked by the gRPC layer).
    Default,
    /// A token made through the API (`mlj_<id>_<secret>`); the store checks
    /// and consumes it in the registration's own transaction.
    Issued { id: String, secret: String },
}

/// Result of a registration.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub node_id: String,
    pub node_secret: String,
}

/// A heartbeat, already validated and authenticated.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatInput {
    pub node_id: String,
    pub node_secret: String,
    pub sequence: u64,
    pub agent_version: String,
    pub capabilities: Capabilities,
    pub resources: Resources,
    pub observed_generation: u64,
}

/// A batch of shipped log lines.
#[derive(Debug, Clone)]
pub(crate) struct ShipLogsInput {
    pub node_id: String,
    pub node_secret: String,
    pub lines: Vec<http::LogLine>,
}

/// An event to append to the journal.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub reason: &'static str,
    pub object_kind: &'static str,
    pub object_id: String,
    pub message: String,
}

/// The columns [`node_from_row`] reads, in its order.
const NODE_COLUMNS: &str = "SELECT id, name, secret, status, registered_at, last_heartbeat,
        agent_version, management_address, capabilities, resources, labels, last_sequence,
        observed_generation, desired_generation, reported_labels, revoked_at,
        cpu_overcommit, memory_overcommit
    FROM nodes";

/// A `nodes` row ([`NODE_COLUMNS`]) as the registry holds it, last heard at
/// `contact`; and the digest to store when the row still holds a secret in
/// clear (databases written before secrets were hashed).
fn node_from_row(
    row: &Row<'_>,
    contact: Instant,
) -> Result<(NodeEntry, Option<String>), StoreError> {
    let stored_secret: String = row.get(2)?;
    let (secret_digest, rehashed) = if stored_secret.starts_with(SECRET_DIGEST_PREFIX) {
        (stored_secret, None)
    } else {
        let digest = secret_digest(&stored_secret);
        (digest.clone(), Some(digest))
    };
    let status: String = row.get(3)?;
    let registered_at: String = row.get(4)?;
    let last_heartbeat: Option<String> = row.get(5)?;
    let capabilities: String = row.get(8)?;
    let resources: String = row.get(9)?;
    let labels: String = row.get(10)?;
    let reported_labels: String = row.get(14)?;
    let revoked_at: Option<String> = row.get(15)?;
    let entry = NodeEntry {
        id: row.get(0)?,
        name: row.get(1)?,
        secret_digest,
        status: match status.as_str() {
            "online" => NodeStatus::Online,
            "offline" => NodeStatus::Offline,
            other => return Err(StoreError::Corrupt(format!("nodes.status {other:?}"))),
        },
        registered_at: parse_time(&registered_at)?,
        last_heartbeat: last_heartbeat.as_deref().map(parse_time).transpose()?,
        last_contact: contact,
        agent_version: row.get(6)?,
        management_address: row.get(7)?,
        capabilities: from_json("nodes.capabilities", &capabilities)?,
        resources: from_json("nodes.resources", &resources)?,
        labels: from_json("nodes.labels", &labels)?,
        overcommit: Overcommit::from_stored(row.get(16)?, row.get(17)?),
        reported_labels: from_json("nodes.reported_labels", &reported_labels)?,
        revoked_at: revoked_at.as_deref().map(parse_time).transpose()?,
        // Filled in by the callers, from `node_certificates`.
        revoked_certificates: Default::default(),
        last_sequence: row.get::<i64>(11)? as u64,
        observed_generation: row.get::<i64>(12)? as u64,
        desired_generation: row.get::<i64>(13)? as u64,
    };
    Ok((entry, rehashed))
}

pub(crate) fn load_registry(conn: &Connection, startup: Instant) -> Result<Registry, StoreError> {
    let mut registry = Registry::default();
    let mut statement = conn.prepare(NODE_COLUMNS)?;
    let mut rows = statement.query([])?;
    let mut plaintext = Vec::new();
    let mut revoked = revoked_certificates(conn, None)?;
    while let Some(row) = rows.next()? {
        let (mut entry, rehashed) = node_from_row(&row, startup)?;
        entry.revoked_certificates = revoked.remove(&entry.id).unwrap_or_default();
        if let Some(digest) = rehashed {
            plaintext.push((entry.id.clone(), digest));
        }
        registry.upsert(entry);
    }
    for (id, digest) in plaintext {
        conn.execute(
            "UPDATE nodes SET secret = ?2 WHERE id = ?1",
            crate::store::sql::params![id, digest],
        )?;
    }
    Ok(registry)
}

/// One node as the database holds it now (another replica may have written
/// it), last heard at `contact`; `None` once it is deleted.
pub(crate) fn load_node(
    conn: &Connection,
    id: &str,
    contact: Instant,
) -> Result<Option<NodeEntry>, StoreError> {
    let mut statement = conn.prepare_cached(&format!("{NODE_COLUMNS} WHERE id = ?1"))?;
    let mut rows = statement.query([id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut entry = node_from_row(&row, contact)?.0;
    entry.revoked_certificates = revoked_certificates(conn, Some(id))?
        .remove(id)
        .unwrap_or_default();
    Ok(Some(entry))
}

/// The revoked serials of `node` (of every node with `None`), by node id.
/// Expired ones are left out: the TLS handshake refuses them already.
fn revoked_certificates(
    conn: &Connection,
    node: Option<&str>,
) -> Result<HashMap<String, BTreeSet<String>>, StoreError> {
    const REVOKED: &str =
        "SELECT node_id, serial, not_after FROM node_certificates WHERE revoked_at IS NOT NULL";
    let mut statement;
    let mut rows = match node {
        Some(id) => {
            statement = conn.prepare_cached(&format!("{REVOKED} AND node_id = ?1"))?;
            statement.query([id])?
        }
        None => {
            statement = conn.prepare_cached(REVOKED)?;
            statement.query([])?
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let mut revoked: HashMap<String, BTreeSet<String>> = HashMap::new();
    while let Some(row) = rows.next()? {
        let not_after: String = row.get(2)?;
        if parse_time(&not_after)? > now {
            revoked.entry(row.get(0)?).or_default().insert(row.get(1)?);
        }
    }
    Ok(revoked)
}

/// Constant-time comparison, so response timing does not leak how many
/// leading characters of a guessed secret were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the store keeps of a node secret: a copy of the database (a backup,
/// a support bundle) must not let anyone heartbeat as the node. The secret
/// is 256 random bits, so a plain SHA-256 needs no salt or stretching.
pub(crate) fn secret_digest(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    // Every authenticated heartbeat computes this: one allocation, not one
    // per byte.
    let digest = Sha256::digest(secret.as_bytes());
    let mut digits = [0u8; 64];
    // Cannot fail: 32 digest bytes fill exactly 64 digits.
    let _ = hex::encode_to_slice(digest, &mut digits);
    let mut text = String::with_capacity(SECRET_DIGEST_PREFIX.len() + digits.len());
    text.push_str(SECRET_DIGEST_PREFIX);
    text.extend(digits.iter().map(|&digit| char::from(digit)));
    text
}

const SECRET_DIGEST_PREFIX: &str = "sha256:";

pub(crate) fn check_secret(
    entry: Option<&NodeEntry>,
    node_id: &str,
    secret: &str,
) -> Result<(), StoreError> {
    match entry {
        None => Err(StoreError::UnknownNode(node_id.to_string())),
        Some(entry) if entry.revoked_at.is_some() => Err(StoreError::Revoked(entry.name.clone())),
        Some(entry)
            if constant_time_eq(
                entry.secret_digest.as_bytes(),
                secret_digest(secret).as_bytes(),
            ) =>
        {
            Ok(())
        }
        Some(_) => Err(StoreError::WrongSecret(node_id.to_string())),
    }
}

/// The newest `limit` lines of a node, oldest first.
pub(crate) fn logs(
    conn: &Connection,
    node_id: &str,
    limit: u32,
) -> Result<Vec<http::LogLine>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT time, level, target, message FROM
           (SELECT id, time, level, target, message FROM node_logs
            WHERE node_id = ?1 ORDER BY id DESC LIMIT ?2) AS newest
         ORDER BY id ASC",
    )?;
    let lines = statement
        .query_map(crate::store::sql::params![node_id, limit], |row| {
            Ok(http::LogLine {
                time: row.get(0)?,
                level: row.get(1)?,
                target: row.get(2)?,
                message: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines)
}
