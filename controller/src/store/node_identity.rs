//! Who may be a node. A registration under a name (or id) the controller
//! already knows needs that node's current secret, or an operator's approval
//! of the refused attempt; join tokens made through the API can be per-node,
//! single-use and expiring; an operator can revoke and delete a node.
//!
//! Everything that changes state runs on the writer thread inside its batch
//! (see [`super::writer`]), so checking and consuming a single-use token, or
//! checking a node's secret and rotating it, happen in one transaction with
//! no other writer in between.

use crate::store::sql::{params, Connection, OptionalExtension, Transaction};
use measurelab_api::http::{self, JoinTokenState};
use time::OffsetDateTime;

use super::batch::{
    in_savepoint, insert_event, new_secret, write_node, Overlay, PendingReply, Reply,
};
use super::codec::{parse_time, rfc3339};
use super::error::StoreError;
use super::gateways;
use super::nodes::{
    constant_time_eq, secret_digest, JoinCredential, NewEvent, RegisterInput, Registered,
};
use super::registry::NodeEntry;
use crate::placement::overcommit::Overcommit;

/// Prefix of join tokens made through the API: `mlj_<id>_<secret>`. The
/// data directory's join token is 64 hex digits, so the two never clash.
pub(crate) const ISSUED_JOIN_TOKEN_PREFIX: &str = "mlj_";

/// How many VM or platform names a refused delete lists before "and N more".
const NAMES_IN_CONFLICT: usize = 10;

/// Operator commands, run by the writer.
pub(crate) enum IdentityCommand {
    Approve {
        id_or_name: String,
        reply: Reply<http::RegistrationRequest>,
    },
    Revoke {
        id_or_name: String,
        reply: Reply<http::Node>,
    },
    Delete {
        id_or_name: String,
        reply: Reply<http::Node>,
    },
    /// Remember a certificate just issued to a node, so it can be revoked.
    RecordCertificate {
        certificate: IssuedCertificate,
        reply: Reply<()>,
    },
    /// Revoke every unexpired certificate of the node; the node stays.
    RevokeCertificates {
        id_or_name: String,
        reply: Reply<http::Node>,
    },
    CreateJoinToken {
        token: NewJoinToken,
        reply: Reply<http::JoinTokenCreated>,
    },
    RevokeJoinToken {
        id: String,
        reply: Reply<http::JoinToken>,
    },
}

/// A node certificate the controller signed.
#[derive(Debug, Clone)]
pub(crate) struct IssuedCertificate {
    pub node_id: String,
    /// Lower-case hex, as [`crate::tls::cert_serial`] reads it back.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A join token to create, already validated by the API layer.
#[derive(Debug, Clone)]
pub(crate) struct NewJoinToken {
    pub description: String,
    pub node_name: Option<String>,
    pub single_use: bool,
    pub expires_at: Option<OffsetDateTime>,
}

/// Split `mlj_<id>_<secret>`; `None` for anything else (the default token).
pub(crate) fn parse_issued_join_token(token: &str) -> Option<JoinCredential> {
    let rest = token.strip_prefix(ISSUED_JOIN_TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    Some(JoinCredential::Issued {
        id: id.to_string(),
        secret: secret.to_string(),
    })
}

/// Why a registration under an existing node was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NoSecret,
    WrongSecret,
    Revoked,
}

impl Refusal {
    fn code(self) -> &'static str {
        match self {
            Refusal::NoSecret => "no_secret",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::Revoked => "revoked",
        }
    }

    fn message(self, name: &str) -> String {
        let approve = format!(
            "an operator can let this registration through with `measurelab node approve {name}` \
             (POST /v1/nodes/{name}/approve)"
        );
        match self {
            Refusal::NoSecret => format!(
                "name: node {name:?} is already registered; registering under its name needs the \
                 node's current secret (node_secret, from the agent's identity.json), which this \
                 request does not carry; {approve}"
            ),
            Refusal::WrongSecret => format!(
                "node_secret: does not match the current secret of node {name:?}; {approve}"
            ),
            Refusal::Revoked => {
                format!("name: node {name:?} was revoked by an operator; {approve}")
            }
        }
    }
}

