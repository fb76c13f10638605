//! The version-skew policy for guest agents (docs/version-skew.md): judged
//! like node agents, but never refused. A guest agent runs inside a user's
//! VM, often in the middle of a measurement, so an unsupported one gets a
//! `GuestAgentSupported=False` condition on its VM, which the user sees
//! in the API, the provider and the admin page, instead of a refusal.
//!
//! The condition is derived when the VM is read, not stored with the
//! report: a controller upgraded past a guest agent's minor shows it at
//! once, without waiting for the node agent to report that VM again, and
//! always agrees with `measurelab_vms_by_guest_agent_skew`.

use measurelab_api::http::Condition;

use crate::version_policy::{judge, Skew, Version};

/// The condition's type.
pub(crate) const CONDITION: &str = "GuestAgentSupported";

/// The `GuestAgentSupported=False` condition for a guest agent of
/// `guest_agent_version` under a controller of `controller`, or `None`
/// when the policy supports it, when it is not `MAJOR.MINOR.PATCH` (a
/// development build, which the controller cannot judge) and when no
/// guest agent has reported (`None`).
pub(crate) fn condition(
    controller: Version,
    guest_agent_version: Option<&str>,
) -> Option<Condition> {
    let (reason, message) = match judge(controller, guest_agent_version?) {
        Skew::Supported(_) | Skew::Unknown => return None,
        Skew::Older { client, oldest } => (
            "GuestAgentTooOld",
            format!(
                "the guest agent is {client}, older than this controller (measurelab \
                 {controller}) serves: it serves guest agents of {oldest} and later. The VM \
                 keeps running; upgrade the guest agent in its appliance to {oldest} or later \
                 (docs/version-skew.md)"
            ),
        ),
        Skew::Newer(client) => (
            "GuestAgentNewer",
            format!(
                "the guest agent is {client}, newer than this controller (measurelab \
                 {controller}); the policy does not support that: upgrade the controllers \
                 first (docs/version-skew.md)"
            ),
        ),
    };
    Some(Condition {
        condition_type: CONDITION.to_string(),
        status: "False".to_string(),
        reason: reason.to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under_0_5(version: &str) -> Option<Condition> {
        condition("0.5.0".parse().unwrap(), Some(version))
    }

    #[test]
    fn an_older_guest_agent_gets_a_false_condition_naming_both_versions() {
        let older = under_0_5("0.3.9").unwrap();
        assert_eq!(
            (
                older.condition_type.as_str(),
                older.status.as_str(),
                older.reason.as_str()
            ),
            ("GuestAgentSupported", "False", "GuestAgentTooOld")
        );
        assert_eq!(
            older.message,
            "the guest agent is 0.3.9, older than this controller (measurelab 0.5.0) serves: it \
             serves guest agents of 0.4 and later. The VM keeps running; upgrade the guest agent \
             in its appliance to 0.4 or later (docs/version-skew.md)"
        );
        let newer = under_0_5("0.6.0").unwrap();
        assert_eq!(newer.reason, "GuestAgentNewer");
        assert!(
            newer.message.contains("upgrade the controllers first"),
            "{newer:?}"
        );
    }

    #[test]
    fn a_supported_unjudged_or_silent_guest_agent_gets_none() {
        for quiet in ["0.4.0", "0.5.1", "0.5.0-rc.1", "test", ""] {
            assert_eq!(under_0_5(quiet), None, "{quiet:?}");
        }
        assert_eq!(condition("0.5.0".parse().unwrap(), None), None);
    }
}
