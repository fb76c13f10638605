//! The one implementation of tf-provider's `Resource` trait.
//!
//! Every managed resource stands for one object on the controller. What
//! differs between them (schema, plan rules, create and update, how the
//! controller's object maps onto the state) is written in the resource's file
//! as a [`ManagedResource`]. What they share is written here, once:
//! - read: the object is looked up again; a 404 drops the resource from the
//!   state, so the next plan creates it again;
//! - destroy: a 404 counts as done (someone deleted it by hand), and a
//!   resource whose delete is asynchronous waits until the object is gone;
//! - import: the object is looked up by what the user typed;
//! - create: the POST carries a `request_id` chosen once per create, so
//!   sending it again after a lost answer cannot create a second object.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, RawValue, Resource};
use tokio_util::sync::CancellationToken;

use crate::access::{self, Action, Refusal, Requirement, Role};
use crate::diagnostics::{self, Operation};
use crate::shared::Shared;
use crate::wait::{self, Poll};

/// How many times a create whose answer was lost is sent in all.
const CREATE_ATTEMPTS: u32 = 3;
/// Pause before a create is sent again: long enough for a controller that
/// dropped the connection under load to catch its breath.
const CREATE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A Terraform resource backed by one controller object.
#[async_trait]
pub trait ManagedResource: Send + Sync + Sized + 'static {
    /// Terraform state; field names are attribute names.
    type State: Serialize + DeserializeOwned + Clone + Default + Send + Sync;
    /// The controller's view of the object.
    type Object: Send + Sync;

    /// What diagnostics call the object ("VM", "QoS policy").
    const KIND: &'static str;
    /// What a failed read (refresh or import) was doing.
    const READ: Operation = Operation::Read(Self::KIND);
    /// What a failed destroy was doing.
    const DELETE: Operation = Operation::Delete(Self::KIND);
    /// The role that creates, changes and deletes the object (plan-time check).
    const ROLE: Role = Role::Member;

    /// The resource, talking through the provider's client.
    fn new(shared: Shared) -> Self;
    /// The provider's client and stop signal.
    fn shared(&self) -> &Shared;

    /// The Terraform schema.
    fn schema(&self) -> Schema;
    /// Report bad values of a configuration (or plan) on their attributes.
    fn validate(&self, diags: &mut Diagnostics, state: &Self::State);
    /// The planned state of a new resource.
    async fn plan_create(&self, diags: &mut Diagnostics, proposed: Self::State) -> Self::State;
    /// The planned state of a change, and the attributes whose change
    /// replaces the object.
    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &Self::State,
        proposed: Self::State,
    ) -> (Self::State, Vec<AttributePath>);
    /// Create the object; `request` sends the POST. `None` (with a
    /// diagnostic) when nothing exists; once the object exists, a state,
    /// even when a later step failed, so destroy can find it.
    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: Self::State,
        request: &CreateRequest,
    ) -> Option<Self::State>;
    /// Change the object in place. By default nothing is sent: the change
    /// only steers create (`timeouts`, what create waits for).
    async fn update(
        &self,
        _diags: &mut Diagnostics,
        _prior: &Self::State,
        planned: Self::State,
    ) -> Option<Self::State> {
        Some(planned)
    }

    /// The controller id kept in the state.
    fn id(state: &Self::State) -> &Value<String>;
    /// What read looks the object up by: the id by default.
    fn read_key(state: &Self::State) -> String {
        known(Self::id(state))
    }
    /// `GET` the object by id (or by name, where the API takes one).
    async fn get(client: &Client, key: &str) -> Result<Self::Object, ClientError>;
    /// `DELETE` the object (for a node: release it).
    async fn delete(client: &Client, id: &str) -> Result<(), ClientError>;
    /// Copy the controller's view into the state (read and import).
    async fn refresh(&self, client: &Client, state: &mut Self::State, object: &Self::Object);
    /// Whether an object that still answers is gone for Terraform (a
    /// deployment whose runs were stopped by hand); read drops it like a 404.
    fn is_gone(_object: &Self::Object) -> bool {
        false
    }
    /// Warnings about an object read back (a node that went offline).
    fn on_read(_diags: &mut Diagnostics, _object: &Self::Object) {}

    /// Look up the object named by `terraform import`'s id.
    async fn find(client: &Client, id: &str) -> Result<Self::Object, ClientError> {
        Self::get(client, id).await
    }
    /// The state an import starts from, before [`Self::refresh`]: what the
    /// configuration would hold that the object does not say.
    fn import_base(_object: &Self::Object) -> Self::State {
        Self::State::default()
    }
    /// Detail of the diagnostic when import finds nothing.
    fn import_not_found(id: &str) -> String {
        format!(
            "The controller has no {} named (or with id) {id:?}.\n\nWhat to do: import by name.",
            Self::KIND
        )
    }

    /// The role (and tenant) that may create, change or delete the object
    /// `state` describes; by default [`Self::ROLE`] in the token's tenant.
    fn requirement(_state: &Self::State) -> Requirement {
        Requirement::role(Self::ROLE)
    }

    /// Whether (and how long) destroy waits until `GET` answers 404. By
    /// default the DELETE answer is final.
    fn delete_wait(_state: &Self::State) -> Option<DeleteWait> {
        None
    }
    /// What a delete wait saw, for its timeout message.
    fn describe(_object: &Self::Object) -> String {
        format!("the {} still exists", Self::KIND)
    }

    /// A state written under schema `version` (older than the current one),
    /// as its JSON, in the current schema; `Err` says why not. By default
    /// there is no older schema.
    fn upgrade(version: i64, _prior: serde_json::Value) -> Result<Self::State, String> {
        Err(format!(
            "this provider knows no schema version {version} of the {}",
            Self::KIND
        ))
    }
}