/// Register a node. The outer error undoes the command; the inner one is a
/// refusal whose record (the pending request) is kept.
pub(super) fn register(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    input: RegisterInput,
    now: OffsetDateTime,
    instant: std::time::Instant,
) -> Result<Result<Registered, StoreError>, StoreError> {
    // A used-up, expired or revoked token still lets a node that proves its
    // secret back in: it is a member already, and a restart must not need a
    // new token. It admits nobody else.
    let (issued_token, token_lapsed) = match &input.join {
        JoinCredential::Default => (None, None),
        JoinCredential::Issued { id, secret } => (
            Some(id.clone()),
            check_join_token(tx, id, secret, &input.name, now)?,
        ),
    };
    let by_id = input.node_id.as_deref().and_then(|id| overlay.get(id));
    let name_owner = overlay.id_for_name(&input.name);
    // Same persisted id, or the same name: the agent restarted or lost its
    // state; keep the row (and its history) instead of duplicating it.
    let existing = match (by_id, name_owner) {
        (Some(node), Some(owner)) if owner != node.id => {
            return Err(StoreError::NameTaken {
                name: input.name,
                owner,
            })
        }
        (Some(node), _) => Some(node),
        (None, Some(owner)) => overlay.get(&owner),
        (None, None) => None,
    };
    let secret = new_secret();
    let (node, reason, message) = match existing {
        Some(mut node) => {
            let proven = !input.node_secret.is_empty()
                && constant_time_eq(
                    node.secret_digest.as_bytes(),
                    secret_digest(&input.node_secret).as_bytes(),
                );
            let refusal = if node.revoked_at.is_some() {
                Some(Refusal::Revoked)
            } else if proven {
                None
            } else if input.node_secret.is_empty() {
                Some(Refusal::NoSecret)
            } else {
                Some(Refusal::WrongSecret)
            };
            let mut how = String::new();
            // A revoked node that proves its secret may ask for approval
            // whatever its token; anyone else needs a token that still works.
            let authentic_revoked = proven && matches!(refusal, Some(Refusal::Revoked));
            if let (Some(lapsed), Some(_)) = (&token_lapsed, refusal) {
                if !authentic_revoked {
                    return Err(StoreError::JoinTokenRefused(lapsed.clone()));
                }
            }
            if let Some(refusal) = refusal {
                if !take_approval(tx, &input.name)? {
                    record_refusal(tx, &node, &input, refusal, now)?;
                    return Ok(Err(StoreError::RegistrationRefused(
                        refusal.message(&input.name),
                    )));
                }
                how = format!(" (approved by an operator after {})", refusal.code());
            }
            let mut message = format!("node {} re-registered (id {}){how}", input.name, node.id);
            if node.name != input.name {
                message = format!(
                    "node {} re-registered under the new name {} (id {}){how}",
                    node.name, input.name, node.id
                );
            }
            node.name = input.name;
            node.secret_digest = secret_digest(&secret);
            node.revoked_at = None;
            node.status = http::NodeStatus::Online;
            node.last_contact = instant;
            node.agent_version = input.agent_version;
            node.management_address = input.management_address;
            node.capabilities = input.capabilities;
            node.resources = input.resources;
            // The operator's labels stay as they are: an agent must not move
            // itself into another node selection by changing its flags.
            node.reported_labels = input.labels;
            // A new agent process restarts its sequence numbers.
            node.last_sequence = 0;
            (node, "NodeReregistered", message)
        }
        None => {
            if let Some(lapsed) = token_lapsed {
                return Err(StoreError::JoinTokenRefused(lapsed));
            }
            let id = input
                .node_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let message = format!("node {} registered (id {id})", input.name);
            let node = NodeEntry {
                id,
                name: input.name,
                secret_digest: secret_digest(&secret),
                status: http::NodeStatus::Online,
                registered_at: now,
                last_heartbeat: None,
                last_contact: instant,
                agent_version: input.agent_version,
                management_address: input.management_address,
                capabilities: input.capabilities,
                resources: input.resources,
                // Seeds only: labs and examples select freshly joined nodes
                // by the labels they start with. The operator owns them from
                // here on (PATCH /v1/nodes).
                labels: input.labels.clone(),
                reported_labels: input.labels,
                overcommit: Overcommit::default(),
                revoked_at: None,
                revoked_certificates: Default::default(),
                last_sequence: 0,
                observed_generation: 0,
                desired_generation: 0,
            };
            (node, "NodeRegistered", message)
        }
    };
    // A lapsed token that let a proven node back in was not used to join.
    if let (Some(id), None) = (issued_token, &token_lapsed) {
        tx.prepare_cached(
            "UPDATE join_tokens SET last_used_at = ?2, last_used_by = ?3 WHERE id = ?1",
        )?
        .execute(params![id, rfc3339(now), node.id])?;
    }
    write_node(tx, &node)?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason,
            object_kind: "node",
            object_id: node.id.clone(),
            message,
        },
    )?;
    let registered = Registered {
        node_id: node.id.clone(),
        node_secret: secret,
    };
    overlay.put(node);
    Ok(Ok(registered))
}

