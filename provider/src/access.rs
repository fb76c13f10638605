//! Plan-time permission checks.
//!
//! At configure the provider asks the controller who its token is
//! (`GET /v1/whoami`: role and tenant). A plan that would create, change or
//! delete an object the token's role cannot touch then fails at plan, naming
//! the object, the action and the role it needs, instead of half-way through
//! an apply. The controller checks again at apply (its 403 message reaches
//! the user unchanged), so a check that cannot be decided at plan (a tenant
//! known only after apply, a controller without `whoami`, a role this
//! provider does not know) is simply skipped.

use tf_provider::{AttributePath, Diagnostics};

use crate::diagnostics;

pub use measurelab_api::http::{Role, WhoAmI as Whoami};

/// The role named `text`, if it is one a token can have.
pub fn parse_role(text: &str) -> Option<Role> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

/// What a plan is about to do to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new object.
    Create,
    /// An object changed in place or replaced.
    Change,
    /// An object destroyed.
    Delete,
}

impl Action {
    fn gerund(self) -> &'static str {
        match self {
            Action::Create => "creating",
            Action::Change => "changing",
            Action::Delete => "deleting",
        }
    }
}

/// The role an action needs, and in which tenant when it is not the token's
/// own (creating a token in another tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The least role that may act.
    pub role: Role,
    /// The tenant (id or name) the role must be held in; `None`: the token's own.
    pub tenant: Option<String>,
}

impl Requirement {
    /// `role` in the token's own tenant (or operator).
    pub fn role(role: Role) -> Self {
        Requirement { role, tenant: None }
    }
}

/// What the plan-time check asks of a token's identity.
pub trait Refusal {
    /// Why this token may not take `action` on the `kind` named `name`, or
    /// `None` when it may (or the check cannot be decided here).
    fn refusal(
        &self,
        action: Action,
        kind: &str,
        name: &str,
        needed: &Requirement,
    ) -> Option<String>;
}

impl Refusal for Whoami {
    /// Why this token may not take `action` on the `kind` named `name`, or
    /// `None` when it may (or the check cannot be decided here).
    fn refusal(
        &self,
        action: Action,
        kind: &str,
        name: &str,
        needed: &Requirement,
    ) -> Option<String> {
        if self.role == Role::Operator {
            return None;
        }
        let in_own_tenant = needed.tenant.as_deref().is_none_or(|wanted| {
            self.tenant_id.as_deref() == Some(wanted) || self.tenant_name.as_deref() == Some(wanted)
        });
        if needed.role != Role::Operator && self.role >= needed.role && in_own_tenant {
            return None;
        }
        let needed_where = match (&needed.tenant, &self.tenant_name) {
            _ if needed.role == Role::Operator => String::new(),
            (Some(tenant), _) => format!(" in tenant {tenant:?}"),
            (None, Some(own)) => format!(" in tenant {own:?}"),
            (None, None) => String::new(),
        };
        let has_where = self
            .tenant_name
            .as_ref()
            .or(self.tenant_id.as_ref())
            .map(|t| format!(" in tenant {t:?}"))
            .unwrap_or_default();
        let object = if name.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} {name:?}")
        };
        Some(format!(
            "{} {object} needs role {}{needed_where}; token {:?} has role {}{has_where}",
            action.gerund(),
            needed.role.as_str(),
            self.token_name,
            self.role.as_str(),
        ))
    }
}

/// Add the plan-time diagnostic for `refusal` (from [`Whoami::refusal`]).
/// Terraform shows it under the resource's address (`with measurelab_vm.a`).
pub fn refuse(diags: &mut Diagnostics, refusal: &str) {
    diags.add_error(diagnostics::diagnostic(
        "Permission denied",
        format!(
            "This plan needs a permission the provider's token does not have: {refusal}. \
             Nothing was changed.\n\nWhat to do: run with a token of that role \
             (for a lab, `measurelab lab env --operator` prints the operator token, `measurelab \
             lab env` the demo tenant's member token), or ask the tenant's owner for one.",
        ),
        AttributePath::root(),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, tenant: Option<&str>) -> Whoami {
        Whoami {
            token_id: "t1".into(),
            token_name: "ci".into(),
            role,
            tenant_id: tenant.map(|t| format!("id-{t}")),
            tenant_name: tenant.map(str::to_string),
        }
    }

    #[test]
    fn a_viewer_planning_a_platform_is_told_the_role_it_needs() {
        let refusal = token(Role::Viewer, Some("t1")).refusal(
            Action::Create,
            "virtual platform",
            "lab",
            &Requirement::role(Role::Member),
        );
        assert_eq!(
            refusal.as_deref(),
            Some(
                "creating virtual platform \"lab\" needs role member in tenant \"t1\"; \
                 token \"ci\" has role viewer in tenant \"t1\""
            )
        );
    }

    #[test]
    fn members_may_change_their_objects_but_not_tenants() {
        let member = token(Role::Member, Some("t1"));
        let platform = Requirement::role(Role::Member);
        assert_eq!(member.refusal(Action::Delete, "VM", "a", &platform), None);
        let tenant = member
            .refusal(
                Action::Create,
                "tenant",
                "t2",
                &Requirement::role(Role::Operator),
            )
            .unwrap_or_default();
        assert!(
            tenant.starts_with("creating tenant \"t2\" needs role operator;"),
            "{tenant}"
        );
    }

    #[test]
    fn an_owner_manages_tokens_only_in_its_own_tenant() {
        let owner = token(Role::Owner, Some("t1"));
        let own = Requirement {
            role: Role::Owner,
            tenant: Some("t1".into()),
        };
        assert_eq!(owner.refusal(Action::Create, "API token", "x", &own), None);
        let by_id = Requirement {
            role: Role::Owner,
            tenant: Some("id-t1".into()),
        };
        assert_eq!(
            owner.refusal(Action::Create, "API token", "x", &by_id),
            None
        );
        let other = Requirement {
            role: Role::Owner,
            tenant: Some("t2".into()),
        };
        let refusal = owner
            .refusal(Action::Create, "API token", "x", &other)
            .unwrap_or_default();
        assert!(
            refusal.contains("needs role owner in tenant \"t2\""),
            "{refusal}"
        );
    }

    #[test]
    fn operators_are_not_checked_and_roles_parse_by_their_api_names() {
        let operator = token(Role::Operator, None);
        let needs = Requirement::role(Role::Operator);
        assert_eq!(
            operator.refusal(Action::Create, "tenant", "t", &needs),
            None
        );
        assert_eq!(parse_role("owner"), Some(Role::Owner));
        assert_eq!(parse_role("admin"), None);
        assert_eq!(Role::Viewer.as_str(), "viewer");
    }
}
