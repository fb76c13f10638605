//! Who is calling and what they may see: the principal of a request, its
//! role, and the scope the store applies to every tenant object.
//!
//! The store filters every read and write by [`Scope`]; the API layer turns
//! a principal into a scope and decides 403 versus 404 with [`Principal`].

pub(crate) use measurelab_api::http::Role;

/// The tenant the built-in `default` tenant has (fixed by migration 0004).
pub(crate) const DEFAULT_TENANT_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Which tenants' objects a store call may see and change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every tenant (the operator, and the node API acting for the system).
    All,
    /// One tenant, by id.
    Tenant(String),
}

impl Scope {
    /// The tenant id to filter by, `None` for every tenant: bound as
    /// `(?N IS NULL OR tenant_id = ?N)` in SQL.
    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Tenant(id) => Some(id),
        }
    }

    /// Whether an object of `tenant_id` is visible in this scope.
    pub fn sees(&self, tenant_id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(id) => id == tenant_id,
        }
    }
}

/// A tenant by id and name (names are what messages show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantRef {
    pub id: String,
    pub name: String,
}

/// The caller of an HTTP request, from its bearer token.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    pub token_id: String,
    pub token_name: String,
    pub role: Role,
    /// `None` for the operator.
    pub tenant: Option<TenantRef>,
    /// An operator's `?tenant=`: its reads and name lookups stay in that tenant.
    pub narrowed_to: Option<TenantRef>,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// What the store may show and change for this caller.
    pub fn scope(&self) -> Scope {
        match (&self.tenant, &self.narrowed_to) {
            (Some(tenant), _) | (None, Some(tenant)) => Scope::Tenant(tenant.id.clone()),
            (None, None) => Scope::All,
        }
    }

    /// Idempotency keys live per tenant: a tenant replaying another
    /// tenant's request_id must neither see its answer nor learn it exists.
    /// The operator's keys stay as they were.
    pub fn idempotency_key(&self, request_id: Option<String>) -> Option<String> {
        match &self.tenant {
            Some(tenant) => request_id.map(|id| format!("{}:{id}", tenant.id)),
            None => request_id,
        }
    }

    /// `deleting platform "lab" needs role member in tenant "t1"; token "ci"
    /// has role viewer`: what was refused, what it needs, what the caller has.
    pub fn denial(&self, action: &str, kind: &str, name: &str, needed: Role) -> String {
        let needs = match (&self.tenant, needed) {
            (_, Role::Operator) | (None, _) => format!("role {}", needed.as_str()),
            (Some(tenant), _) => format!("role {} in tenant {:?}", needed.as_str(), tenant.name),
        };
        let has = match &self.tenant {
            Some(tenant) if needed == Role::Operator => {
                format!("role {} in tenant {:?}", self.role.as_str(), tenant.name)
            }
            _ => format!("role {}", self.role.as_str()),
        };
        format!(
            "{action} {kind} {name:?} needs {needs}; token {:?} has {has}",
            self.token_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Principal {
        Principal {
            token_id: "t".into(),
            token_name: "ci".into(),
            role: Role::Viewer,
            tenant: Some(TenantRef {
                id: "id1".into(),
                name: "t1".into(),
            }),
            narrowed_to: None,
        }
    }

    #[test]
    fn denial_names_object_action_and_roles() {
        assert_eq!(
            viewer().denial("deleting", "platform", "lab", Role::Member),
            "deleting platform \"lab\" needs role member in tenant \"t1\"; token \"ci\" has role viewer"
        );
        assert_eq!(
            viewer().denial("creating", "appliance", "img", Role::Operator),
            "creating appliance \"img\" needs role operator; token \"ci\" has role viewer in tenant \"t1\""
        );
    }

    #[test]
    fn roles_order_by_power() {
        assert!(Role::Operator > Role::Owner);
        assert!(Role::Owner > Role::Member);
        assert!(Role::Member > Role::Viewer);
    }
}