/// Refuse unless the API-made token `id` is genuine and made for `name`.
/// Returns why a genuine token no longer admits new registrations (revoked,
/// expired, used up), if it does not.
fn check_join_token(
    tx: &Connection,
    id: &str,
    secret: &str,
    name: &str,
    now: OffsetDateTime,
) -> Result<Option<String>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT secret, node_name, single_use, expires_at, last_used_at, revoked_at
             FROM join_tokens WHERE id = ?1",
        )?
        .query_row([id], |row| {
            Ok((
                row.get::<String>(0)?,
                row.get::<Option<String>>(1)?,
                row.get::<bool>(2)?,
                row.get::<Option<String>>(3)?,
                row.get::<Option<String>>(4)?,
                row.get::<Option<String>>(5)?,
            ))
        })
        .optional()?;
    // Unknown id and wrong secret answer alike: the answer must not tell a
    // guesser which token ids exist.
    let Some((digest, node_name, single_use, expires_at, last_used_at, revoked_at)) = row else {
        return Err(StoreError::JoinTokenRefused("wrong join token".into()));
    };
    if !constant_time_eq(digest.as_bytes(), secret_digest(secret).as_bytes()) {
        return Err(StoreError::JoinTokenRefused("wrong join token".into()));
    }
    if let Some(only) = node_name {
        if only != name {
            return Err(StoreError::RegistrationRefused(format!(
                "join_token: join token {id} only registers node {only:?}, not {name:?}"
            )));
        }
    }
    if revoked_at.is_some() {
        return Ok(Some(format!("join token {id} was revoked")));
    }
    if let Some(expires_at) = expires_at {
        if parse_time(&expires_at)? <= now {
            return Ok(Some(format!("join token {id} expired at {expires_at}")));
        }
    }
    if single_use && last_used_at.is_some() {
        return Ok(Some(format!("single-use join token {id} was already used")));
    }
    Ok(None)
}

/// Whether an operator approved a registration under `name`; an approval
/// lets exactly one registration through.
fn take_approval(tx: &Connection, name: &str) -> Result<bool, StoreError> {
    let removed = tx
        .prepare_cached(
            "DELETE FROM registration_requests WHERE name = ?1 AND approved_at IS NOT NULL",
        )?
        .execute([name])?;
    Ok(removed > 0)
}