/// How destroy waits for an object whose delete is asynchronous.
pub struct DeleteWait {
    /// The user's name of the object, for the diagnostic.
    pub name: String,
    /// How long to wait.
    pub timeout: Duration,
}

/// `new` and `shared` of a [`ManagedResource`] that holds nothing but its
/// [`Shared`] in a field `shared`, as every resource does.
macro_rules! holds_shared {
    () => {
        fn new(shared: $crate::shared::Shared) -> Self {
            Self { shared }
        }

        fn shared(&self) -> &$crate::shared::Shared {
            &self.shared
        }
    };
}
pub(crate) use holds_shared;

/// A state whose `id` and `created_at` only the controller knows, and
/// whose object a new `name` replaces (any other change is made in place).
pub trait AssignedByController {
    fn name(&self) -> &Value<String>;
    /// Mark `id` and `created_at` unknown: a new object gets its own.
    fn forget_assigned(&mut self);
}

/// The plan of a new [`AssignedByController`] object.
pub fn plan_new<S: AssignedByController>(mut proposed: S) -> S {
    proposed.forget_assigned();
    proposed
}

/// The plan of a change to an [`AssignedByController`] object, and
/// `name` when it replaces the object.
pub fn plan_change<S: AssignedByController>(prior: &S, mut proposed: S) -> (S, Vec<AttributePath>) {
    if proposed.name() == prior.name() {
        return (proposed, Vec::new());
    }
    proposed.forget_assigned();
    (proposed, vec![AttributePath::new("name")])
}

/// The text of a string value, empty when null or unknown.
pub fn known(value: &Value<String>) -> String {
    value.as_ref_option().cloned().unwrap_or_default()
}

/// Read key of objects the API finds by id or by name: the id once known
/// (a renamed object stays found), otherwise the name.
pub fn id_or_name(id: &Value<String>, name: &Value<String>) -> String {
    id.as_ref_option()
        .or(name.as_ref_option())
        .cloned()
        .unwrap_or_default()
}

/// The POST of one create call. Its `request_id` is chosen once, so the
/// controller answers a POST sent again (after a lost answer) with the first
/// answer instead of creating a second object.
pub struct CreateRequest {
    request_id: String,
    kind: &'static str,
    stop: CancellationToken,
}

