//! In-memory image of the `nodes` table.
//!
//! Every read of node state (HTTP listing, heartbeat authentication, the
//! liveness sweep) is served from here, so 5,000 heartbeats/s never wait on a
//! SQLite read. Only the writer thread mutates it, and only after the SQLite
//! transaction holding the same change has committed, so nothing a reader sees
//! can be lost by a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use measurelab_api::http::{self, Capabilities, NodeStatus, Resources};
use time::OffsetDateTime;

use super::codec::rfc3339;
use crate::placement::overcommit::Overcommit;

/// One node, as the controller knows it.
#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub id: String,
    pub name: String,
    /// [`super::nodes::secret_digest`] of the node's secret, never the secret.
    pub secret_digest: String,
    pub status: NodeStatus,
    pub registered_at: OffsetDateTime,
    pub last_heartbeat: Option<OffsetDateTime>,
    /// Monotonic time of the last registration or heartbeat. Not persisted:
    /// after a restart it starts at the startup instant, which is what gives
    /// every node a full `offline_after` of grace.
    pub last_contact: Instant,
    pub agent_version: String,
    pub management_address: String,
    pub capabilities: Capabilities,
    pub resources: Resources,
    /// Operator labels: placement and node selection use only these.
    pub labels: BTreeMap<String, String>,
    /// The operator's ratios (the defaults until set).
    pub overcommit: Overcommit,
    /// What the agent reported at its last registration.
    pub reported_labels: BTreeMap<String, String>,
    /// Set by an operator: every credential check of the node fails.
    pub revoked_at: Option<OffsetDateTime>,
    /// Serials (lower-case hex) of the node's certificates an operator
    /// revoked and that have not expired: the gRPC peer check refuses them
    /// while the node itself stays a member. Mirrors `node_certificates`.
    pub revoked_certificates: BTreeSet<String>,
    pub last_sequence: u64,
    pub observed_generation: u64,
    pub desired_generation: u64,
}

impl NodeEntry {
    pub fn to_api(&self) -> http::Node {
        http::Node {
            id: self.id.clone(),
            name: self.name.clone(),
            // Revocation outranks liveness: a revoked node may still hold a
            // connection, but nothing it sends is accepted.
            status: if self.revoked_at.is_some() {
                NodeStatus::Revoked
            } else {
                self.status
            },
            last_heartbeat: self.last_heartbeat.map(rfc3339),
            registered_at: rfc3339(self.registered_at),
            agent_version: self.agent_version.clone(),
            management_address: self.management_address.clone(),
            capabilities: self.capabilities.clone(),
            resources: self.resources.clone(),
            labels: self.labels.clone(),
            // Kept in its own table (store::flows); the API fills it in.
            flow_export: None,
            cpu_overcommit: self.overcommit.cpu,
            memory_overcommit: self.overcommit.memory,
            reported_labels: self.reported_labels.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_id: HashMap<String, NodeEntry>,
    /// name -> id
    by_name: HashMap<String, String>,
}

impl Registry {
    pub fn by_id(&self, id: &str) -> Option<&NodeEntry> {
        self.by_id.get(id)
    }

    pub fn id_for_name(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    /// The id is tried first because it is the stable handle: a node may be
    /// renamed, its id never changes.
    pub fn by_id_or_name(&self, id_or_name: &str) -> Option<&NodeEntry> {
        self.by_id.get(id_or_name).or_else(|| {
            self.by_name
                .get(id_or_name)
                .and_then(|id| self.by_id.get(id))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &NodeEntry> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Nodes ordered by name, as `GET /v1/nodes` promises.
    pub fn list(&self) -> Vec<http::Node> {
        let mut nodes: Vec<&NodeEntry> = self.by_id.values().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.into_iter().map(NodeEntry::to_api).collect()
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(entry) = self.by_id.remove(id) {
            if self.by_name.get(&entry.name).map(String::as_str) == Some(id) {
                self.by_name.remove(&entry.name);
            }
        }
    }

    pub fn upsert(&mut self, entry: NodeEntry) {
        // Every heartbeat lands here: a known node is replaced in place,
        // without copying its id and name into the maps' keys again.
        if let Some(previous) = self.by_id.get_mut(&entry.id) {
            if previous.name != entry.name {
                self.by_name.remove(&previous.name);
            }
            if self.by_name.get(&entry.name) != Some(&entry.id) {
                self.by_name.insert(entry.name.clone(), entry.id.clone());
            }
            *previous = entry;
            return;
        }
        self.by_name.insert(entry.name.clone(), entry.id.clone());
        self.by_id.insert(entry.id.clone(), entry);
    }
}