/// Keep one row per name with a count, so refused retries cannot grow the
/// database; only the first attempt becomes an event.
fn record_refusal(
    tx: &Connection,
    node: &NodeEntry,
    input: &RegisterInput,
    refusal: Refusal,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM registration_requests WHERE name = ?1)")?
        .query_row([&input.name], |row| row.get(0))?;
    tx.prepare_cached(
        "INSERT INTO registration_requests (name, node_id, reason, attempts, first_attempt_at,
             last_attempt_at, peer_address, management_address, agent_version)
         VALUES (?1, ?2, ?3, 1, ?4, ?4, ?5, ?6, ?7)
         ON CONFLICT (name) DO UPDATE SET
             node_id = excluded.node_id, reason = excluded.reason,
             attempts = registration_requests.attempts + 1, last_attempt_at = excluded.last_attempt_at,
             peer_address = excluded.peer_address,
             management_address = excluded.management_address,
             agent_version = excluded.agent_version",
    )?
    .execute(params![
        input.name,
        node.id,
        refusal.code(),
        rfc3339(now),
        input.peer_address,
        input.management_address,
        input.agent_version,
    ])?;
    if known {
        tracing::warn!(node = %input.name, peer = %input.peer_address, reason = refusal.code(),
            "registration under an existing node's name refused again");
        return Ok(());
    }
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "RegistrationRefused",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!(
                "registration of node {} from {} refused ({}); it waits for an operator's \
                 approval: measurelab node approve {}",
                input.name,
                input.peer_address,
                refusal.code(),
                input.name
            ),
        },
    )?;
    Ok(())
}

/// Run an operator command in a savepoint of its own; the writer sends the
/// reply after the commit.
pub(super) fn apply(
    tx: &mut Transaction<'_>,
    overlay: &mut Overlay<'_>,
    command: IdentityCommand,
    now: OffsetDateTime,
) -> PendingReply {
    match command {
        IdentityCommand::Approve { id_or_name, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, overlay| {
                approve(tx, overlay, &id_or_name, now)
            }),
        ),
        IdentityCommand::Revoke { id_or_name, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, overlay| {
                revoke(tx, overlay, &id_or_name, now)
            }),
        ),
        IdentityCommand::Delete { id_or_name, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, overlay| {
                delete(tx, overlay, &id_or_name, now)
            }),
        ),
        IdentityCommand::RecordCertificate { certificate, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, _| {
                record_certificate(tx, &certificate, now)
            }),
        ),
        IdentityCommand::RevokeCertificates { id_or_name, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, overlay| {
                revoke_certificates(tx, overlay, &id_or_name, now)
            }),
        ),
        IdentityCommand::CreateJoinToken { token, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, _| create_join_token(tx, token, now)),
        ),
        IdentityCommand::RevokeJoinToken { id, reply } => PendingReply::deferred(
            reply,
            in_savepoint(tx, overlay, |tx, _| revoke_join_token(tx, &id, now)),
        ),
    }
}

fn approve(
    tx: &Connection,
    overlay: &Overlay<'_>,
    id_or_name: &str,
    now: OffsetDateTime,
) -> Result<http::RegistrationRequest, StoreError> {
    let node = overlay.get_by_id_or_name(id_or_name);
    // A request is filed under the name it asked for, which is the node's
    // name unless the agent asked to be renamed.
    let name: Option<String> = match &node {
        Some(node) => tx
            .prepare_cached(
                "SELECT name FROM registration_requests WHERE name = ?1 OR node_id = ?2
                 ORDER BY name = ?1 DESC LIMIT 1",
            )?
            .query_row(params![node.name, node.id], |row| row.get(0))
            .optional()?,
        None => Some(id_or_name.to_string()),
    };
    let not_pending = || StoreError::NotFound {
        kind: "pending registration of node",
        id: id_or_name.to_string(),
    };
    let name = name.ok_or_else(not_pending)?;
    let changed = tx
        .prepare_cached(
            "UPDATE registration_requests SET approved_at = COALESCE(approved_at, ?2) WHERE name = ?1",
        )?
        .execute(params![name, rfc3339(now)])?;
    if changed == 0 {
        return Err(not_pending());
    }
    let request = registration_request(tx, &name)?.ok_or_else(not_pending)?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "RegistrationApproved",
            object_kind: "node",
            object_id: request.node_id.clone(),
            message: format!(
                "an operator approved the registration of node {name}; its next attempt \
                 registers with a new secret"
            ),
        },
    )?;
    Ok(request)
}