impl CreateRequest {
    fn new(kind: &'static str, stop: CancellationToken) -> Self {
        CreateRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            kind,
            stop,
        }
    }

    /// The create body's `request_id`.
    pub fn request_id(&self) -> Option<String> {
        Some(self.request_id.clone())
    }

    /// Send the create (`post`, whose body carries [`Self::request_id`]);
    /// again when the answer was lost. `None`, with a diagnostic, on failure.
    pub async fn send<T, F, Fut>(&self, diags: &mut Diagnostics, mut post: F) -> Option<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, ClientError>> + Send,
    {
        let mut attempt = 1;
        loop {
            let err = match post().await {
                Ok(object) => return Some(object),
                Err(err) => err,
            };
            if attempt >= CREATE_ATTEMPTS || !answer_lost(&err) {
                diagnostics::client_error(diags, &err, Operation::Create(self.kind));
                return None;
            }
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep(CREATE_RETRY_PAUSE) => {}
                _ = self.stop.cancelled() => {
                    diagnostics::client_error(diags, &err, Operation::Create(self.kind));
                    return None;
                }
            }
        }
    }
}

/// Whether the request may have reached the controller without its answer
/// reaching us (a timeout, a connection dropped mid-request). A refused
/// connection sent nothing: sending again would only delay the diagnostic.
fn answer_lost(err: &ClientError) -> bool {
    matches!(err, ClientError::Unreachable { source, .. } if !source.is_connect())
}

/// A [`ManagedResource`] as a Terraform resource.
pub struct Adapter<R>(R);

impl<R: ManagedResource> Adapter<R> {
    /// The resource, talking through the provider's client.
    pub fn new(shared: Shared) -> Self {
        Adapter(R::new(shared))
    }

    /// Fail the plan when the provider's token may not take `action` on the
    /// object `state` describes (see [`crate::access`]).
    fn check_permission(&self, diags: &mut Diagnostics, action: Action, state: &R::State) {
        let Some(whoami) = self.0.shared().whoami() else {
            return;
        };
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
            .unwrap_or_default();
        if let Some(refusal) = whoami.refusal(action, R::KIND, &name, &R::requirement(state)) {
            access::refuse(diags, &refusal);
        }
    }
}

