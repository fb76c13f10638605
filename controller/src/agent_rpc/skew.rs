//! The version-skew policy at the node API: an agent older than the
//! controller serves is refused before anything is written, and one the
//! controller cannot vouch for (newer, or an unparseable version) is
//! served and named in the log once per node and version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::error::RpcError;
use crate::version_policy::{judge, Skew, Version};

/// Judges agents' versions against the controller's.
pub(crate) struct AgentSkew {
    controller: Version,
    /// Node id → the version last warned about, so a node heartbeating
    /// every few seconds is named once, and again only when it changes.
    warned: Mutex<HashMap<String, String>>,
    /// Whether `warned` holds anyone: the heartbeats of a supported agent
    /// (nearly all of them) then cost one atomic load, not a lock.
    any_warned: AtomicBool,
}

impl AgentSkew {
    pub fn new(controller: Version) -> Self {
        AgentSkew {
            controller,
            warned: Mutex::default(),
            any_warned: AtomicBool::new(false),
        }
    }

    /// Refuse an agent older than the controller serves; `node` names the
    /// node for the message and is only asked for then.
    pub fn admit(
        &self,
        agent_version: &str,
        node: impl FnOnce() -> String,
    ) -> Result<Skew, RpcError> {
        match judge(self.controller, agent_version) {
            Skew::Older { client, oldest } => {
                let node = node();
                Err(RpcError::FailedPrecondition(format!(
                    "agent_version: the agent on node {node} is {client}, older than this \
                     controller (measurelab {}) serves: it serves agents of {oldest} and later. \
                     Upgrade the agent on node {node} to {oldest} or later (docs/version-skew.md)",
                    self.controller
                )))
            }
            skew => Ok(skew),
        }
    }

    /// After a call of a supported agent: the node's last warning is
    /// forgotten, so an agent taken back to a supported version and then
    /// to the same unsupported one again is named again.
    pub fn note_supported(&self, node_id: &str) {
        if !self.any_warned.load(Ordering::Relaxed) {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.remove(node_id);
        self.any_warned.store(!warned.is_empty(), Ordering::Relaxed);
    }

    /// After the call was served: a warning the first time node `node_id`
    /// reports `agent_version` the policy does not support. True when it
    /// warned.
    pub fn note_served(
        &self,
        node_id: &str,
        agent_version: &str,
        skew: &Skew,
        node_name: impl FnOnce() -> String,
    ) -> bool {
        if matches!(skew, Skew::Supported(_)) {
            self.note_supported(node_id);
            return false;
        }
        {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.get(node_id).map(String::as_str) == Some(agent_version) {
                return false;
            }
            warned.insert(node_id.to_string(), agent_version.to_string());
            self.any_warned.store(true, Ordering::Relaxed);
        }
        let controller = self.controller;
        let node_name = node_name();
        match skew {
            Skew::Newer(client) => tracing::warn!(
                node = %node_name,
                %node_id,
                agent_version,
                controller_version = %controller,
                "the agent on node {node_name} is {client}, newer than this controller \
                 (measurelab {controller}); the policy does not support that: upgrade the \
                 controllers first (docs/version-skew.md)"
            ),
            _ => tracing::warn!(
                node = %node_name,
                %node_id,
                agent_version,
                controller_version = %controller,
                "the agent on node {node_name} reports version {agent_version:?}, which is not \
                 MAJOR.MINOR.PATCH; this controller (measurelab {controller}) cannot tell \
                 whether it serves it and serves it (docs/version-skew.md)"
            ),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skew() -> AgentSkew {
        AgentSkew::new("0.5.0".parse().unwrap())
    }

    #[test]
    fn an_older_agent_is_refused_with_both_versions_and_what_to_do() {
        let error = skew().admit("0.3.9", || "n7".into()).unwrap_err();
        assert!(
            matches!(error, RpcError::FailedPrecondition(_)),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "agent_version: the agent on node n7 is 0.3.9, older than this controller \
             (measurelab 0.5.0) serves: it serves agents of 0.4 and later. Upgrade the agent \
             on node n7 to 0.4 or later (docs/version-skew.md)"
        );
        for served in ["0.4.0", "0.5.2", "0.6.0", "t"] {
            skew()
                .admit(served, || unreachable!("only a refusal names the node"))
                .unwrap();
        }
    }

    #[test]
    fn an_unsupported_agent_is_named_once_per_node_and_version() {
        let skew = skew();
        let note = |node: &str, version: &str| {
            let judged = skew.admit(version, || unreachable!()).unwrap();
            skew.note_served(node, version, &judged, || node.to_uppercase())
        };
        assert!(!note("n1", "0.5.0"));
        assert!(note("n1", "0.6.0"));
        assert!(!note("n1", "0.6.0"));
        assert!(note("n2", "0.6.0"));
        assert!(note("n1", "0.6.1"));
        assert!(note("n1", "dev"));
        assert!(!note("n1", "dev"));
        // Back to a supported version, then the same unsupported one again.
        assert!(!note("n1", "0.5.1"));
        assert!(note("n1", "dev"));
        // A heartbeat of a supported agent forgets it too; other nodes'
        // warnings stay.
        skew.note_supported("n1");
        assert!(note("n1", "dev"));
        assert!(!note("n2", "0.6.0"));
    }
}