fn revoke(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    id_or_name: &str,
    now: OffsetDateTime,
) -> Result<http::Node, StoreError> {
    let Some(mut node) = overlay.get_by_id_or_name(id_or_name) else {
        return Err(StoreError::UnknownNode(id_or_name.to_string()));
    };
    if node.revoked_at.is_some() {
        return Ok(node.to_api());
    }
    node.revoked_at = Some(now);
    tx.prepare_cached("UPDATE nodes SET revoked_at = ?2 WHERE id = ?1")?
        .execute(params![node.id, rfc3339(now)])?;
    // Revoking is how an operator cuts off a compromised node, so it is not
    // refused like a delete; the gateways there say they are down instead.
    gateways::node_revoked(tx, now, &node.id, &node.name)?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "NodeRevoked",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!(
                "node {} revoked: its heartbeats and calls are refused until an operator \
                 approves its next registration",
                node.name
            ),
        },
    )?;
    let api = node.to_api();
    overlay.put(node);
    Ok(api)
}

fn record_certificate(
    tx: &Connection,
    certificate: &IssuedCertificate,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO node_certificates (serial, node_id, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        certificate.serial,
        certificate.node_id,
        rfc3339(now),
        rfc3339(certificate.not_after)
    ])?;
    Ok(())
}

/// Revoke what a node's key could still be used for: every certificate
/// issued to it that has not expired (the current one, and an older one
/// still valid after a renewal). The node stays a member; its agent gets a
/// new certificate by registering again with its node secret.
fn revoke_certificates(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    id_or_name: &str,
    now: OffsetDateTime,
) -> Result<http::Node, StoreError> {
    let Some(mut node) = overlay.get_by_id_or_name(id_or_name) else {
        return Err(StoreError::UnknownNode(id_or_name.to_string()));
    };
    let mut statement = tx.prepare_cached(
        "SELECT serial, not_after FROM node_certificates WHERE node_id = ?1 AND revoked_at IS NULL",
    )?;
    let mut rows = statement.query([&node.id])?;
    let mut serials = Vec::new();
    while let Some(row) = rows.next()? {
        let serial: String = row.get(0)?;
        let not_after: String = row.get(1)?;
        if parse_time(&not_after)? > now {
            serials.push(serial);
        }
    }
    drop(rows);
    drop(statement);
    if serials.is_empty() {
        return Err(StoreError::conflict(
            None,
            format!(
                "node {} holds no unexpired certificate this controller issued and has not \
                 revoked; nothing to revoke",
                node.name
            ),
        ));
    }
    for serial in &serials {
        tx.prepare_cached("UPDATE node_certificates SET revoked_at = ?2 WHERE serial = ?1")?
            .execute(params![serial, rfc3339(now)])?;
    }
    node.revoked_certificates.extend(serials.iter().cloned());
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "NodeCertificateRevoked",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!(
                "certificate(s) of node {} revoked (serial {}): calls presenting them are \
                 refused; the node registers again with its secret to get a new one",
                node.name,
                serials.join(", ")
            ),
        },
    )?;
    let api = node.to_api();
    overlay.put(node);
    Ok(api)
}

/// Up to [`NAMES_IN_CONFLICT`] names, then how many more.
fn name_list(names: &[String]) -> String {
    let mut text = names
        .iter()
        .take(NAMES_IN_CONFLICT)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_IN_CONFLICT {
        text.push_str(&format!(" and {} more", names.len() - NAMES_IN_CONFLICT));
    }
    text
}