#[async_trait]
impl<R: ManagedResource> Resource for Adapter<R> {
    type State<'a> = R::State;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(self.0.schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        self.0.validate(diags, &config);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let Some(client) = self.0.shared().client(diags) else {
            return Some((state, private_state));
        };
        match R::get(&client, &R::read_key(&state)).await {
            Ok(object) if R::is_gone(&object) => None,
            Ok(object) => {
                R::on_read(diags, &object);
                let mut state = state;
                self.0.refresh(&client, &mut state, &object).await;
                Some((state, private_state))
            }
            // Gone from the controller: dropped, so the next plan creates it again.
            Err(err) if err.is_not_found() => None,
            // Unknown: keep the state as it was.
            Err(err) => {
                diagnostics::client_error(diags, &err, R::READ);
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let state = self.0.plan_create(diags, proposed_state).await;
        self.check_permission(diags, Action::Create, &state);
        Some((state, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        let (state, replace) = self
            .0
            .plan_update(diags, &prior_state, proposed_state)
            .await;
        // Terraform plans every resource in the state, changed or not: only
        // a real change needs the permission (a viewer may plan a no-op).
        let changed = !replace.is_empty()
            || serde_json::to_value(&prior_state).ok() != serde_json::to_value(&state).ok();
        if changed {
            self.check_permission(diags, Action::Change, &state);
        }
        Some((state, prior_private_state, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        self.check_permission(diags, Action::Delete, &prior_state);
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.0.shared().client(diags)?;
        let request = CreateRequest::new(R::KIND, self.0.shared().stop.clone());
        let state = self
            .0
            .create(diags, &client, planned_state, &request)
            .await?;
        Some((state, planned_private_state))
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let state = self.0.update(diags, &prior_state, planned_state).await?;
        Some((state, planned_private_state))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let client = self.0.shared().client(diags)?;
        let id = known(R::id(&prior_state));
        match R::delete(&client, &id).await {
            Ok(()) => {}
            // Destroy converges, not fails, when someone deleted it by hand.
            Err(err) if err.is_not_found() => return Some(()),
            Err(err) => {
                diagnostics::client_error(diags, &err, R::DELETE);
                return None;
            }
        }
        let Some(DeleteWait { name, timeout }) = R::delete_wait(&prior_state) else {
            return Some(());
        };
        let (client, id) = (&client, id.as_str());
        let gone = wait::until(&self.0.shared().stop, timeout, move || async move {
            match R::get(client, id).await {
                Ok(object) => Ok(Poll::Pending(R::describe(&object))),
                Err(err) if err.is_not_found() => Ok(Poll::Done(())),
                Err(err) => Err(err),
            }
        })
        .await;
        match gone {
            Ok(()) => Some(()),
            Err(end) => {
                diagnostics::wait_failed(
                    diags,
                    &end,
                    R::KIND,
                    &name,
                    "be deleted",
                    timeout,
                    R::DELETE,
                );
                None
            }
        }
    }

    async fn upgrade<'a>(
        &self,
        diags: &mut Diagnostics,
        version: i64,
        prior_state: RawValue,
    ) -> Option<Self::State<'a>> {
        let prior: serde_json::Value = prior_state.deserialize(diags)?;
        match R::upgrade(version, prior) {
            Ok(state) => Some(state),
            Err(why) => {
                diags.root_error(format!("Cannot upgrade the {} state", R::KIND), why);
                None
            }
        }
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.0.shared().client(diags)?;
        match R::find(&client, &id).await {
            Ok(object) => {
                let mut state = R::import_base(&object);
                self.0.refresh(&client, &mut state, &object).await;
                Some((state, ValueEmpty::default()))
            }
            Err(err) if err.is_not_found() => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::root(),
                    format!("Cannot import: no such {}", R::KIND),
                    R::import_not_found(&id),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, R::READ);
                None
            }
        }
    }
}

