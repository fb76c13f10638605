//! The one implementation of tf-provider's `DataSource` trait for the data
//! sources that read one controller object (`measurelab_node`,
//! `measurelab_vm`, ...).
//!
//! What differs between them (the schema, how the object is found, how it
//! shows in the state, what to say when it is missing) is written in the data
//! source's file as a [`Lookup`]. What they share is written here, once: a
//! missing object is an error on the lookup key that says what to check, any
//! other failure is the client's diagnostic.

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tf_provider::schema::{Attribute, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

use super::views::data_source_schema;
use crate::diagnostics::{self, Operation};
use crate::shared::Shared;

/// A data source that reads one controller object.
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    /// Configuration and result; field names are attribute names.
    type State: Serialize + DeserializeOwned + Send + Sync;
    /// The controller's view of the object.
    type Object: Send + Sync;

    /// What diagnostics call the object ("VM", "measurement task").
    const KIND: &'static str;
    /// What a failed read was doing.
    const READ: Operation = Operation::Read(Self::KIND);
    /// The attribute a missing object is reported on.
    const KEY: &'static str = "name";
    /// Markdown description of the data source.
    const DESCRIPTION: &'static str;

    /// The schema's attributes.
    fn attributes() -> HashMap<String, Attribute>;
    /// Find the object the configuration names. `Ok(None)`: there is none.
    async fn find(
        client: &Client,
        config: &Self::State,
    ) -> Result<Option<Self::Object>, ClientError>;
    /// The state that shows `object`.
    fn view(object: &Self::Object) -> Self::State;
    /// Detail of the diagnostic when [`Self::find`] finds nothing: what was
    /// looked for and what to do.
    fn not_found(config: &Self::State) -> String;
}

/// A `GET` answer with 404 turned into `Ok(None)`, for [`Lookup::find`].
pub fn found<T>(answer: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match answer {
        Ok(object) => Ok(Some(object)),
        Err(err) if err.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

/// The text of a configured string, empty when null.
pub fn configured(value: &Value<String>) -> String {
    value.as_ref_option().cloned().unwrap_or_default()
}

/// A [`Lookup`] as a Terraform data source.
pub struct LookupDataSource<L>(Shared, PhantomData<L>);

impl<L: Lookup> LookupDataSource<L> {
    /// A data source that uses the provider's client.
    pub fn new(shared: Shared) -> Self {
        LookupDataSource(shared, PhantomData)
    }
}

#[async_trait]
impl<L: Lookup> DataSource for LookupDataSource<L> {
    type State<'a> = L::State;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(data_source_schema(L::DESCRIPTION, L::attributes()))
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _provider_meta_state: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let client = self.0.client(diags)?;
        match L::find(&client, &config).await {
            Ok(Some(object)) => Some(L::view(&object)),
            Ok(None) => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new(L::KEY),
                    format!("No such {}", L::KIND),
                    L::not_found(&config),
                );
                None
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, L::READ);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::{Json, Router};
    use serde::Deserialize;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// The controller's view of a test object, and its state.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    struct Thing {
        name: Value<String>,
    }

    /// A lookup with nothing of its own, so the tests see the generic read.
    struct ThingLookup;

    #[async_trait]
    impl Lookup for ThingLookup {
        type State = Thing;
        type Object = Thing;

        const KIND: &'static str = "thing";
        const DESCRIPTION: &'static str = "A thing.";

        fn attributes() -> HashMap<String, Attribute> {
            HashMap::new()
        }

        async fn find(client: &Client, config: &Thing) -> Result<Option<Thing>, ClientError> {
            let path = format!("/v1/things/{}", configured(&config.name));
            found(
                client
                    .request::<(), _>(reqwest::Method::GET, &path, None)
                    .await,
            )
        }

        fn view(thing: &Thing) -> Thing {
            thing.clone()
        }

        fn not_found(config: &Thing) -> String {
            format!("no thing {:?}", configured(&config.name))
        }
    }

    /// A fake controller that holds thing `one`, fails on `broken` and knows
    /// nothing else.
    async fn get_thing(Path(name): Path<String>) -> Result<Json<Thing>, StatusCode> {
        match name.as_str() {
            "one" => Ok(Json(named("one"))),
            "broken" => Err(StatusCode::INTERNAL_SERVER_ERROR),
            _ => Err(StatusCode::NOT_FOUND),
        }
    }

    fn named(name: &str) -> Thing {
        Thing {
            name: Value::Value(name.into()),
        }
    }

    async fn start() -> LookupDataSource<ThingLookup> {
        let app = Router::new().route("/v1/things/:name", get(get_thing));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let shared = Shared::new(CancellationToken::new());
        shared.set_client(Client::new(&url, "token", None).unwrap());
        LookupDataSource::new(shared)
    }

    async fn read(
        source: &LookupDataSource<ThingLookup>,
        name: &str,
    ) -> (Option<Thing>, Diagnostics) {
        let mut diags = Diagnostics::default();
        let state = source
            .read(&mut diags, named(name), ValueEmpty::default())
            .await;
        (state, diags)
    }

    #[tokio::test]
    async fn a_found_object_is_shown() {
        let source = start().await;
        let (state, diags) = read(&source, "one").await;
        assert_eq!(state, Some(named("one")));
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    }

    #[tokio::test]
    async fn a_missing_object_is_an_error_on_the_key_that_says_what_to_check() {
        let source = start().await;
        let (state, diags) = read(&source, "two").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        let error = &diags.errors[0];
        assert_eq!(error.attribute, AttributePath::new("name"));
        assert_eq!(error.summary, "No such thing");
        assert!(
            error.detail.contains("no thing \"two\""),
            "{}",
            error.detail
        );
    }

    #[tokio::test]
    async fn another_failure_is_the_clients_diagnostic() {
        let source = start().await;
        let (state, diags) = read(&source, "broken").await;
        assert_eq!(state, None);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(diags.errors[0].summary, "The controller failed");
        assert_eq!(diags.errors[0].attribute, AttributePath::default());
    }
}