/// The delete guard: 409 with `message(users)` while anything uses the node.
fn refuse_while_used(
    users: &[String],
    message: impl FnOnce(&[String]) -> String,
) -> Result<(), StoreError> {
    if users.is_empty() {
        return Ok(());
    }
    Err(StoreError::conflict(None, message(users)))
}

fn delete(
    tx: &Connection,
    overlay: &mut Overlay<'_>,
    id_or_name: &str,
    now: OffsetDateTime,
) -> Result<http::Node, StoreError> {
    let Some(node) = overlay.get_by_id_or_name(id_or_name) else {
        return Err(StoreError::UnknownNode(id_or_name.to_string()));
    };
    let names = |sql: &str| -> Result<Vec<String>, StoreError> {
        let mut statement = tx.prepare_cached(sql)?;
        let names = statement
            .query_map([&node.id], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    };
    let vms = names(
        "SELECT p.name || '/' || v.name FROM vms v JOIN platforms p ON p.id = v.platform_id
         WHERE v.node_id = ?1 ORDER BY 1",
    )?;
    refuse_while_used(&vms, |vms| {
        format!(
            "node {} still has {} VM(s) placed on it: {}; delete them first",
            node.name,
            vms.len(),
            name_list(vms)
        )
    })?;
    // Before membership: a gateway's node is always a member, and removing
    // it from `nodes` is refused while it runs the gateway.
    refuse_while_used(&gateways::platforms_on_node(tx, &node.id)?, |platforms| {
        format!(
            "node {} runs the WireGuard gateway of platform(s) {}; move each gateway (`gateway.node`) or remove it first",
            node.name,
            name_list(platforms)
        )
    })?;
    let platforms = names(
        "SELECT p.name FROM platform_nodes pn JOIN platforms p ON p.id = pn.platform_id
         WHERE pn.node_id = ?1 ORDER BY 1",
    )?;
    refuse_while_used(&platforms, |platforms| {
        format!(
            "node {} is still one of the nodes of platform(s) {}; remove it from them first",
            node.name,
            name_list(platforms)
        )
    })?;
    for sql in [
        "DELETE FROM node_logs WHERE node_id = ?1",
        "DELETE FROM registration_requests WHERE node_id = ?1",
        "DELETE FROM node_certificates WHERE node_id = ?1",
        "DELETE FROM nodes WHERE id = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([&node.id])?;
    }
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "NodeDeleted",
            object_kind: "node",
            object_id: node.id.clone(),
            message: format!("node {} deleted by an operator", node.name),
        },
    )?;
    let api = node.to_api();
    overlay.remove(&node.id);
    Ok(api)
}

fn create_join_token(
    tx: &Connection,
    token: NewJoinToken,
    now: OffsetDateTime,
) -> Result<http::JoinTokenCreated, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    let secret = new_secret();
    tx.prepare_cached(
        "INSERT INTO join_tokens (id, description, node_name, single_use, secret, created_at,
             expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        token.description,
        token.node_name,
        token.single_use,
        secret_digest(&secret),
        rfc3339(now),
        token.expires_at.map(rfc3339),
    ])?;
    let join_token = join_token(tx, &id, now)?.ok_or_else(|| StoreError::NotFound {
        kind: "join token",
        id: id.clone(),
    })?;
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "JoinTokenCreated",
            object_kind: "join_token",
            object_id: id.clone(),
            message: format!(
                "join token {id} created ({}{}{})",
                match &join_token.node_name {
                    Some(name) => format!("node {name}"),
                    None => "any node name".into(),
                },
                if join_token.single_use {
                    ", single use"
                } else {
                    ""
                },
                match &join_token.expires_at {
                    Some(at) => format!(", expires {at}"),
                    None => String::new(),
                }
            ),
        },
    )?;
    Ok(http::JoinTokenCreated {
        join_token,
        secret: format!("{ISSUED_JOIN_TOKEN_PREFIX}{id}_{secret}"),
    })
}