/// One attribute of a resource schema, its description in markdown: the
/// shape every resource's schema is written in.
pub(crate) fn attribute(
    attr_type: AttributeType,
    description: &str,
    constraint: AttributeConstraint,
) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(description),
        constraint,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use serde::Deserialize;
    use tf_provider::schema::Block;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// The controller's view of a test object.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Thing {
        id: String,
        name: String,
    }

    /// Its Terraform state; `note` is known only to the configuration, and
    /// destroy waits as long as `delete_timeout` says (not at all when null).
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct ThingState {
        id: Value<String>,
        name: Value<String>,
        note: Value<String>,
        delete_timeout: Value<String>,
    }

    /// A resource with nothing of its own, so the tests see the adapter.
    struct Things {
        shared: Shared,
    }

    #[async_trait]
    impl ManagedResource for Things {
        type State = ThingState;
        type Object = Thing;

        const KIND: &'static str = "thing";

        holds_shared!();

        fn schema(&self) -> Schema {
            Schema {
                version: 1,
                block: Block::default(),
            }
        }

        fn validate(&self, _diags: &mut Diagnostics, _state: &ThingState) {}

        async fn plan_create(&self, _diags: &mut Diagnostics, proposed: ThingState) -> ThingState {
            proposed
        }

        async fn plan_update(
            &self,
            _diags: &mut Diagnostics,
            _prior: &ThingState,
            proposed: ThingState,
        ) -> (ThingState, Vec<AttributePath>) {
            (proposed, Vec::new())
        }

        async fn create(
            &self,
            _diags: &mut Diagnostics,
            _client: &Client,
            _planned: ThingState,
            _request: &CreateRequest,
        ) -> Option<ThingState> {
            None
        }

        fn id(state: &ThingState) -> &Value<String> {
            &state.id
        }

        async fn get(client: &Client, key: &str) -> Result<Thing, ClientError> {
            client
                .request::<(), _>(reqwest::Method::GET, &format!("/v1/things/{key}"), None)
                .await
        }

        async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
            client
                .request::<(), Thing>(reqwest::Method::DELETE, &format!("/v1/things/{id}"), None)
                .await
                .map(drop)
        }

        async fn refresh(&self, _client: &Client, state: &mut ThingState, thing: &Thing) {
            state.id = Value::Value(thing.id.clone());
            state.name = Value::Value(thing.name.clone());
        }

        fn import_base(_thing: &Thing) -> ThingState {
            ThingState {
                note: Value::Value("imported".into()),
                ..Default::default()
            }
        }

        fn delete_wait(state: &ThingState) -> Option<DeleteWait> {
            let timeout = crate::timeouts::parse_duration(state.delete_timeout.as_ref_option()?);
            Some(DeleteWait {
                name: known(&state.name),
                timeout: timeout.ok()?,
            })
        }
    }

    /// What the fake controller holds. Std locks: no `.await` happens under them.
    #[derive(Default)]
    struct Fake {
        things: Mutex<HashMap<String, Thing>>,
        /// Deleted things that still answer this many GETs (the agent tearing down).
        deleting: Mutex<HashMap<String, (Thing, usize)>>,
        /// Answer every GET with 500.
        broken: AtomicBool,
        gets: AtomicUsize,
    }

    async fn get_thing(
        State(fake): State<Arc<Fake>>,
        Path(id): Path<String>,
    ) -> Result<Json<Thing>, StatusCode> {
        fake.gets.fetch_add(1, Ordering::SeqCst);
        if fake.broken.load(Ordering::SeqCst) {
            return Err(StatusCode::INTERNAL_SERVER_ERROR);
        }
        if let Some(thing) = fake.things.lock().unwrap().get(&id) {
            return Ok(Json(thing.clone()));
        }
        match fake.deleting.lock().unwrap().get_mut(&id) {
            Some((thing, left)) if *left > 0 => {
                *left -= 1;
                Ok(Json(thing.clone()))
            }
            _ => Err(StatusCode::NOT_FOUND),
        }
    }

    async fn delete_thing(
        State(fake): State<Arc<Fake>>,
        Path(id): Path<String>,
    ) -> Result<Json<Thing>, StatusCode> {
        let thing = fake
            .things
            .lock()
            .unwrap()
            .remove(&id)
            .ok_or(StatusCode::NOT_FOUND)?;
        let looks = fake
            .deleting
            .lock()
            .unwrap()
            .get(&id)
            .map_or(0, |(_, left)| *left);
        fake.deleting
            .lock()
            .unwrap()
            .insert(id, (thing.clone(), looks));
        Ok(Json(thing))
    }

    /// A fake controller holding thing `t1` named `one`, whose delete takes
    /// `teardown_looks` GETs to finish; the resource talks to it.
    async fn start(teardown_looks: usize) -> (Adapter<Things>, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        let thing = Thing {
            id: "t1".into(),
            name: "one".into(),
        };
        fake.deleting
            .lock()
            .unwrap()
            .insert("t1".into(), (thing.clone(), teardown_looks));
        fake.things.lock().unwrap().insert("t1".into(), thing);
        let app = Router::new()
            .route("/v1/things/:id", get(get_thing).delete(delete_thing))
            .with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        (Adapter(Things { shared }), fake)
    }

    /// The state of thing `id`; `delete_timeout` as in the `timeouts` block.
    fn state(id: &str, delete_timeout: Option<&str>) -> ThingState {
        ThingState {
            id: Value::Value(id.into()),
            name: Value::Value("stale".into()),
            note: Value::Value("kept".into()),
            delete_timeout: delete_timeout.map_or(Value::Null, |t| Value::Value(t.into())),
        }
    }

    /// Read of `state`, as Terraform sends it (no private data, no provider meta).
    async fn read(
        resource: &Adapter<Things>,
        diags: &mut Diagnostics,
        state: ThingState,
    ) -> Option<(ThingState, ValueEmpty)> {
        resource
            .read(diags, state, ValueEmpty::default(), ValueEmpty::default())
            .await
    }

    /// Destroy of `state`, as Terraform sends it.
    async fn destroy(
        resource: &Adapter<Things>,
        diags: &mut Diagnostics,
        state: ThingState,
    ) -> Option<()> {
        resource
            .destroy(diags, state, ValueEmpty::default(), ValueEmpty::default())
            .await
    }

    #[tokio::test]
    async fn a_viewer_token_fails_a_plan_that_changes_something_but_not_a_no_op() {
        let (resource, _fake) = start(0).await;
        resource.0.shared.set_whoami(crate::access::Whoami {
            token_id: "v1".into(),
            token_name: "reader".into(),
            role: Role::Viewer,
            tenant_id: Some("t-1".into()),
            tenant_name: Some("demo".into()),
        });
        let mut diags = Diagnostics::default();
        let prior = state("t1", None);
        let unchanged = resource
            .plan_update(
                &mut diags,
                prior.clone(),
                prior.clone(),
                prior.clone(),
                ValueEmpty::default(),
                ValueEmpty::default(),
            )
            .await;
        assert!(unchanged.is_some());
        assert!(
            diags.errors.is_empty(),
            "a no-op needs no role: {:?}",
            diags.errors
        );

        let mut renamed = prior.clone();
        renamed.note = Value::Value("changed".into());
        resource
            .plan_update(
                &mut diags,
                prior.clone(),
                renamed.clone(),
                renamed,
                ValueEmpty::default(),
                ValueEmpty::default(),
            )
            .await;
        resource
            .plan_destroy(
                &mut diags,
                prior,
                ValueEmpty::default(),
                ValueEmpty::default(),
            )
            .await;
        let details: Vec<&str> = diags.errors.iter().map(|d| d.detail.as_ref()).collect();
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(
            details[0].contains(
                "changing thing \"stale\" needs role member in tenant \"demo\"; token \"reader\" has role viewer"
            ),
            "{}",
            details[0]
        );
        assert!(
            details[1].contains("deleting thing \"stale\""),
            "{}",
            details[1]
        );
        assert!(diags
            .errors
            .iter()
            .all(|d| d.summary == "Permission denied"));
    }

    #[tokio::test]
    async fn read_refreshes_the_state_and_a_404_drops_it() {
        let (resource, _fake) = start(0).await;
        let mut diags = Diagnostics::default();
        let (refreshed, _) = read(&resource, &mut diags, state("t1", None))
            .await
            .expect("t1 exists");
        assert_eq!(refreshed.name, Value::Value("one".into()));
        assert_eq!(
            refreshed.note,
            Value::Value("kept".into()),
            "config-only values stay"
        );
        let dropped = read(&resource, &mut diags, state("t2", None)).await;
        assert!(dropped.is_none(), "a 404 drops the resource from the state");
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    }

    #[tokio::test]
    async fn a_failed_read_keeps_the_state_and_says_why() {
        let (resource, fake) = start(0).await;
        fake.broken.store(true, Ordering::SeqCst);
        let mut diags = Diagnostics::default();
        let refreshed = read(&resource, &mut diags, state("t1", None)).await;
        assert_eq!(refreshed.map(|(s, _)| s), Some(state("t1", None)));
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].summary, "The controller failed");
    }

    #[tokio::test]
    async fn destroy_waits_until_the_object_is_gone() {
        let (resource, fake) = start(3).await;
        let mut diags = Diagnostics::default();
        let destroyed = destroy(&resource, &mut diags, state("t1", Some("30s"))).await;
        assert_eq!(destroyed, Some(()), "{:?}", diags.errors);
        // Three looks still saw it, the fourth saw the 404.
        assert_eq!(fake.gets.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn destroy_of_an_object_deleted_by_hand_is_done_at_once() {
        let (resource, fake) = start(3).await;
        let mut diags = Diagnostics::default();
        let destroyed = destroy(&resource, &mut diags, state("t2", Some("30s"))).await;
        assert_eq!(destroyed, Some(()));
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        assert_eq!(fake.gets.load(Ordering::SeqCst), 0, "nothing to wait for");
    }

    #[tokio::test]
    async fn destroy_without_a_wait_trusts_the_delete_answer() {
        let (resource, fake) = start(3).await;
        let mut diags = Diagnostics::default();
        let destroyed = destroy(&resource, &mut diags, state("t1", None)).await;
        assert_eq!(destroyed, Some(()));
        assert_eq!(fake.gets.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_delete_wait_that_times_out_points_at_the_timeouts() {
        let (resource, _fake) = start(usize::MAX).await;
        let mut diags = Diagnostics::default();
        let destroyed = destroy(&resource, &mut diags, state("t1", Some("1s"))).await;
        assert_eq!(destroyed, None, "the object still exists: destroy failed");
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].attribute, AttributePath::new("timeouts"));
        assert!(
            diags.errors[0].detail.contains("the thing still exists"),
            "{}",
            diags.errors[0].detail
        );
    }

    #[tokio::test]
    async fn import_starts_from_the_base_and_a_miss_says_what_to_do() {
        let (resource, _fake) = start(0).await;
        let mut diags = Diagnostics::default();
        let imported = resource.import(&mut diags, "t1".into()).await;
        let expected = ThingState {
            id: Value::Value("t1".into()),
            name: Value::Value("one".into()),
            note: Value::Value("imported".into()),
            delete_timeout: Value::Null,
        };
        assert_eq!(imported.map(|(s, _)| s), Some(expected));
        let missed = resource.import(&mut diags, "t9".into()).await;
        assert!(missed.is_none());
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].summary, "Cannot import: no such thing");
        assert!(
            diags.errors[0].detail.contains("\"t9\"")
                && diags.errors[0].detail.contains("What to do"),
            "{}",
            diags.errors[0].detail
        );
    }

    /// Read one HTTP/1.1 request from `stream`; returns its body.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let body = end + 4;
            if buf.len() >= body + length {
                return String::from_utf8_lossy(&buf[body..body + length]).into_owned();
            }
        }
    }

    #[derive(Deserialize)]
    struct Posted {
        request_id: String,
    }

    #[tokio::test]
    async fn a_create_whose_answer_was_lost_is_sent_again_under_the_same_request_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // The first POST reaches the controller, but its answer is lost (the
        // connection drops); the second is answered.
        let controller = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let lost = read_request(&mut first).await;
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let answered = read_request(&mut second).await;
            let reply = r#"{"id":"t1","name":"one"}"#;
            let response = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            second.write_all(response.as_bytes()).await.unwrap();
            second.shutdown().await.unwrap();
            (lost, answered)
        });
        let client = Client::new(&url, "token", None).unwrap();
        let request = CreateRequest::new("thing", CancellationToken::new());
        let body = serde_json::json!({ "name": "one", "request_id": request.request_id() });
        let mut diags = Diagnostics::default();
        let created: Option<Thing> = request
            .send(&mut diags, || {
                client.request(reqwest::Method::POST, "/v1/things", Some(&body))
            })
            .await;
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        assert_eq!(created.map(|t| t.id), Some("t1".to_string()));
        let (lost, answered) = controller.await.unwrap();
        let lost: Posted = serde_json::from_str(&lost).unwrap();
        let answered: Posted = serde_json::from_str(&answered).unwrap();
        assert_eq!(lost.request_id, answered.request_id);
        assert_ne!(
            lost.request_id,
            CreateRequest::new("thing", CancellationToken::new())
                .request_id()
                .unwrap_or_default(),
            "each create call has its own request_id"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent_again() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let client = Client::new(&url, "token", None).unwrap();
        let request = CreateRequest::new("thing", CancellationToken::new());
        let attempts = AtomicUsize::new(0);
        let mut diags = Diagnostics::default();
        let created: Option<Thing> = request
            .send(&mut diags, || {
                attempts.fetch_add(1, Ordering::SeqCst);
                client.request::<(), _>(reqwest::Method::POST, "/v1/things", None)
            })
            .await;
        assert!(created.is_none());
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert_eq!(
            diags.errors[0].summary,
            "Cannot reach the measurelab controller"
        );
    }
}
