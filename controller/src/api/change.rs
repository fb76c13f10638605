//! What every create of a tenant object and every change to one existing
//! object shares: the caller's right to make it (checked before the write,
//! so a viewer learns nothing it may not see), then one idempotent
//! transaction in the caller's scope, recorded under a route that tells the
//! request_id's uses apart. Handlers state only what differs: the kind, the
//! action and the store call.

use super::auth::{creation_scope, ensure_role, ensure_role_on, requested_tenant, Visible};
use super::error::ApiError;
use super::extract::QueryParams;
use super::idempotency::{Answer, Idempotent};
use super::state::AppState;
use crate::access::{Principal, Role, Scope, TenantRef};
use crate::store::sql::Connection;
use crate::store::{tenants, StoreError, TxContext};

/// A kind of object that changes through [`Kind::apply`].
pub(crate) struct Kind {
    /// Its name in messages ("QoS policy").
    pub name: &'static str,
    /// The path of its collection ("/v1/qos_policies"), which the routes of
    /// its changes start with.
    pub collection: &'static str,
    /// The least role that changes one (member, or operator for tenants).
    pub writers: Role,
    /// Tells a refused caller's 403 (an object it sees) from 404.
    pub visible: Visible,
}

/// One change to one object.
pub(crate) struct Change {
    /// What the change does, in a refusal: "deleting" QoS policy "x".
    pub action: &'static str,
    /// What the request_id is recorded for: a request_id reused for another
    /// route is refused.
    pub route: String,
    /// The object's id or name.
    pub key: String,
    /// The caller's request_id, not yet made per tenant.
    pub request_id: Option<String>,
}

impl Change {
    /// The change addressed below the object: `<route>/<subpath>` or, with
    /// a leading `?`, a query.
    pub(crate) fn with_route_suffix(mut self, subpath: &str) -> Change {
        self.route.push_str(subpath);
        self
    }
}

/// One create of a tenant object.
pub(crate) struct Creation {
    /// The new object's name (a deployment's: its program's), for a
    /// refusal.
    pub name: String,
    /// The caller's request_id, not yet made per tenant.
    pub request_id: Option<String>,
    /// The body's `tenant`.
    pub tenant: Option<String>,
}

/// Where a create puts its object: the tenant its body names (an operator
/// may name any; a tenant's token only its own), or else the caller's, or
/// the tenant an operator's token is narrowed to.
pub(crate) struct Destination {
    principal: Principal,
    requested: Option<String>,
}

impl Destination {
    /// The tenant the new object belongs to.
    pub(crate) fn tenant(&self, conn: &Connection) -> Result<TenantRef, StoreError> {
        tenants::target(
            conn,
            self.principal.tenant.as_ref(),
            self.requested.as_deref(),
        )
    }

    /// The scope the create looks up what the object references in
    /// (platform, program, QoS policy).
    pub(crate) fn scope(&self, conn: &Connection) -> Result<Scope, StoreError> {
        creation_scope(conn, &self.principal, self.requested.as_deref())
    }
}

/// `?request_id=`, the only query parameter a plain DELETE accepts.
pub(crate) fn delete_request_id(query: &QueryParams) -> Result<Option<String>, ApiError> {
    query.only(&["request_id"])?;
    Ok(query.0.get("request_id").cloned())
}

impl Kind {
    /// `PATCH <collection>/<key>`.
    pub(crate) fn patch(&self, key: String, request_id: Option<String>) -> Change {
        self.change("changing", "PATCH", key, request_id)
    }

    /// `DELETE <collection>/<key>`.
    pub(crate) fn delete(&self, key: String, request_id: Option<String>) -> Change {
        self.change("deleting", "DELETE", key, request_id)
    }

    /// `<method> <collection>/<key>` doing `action`.
    pub(crate) fn change(
        &self,
        action: &'static str,
        method: &str,
        key: String,
        request_id: Option<String>,
    ) -> Change {
        Change {
            action,
            route: format!("{method} {}/{key}", self.collection),
            key,
            request_id,
        }
    }

    /// Refuses a caller who may not create an object of this kind named
    /// `name`; [`Kind::create`] checks it, and an upload checks it before
    /// it takes the bytes.
    pub(crate) fn ensure_can_create(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<(), ApiError> {
        ensure_role(principal, self.writers, "creating", self.name, name)
    }

    /// `POST <collection>`: checks the caller may make `creation` (a viewer
    /// is refused before anything is read), then runs `body` with its
    /// [`Destination`] in one transaction, or replays the answer recorded
    /// for its request_id.
    pub(crate) async fn create(
        &self,
        state: &AppState,
        principal: Principal,
        creation: Creation,
        body: impl FnOnce(&mut TxContext<'_>, &Destination) -> Result<Answer, StoreError>
            + Send
            + 'static,
    ) -> Result<Answer, ApiError> {
        let Creation {
            name,
            request_id,
            tenant,
        } = creation;
        self.ensure_can_create(&principal, &name)?;
        let request_id = principal.idempotency_key(request_id);
        let destination = Destination {
            requested: requested_tenant(&principal, tenant),
            principal,
        };
        let answer = state
            .store()
            .resources()
            .mutate(request_id, format!("POST {}", self.collection), move |cx| {
                body(cx, &destination)
            })
            .await?;
        Ok(answer)
    }

    /// Checks the caller may make `change`, then runs `body` (given the
    /// caller's scope and the key) in one transaction, or replays the answer
    /// recorded for its request_id.
    pub(crate) async fn apply(
        &self,
        state: &AppState,
        principal: &Principal,
        change: Change,
        body: impl FnOnce(&mut TxContext<'_>, &Scope, &str) -> Result<Answer, StoreError>
            + Send
            + 'static,
    ) -> Result<Answer, ApiError> {
        let Change {
            action,
            route,
            key,
            request_id,
        } = change;
        ensure_role_on(
            state,
            principal,
            self.writers,
            action,
            self.name,
            &key,
            self.visible,
        )
        .await?;
        let scope = principal.scope();
        let answer = state
            .store()
            .resources()
            .mutate(principal.idempotency_key(request_id), route, move |cx| {
                body(cx, &scope, &key)
            })
            .await?;
        Ok(answer)
    }
}