fn revoke_join_token(
    tx: &Connection,
    id: &str,
    now: OffsetDateTime,
) -> Result<http::JoinToken, StoreError> {
    let changed = tx
        .prepare_cached(
            "UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        )?
        .execute(params![id, rfc3339(now)])?;
    if changed == 0 {
        return Err(StoreError::NotFound {
            kind: "join token",
            id: id.to_string(),
        });
    }
    insert_event(
        tx,
        now,
        &NewEvent {
            reason: "JoinTokenRevoked",
            object_kind: "join_token",
            object_id: id.to_string(),
            message: format!("join token {id} revoked"),
        },
    )?;
    join_token(tx, id, now)?.ok_or_else(|| StoreError::NotFound {
        kind: "join token",
        id: id.to_string(),
    })
}

const JOIN_TOKEN_COLUMNS: &str = "id, description, node_name, single_use, created_at, expires_at,
     last_used_at, last_used_by, revoked_at";

fn join_token_row(
    row: &crate::store::sql::Row<'_>,
    now: OffsetDateTime,
) -> crate::store::sql::Result<http::JoinToken> {
    let single_use: bool = row.get(3)?;
    let expires_at: Option<String> = row.get(5)?;
    let last_used_at: Option<String> = row.get(6)?;
    let revoked_at: Option<String> = row.get(8)?;
    // Stored times are our own RFC 3339; an unparsable one counts as expired
    // rather than failing the whole list.
    let expired = expires_at
        .as_deref()
        .is_some_and(|at| parse_time(at).map_or(true, |at| at <= now));
    let state = if revoked_at.is_some() {
        JoinTokenState::Revoked
    } else if single_use && last_used_at.is_some() {
        JoinTokenState::Used
    } else if expired {
        JoinTokenState::Expired
    } else {
        JoinTokenState::Active
    };
    Ok(http::JoinToken {
        id: row.get(0)?,
        description: row.get(1)?,
        node_name: row.get(2)?,
        single_use,
        state,
        created_at: row.get(4)?,
        expires_at,
        last_used_at,
        last_used_by: row.get(7)?,
        revoked_at,
    })
}

/// One join token, `None` if unknown.
pub(crate) fn join_token(
    conn: &Connection,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<http::JoinToken>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens WHERE id = ?1"
        ))?
        .query_row([id], |row| join_token_row(row, now))
        .optional()?)
}

/// All join tokens, newest first.
pub(crate) fn join_tokens(
    conn: &Connection,
    now: OffsetDateTime,
) -> Result<Vec<http::JoinToken>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens ORDER BY created_at DESC, id"
    ))?;
    let tokens = statement
        .query_map([], |row| join_token_row(row, now))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tokens)
}

const REQUEST_COLUMNS: &str = "name, node_id, reason, attempts, first_attempt_at, last_attempt_at,
     peer_address, management_address, agent_version, approved_at";

fn request_row(
    row: &crate::store::sql::Row<'_>,
) -> crate::store::sql::Result<http::RegistrationRequest> {
    Ok(http::RegistrationRequest {
        name: row.get(0)?,
        node_id: row.get(1)?,
        reason: row.get(2)?,
        attempts: row.get::<i64>(3)?.max(0) as u64,
        first_attempt_at: row.get(4)?,
        last_attempt_at: row.get(5)?,
        peer_address: row.get(6)?,
        management_address: row.get(7)?,
        agent_version: row.get(8)?,
        approved_at: row.get(9)?,
    })
}

fn registration_request(
    conn: &Connection,
    name: &str,
) -> Result<Option<http::RegistrationRequest>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} FROM registration_requests WHERE name = ?1"
        ))?
        .query_row([name], request_row)
        .optional()?)
}

/// Refused registrations waiting for (or holding) an approval, by name.
pub(crate) fn registration_requests(
    conn: &Connection,
) -> Result<Vec<http::RegistrationRequest>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {REQUEST_COLUMNS} FROM registration_requests ORDER BY name"
    ))?;
    let requests = statement
        .query_map([], request_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(requests)
}
