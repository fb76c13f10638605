//! Typed HTTP client for the public API.

mod node_identity;

use percent_encoding::{utf8_percent_encode, AsciiSet, PercentEncode, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{
    ApiToken, ApiTokenCreate, ApiTokenCreated, ApiTokenList, Tenant, TenantCreate, TenantList,
    TenantPatch, WhoAmI,
};
use crate::http::{
    Appliance, ApplianceCreate, ApplianceFile, ApplianceList, Deployment, DeploymentCreate,
    ErrorBody, EventList, LogList, Node, NodeList, NodePatch, Platform, PlatformCreate,
    PlatformList, PlatformPatch, Program, ProgramCreate, QosPolicy, QosPolicyCreate, QosPolicyList,
    QosPolicyPatch, RequestOptions, ResultList, ResultRecord, Task, TaskCreate, TaskList, Vm,
    VmCreate, VmList, VmPatch,
};

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`):
/// what remains may stand in a path segment or a query value as it is.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for one URL path segment or query value, so a name
/// holding `/`, `?`, `&`, `#` or a space addresses that object and no other.
pub fn url_component(text: &str) -> PercentEncode<'_> {
    utf8_percent_encode(text, URL_COMPONENT)
}

/// The longest a request may take, answer included.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a TCP connect to one endpoint may take. A host that is down
/// sends no RST, so without this the connect waits out the kernel's SYN
/// retries (or [`REQUEST_TIMEOUT`]) before the next endpoint is tried, and
/// with a dead first replica every request of the CLI or the provider would
/// stall that long. 5 s leaves room for a lost SYN (retried after 1 s and
/// again 2 s later) on a slow path.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Errors from the public API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached at all.
    #[error("cannot reach the measurelab controller at {endpoint}: {source}")]
    Unreachable {
        /// Endpoint that was tried.
        endpoint: String,
        /// Underlying transport error.
        source: reqwest::Error,
    },
    /// The TLS handshake failed on the controller's certificate: `ca_cert`
    /// is not the CA that signed it, or none was given for a private CA.
    /// Told apart from [`Unreachable`](Self::Unreachable), whose advice
    /// (start the controller) would send the user the wrong way.
    #[error("the measurelab controller at {endpoint} presented a certificate this client does not trust: {reason}")]
    Untrusted {
        /// Endpoint that was tried.
        endpoint: String,
        /// What the TLS library found wrong with the certificate.
        reason: String,
    },
    /// The controller answered with an error body.
    #[error("controller refused the request ({status}, {code}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Message from the controller.
        message: String,
        /// Offending field, if any.
        field: Option<String>,
    },
    /// The controller answered with something that is not the expected JSON.
    #[error("unexpected response from the controller: {0}")]
    Decode(String),
    /// The client could not be configured (bad CA certificate, bad endpoint).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A local file to send could not be read.
    #[error("{0}")]
    Source(String),
}

impl ClientError {
    /// True for a 404 from the controller.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// The controller's error answer (`status`, body `bytes`) as a [`ClientError`].
fn api_error(status: reqwest::StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
            field: body.error.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "unknown".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
            field: None,
        },
    }
}

/// How long [`Client::upload_program`] keeps sending an upload the
/// controller refused with `503` and `Retry-After` (all upload slots taken).
/// The same as [`REQUEST_TIMEOUT`]: a slot frees once an upload ends, and
/// none lasts longer than that.
pub const UPLOAD_BUSY_WAIT: std::time::Duration = REQUEST_TIMEOUT;

/// The pause a `Retry-After` header in whole seconds asks for (the controller
/// sends no HTTP dates).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(std::time::Duration::from_secs)
}

/// A program to upload from a local file ([`Client::upload_program`]).
#[derive(Debug, Clone, Copy)]
pub struct ProgramUpload<'a> {
    /// Unique program name.
    pub name: &'a str,
    /// The file whose content is the program.
    pub path: &'a std::path::Path,
    /// Expected hex SHA-256: the controller refuses content with another
    /// (field `sha256`), so a file that changed after it was hashed is not
    /// stored.
    pub sha256: Option<&'a str>,
    /// Idempotency key.
    pub request_id: Option<&'a str>,
    /// Tenant (id or name) to create it in, as `?tenant=` (the JSON body's
    /// `tenant`): a tenant token may only name its own.
    pub tenant: Option<&'a str>,
}

/// Query parameter choosing how the controller treats unknown body fields.
pub const FIELD_VALIDATION: &str = "fieldValidation";

/// The version in this client's `User-Agent`, by which the controller
/// judges it against the version-skew policy (docs/version-skew.md). The
/// workspace versions every crate alike, so this is the provider's and the
/// CLI's version too.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Distinct `Warning` texts a client keeps until they are taken; the
/// controller sends one or two, a hostile one could send thousands.
const MAX_WARNINGS: usize = 16;

/// Client for `/v1/`.
///
/// It may know several endpoints (controller replicas sharing one store,
/// given as `https://a:7070,https://b:7070`). It sends to the one that last
/// answered; when a request cannot even connect there it goes on to the
/// next, so a dead replica costs one refused connection. A request that
/// reached a controller and then lost its answer goes to the next endpoint
/// only if its method is idempotent (a read, a PUT, a DELETE); any other is
/// not sent again here: only the caller knows whether that is safe (the
/// provider resends a create under the same `request_id`), and its next
/// call starts at the next endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoints: std::sync::Arc<[String]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    /// `measurelab-<component>/<version>`, sent with every request.
    user_agent: reqwest::header::HeaderValue,
    /// The texts of the answers' `Warning: 299` headers (a version outside
    /// the controller's policy), until [`Client::take_warnings`].
    warnings: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The text of an RFC 7234 `Warning` value (`299 - "text"`, maybe with a
/// quoted date after it), unescaped; `None` when it holds no quoted text.
fn warning_text(value: &str) -> Option<String> {
    let (_code_and_agent, quoted) = value.split_once('"')?;
    let mut text = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return Some(text),
            c => text.push(c),
        }
    }
    None
}

/// The endpoints of a comma-separated list (`https://a:7070,https://b:7070`;
/// one endpoint is a list of one), trimmed, with no trailing `/`. Empty
/// entries are an error, as is an empty list.
pub fn split_endpoints(list: &str) -> Result<Vec<String>, String> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .collect();
    if endpoints.iter().any(String::is_empty) {
        return Err(format!(
            "{list:?} has an empty entry: give one URL, or several separated by commas"
        ));
    }
    Ok(endpoints)
}

/// What rustls found wrong with the server's certificate, if that is why
/// `error` (a request that never got an answer) failed. reqwest wraps the
/// handshake's `rustls::Error` in `io::Error`s (two, nested), whose
/// `source()` skips the wrapped error itself, so the walk goes into them.
fn certificate_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let refusal = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<rustls::Error>().and_then(|tls| {
            matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
            .then(|| tls.to_string())
        })
    };
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(reason) = refusal(e) {
            return Some(reason);
        }
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

/// Whether doing `method` twice has the effect of doing it once (RFC 9110
/// §9.2.2), so a request whose answer was lost may go to another replica.
fn is_idempotent(method: &reqwest::Method) -> bool {
    use reqwest::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// `url`, made on endpoint `from`, on endpoint `to` instead: the same path
/// below the endpoint's own (a controller behind a proxy may have one) and
/// the same query.
fn rebase(url: &reqwest::Url, from: &str, to: &str) -> Result<reqwest::Url, ClientError> {
    let base_path = |endpoint: &str| -> Result<String, ClientError> {
        let parsed: reqwest::Url = endpoint
            .parse()
            .map_err(|e| ClientError::Config(format!("endpoint {endpoint:?}: {e}")))?;
        Ok(parsed.path().trim_end_matches('/').to_string())
    };
    let below = url
        .path()
        .strip_prefix(&base_path(from)?)
        .unwrap_or(url.path());
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = format!("{}{below}{query}", to.trim_end_matches('/'));
    target
        .parse()
        .map_err(|e| ClientError::Config(format!("endpoint {to:?}: {e}")))
}

/// Whether `host` (from a URL: a name, an IPv4 or a bracketed IPv6
/// address) is this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuse plaintext `http://` to anything but loopback unless `insecure`:
/// the bearer token, and everything it can do, would cross the network in
/// clear. The error says why; the caller names the setting.
pub fn check_transport(endpoints: &str, insecure: bool) -> Result<(), String> {
    split_endpoints(endpoints)?
        .iter()
        .try_for_each(|endpoint| check_one_transport(endpoint, insecure))
}

fn check_one_transport(endpoint: &str, insecure: bool) -> Result<(), String> {
    let Some(host) = plaintext_remote_host(endpoint) else {
        return Ok(());
    };
    if insecure {
        return Ok(());
    }
    Err(format!(
        "{endpoint:?} is plaintext http:// to {host}, which is not loopback: the token and every \
         request would cross the network unencrypted. Use https:// (with the controller's CA as \
         ca_cert), or set insecure = true to accept that"
    ))
}

/// The host of `endpoint` when it is plaintext `http://` to a host that is
/// not loopback: what crosses the network in clear. `None` for `https://`
/// and for loopback.
pub fn plaintext_remote_host(endpoint: &str) -> Option<&str> {
    let rest = endpoint.strip_prefix("http://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        // A bracketed IPv6 address keeps its colons.
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    (!is_loopback_host(host)).then_some(host)
}

impl Client {
    /// Build a client for `endpoint` (e.g. `http://127.0.0.1:7070`, or
    /// several replicas' separated by commas), with an optional PEM CA
    /// certificate for TLS endpoints.
    pub fn new(
        endpoint: &str,
        token: &str,
        ca_cert_pem: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(pem) = ca_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                ClientError::Config(format!("ca_cert is not a PEM certificate: {e}"))
            })?;
            // The given CA is the only trust: a controller's private CA
            // must not be bypassable by any public CA's certificate.
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let endpoints = split_endpoints(endpoint).map_err(ClientError::Config)?;
        Ok(Client {
            http,
            endpoints: endpoints.into(),
            current: Default::default(),
            token: token.to_string(),
            user_agent: Self::user_agent_of("client"),
            warnings: Default::default(),
        })
    }

    /// Say `measurelab-<component>/<version>` in the `User-Agent`
    /// (`provider`, `cli`), so the controller can tell which client is
    /// outside its version policy.
    pub fn identifying_as(mut self, component: &str) -> Self {
        self.user_agent = Self::user_agent_of(component);
        self
    }

    fn user_agent_of(component: &str) -> reqwest::header::HeaderValue {
        reqwest::header::HeaderValue::from_str(&format!("measurelab-{component}/{CLIENT_VERSION}"))
            .unwrap_or(reqwest::header::HeaderValue::from_static(
                "measurelab-client",
            ))
    }

    /// The controller's warnings since the last call, each once: today a
    /// client version outside the controller's policy
    /// (docs/version-skew.md), which the caller shows its user.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn keep_warnings(&self, headers: &reqwest::header::HeaderMap) {
        let mut texts = headers
            .get_all(reqwest::header::WARNING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(warning_text)
            .peekable();
        if texts.peek().is_none() {
            return;
        }
        let mut kept = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        for text in texts {
            if kept.len() < MAX_WARNINGS && !kept.contains(&text) {
                kept.push(text);
            }
        }
    }

    fn build(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Request, ClientError> {
        req.header(reqwest::header::USER_AGENT, self.user_agent.clone())
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the request: {e}")))
    }

    /// The endpoint this client sends its next request to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current_index()]
    }

    fn current_index(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.endpoints.len()
    }

    /// `path` (with its query) at the current endpoint.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// Sends `request` (built on [`Self::url`]), going on to the next
    /// endpoint while the connection is refused (see [`Client`]).
    async fn dispatch(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, ClientError> {
        let count = self.endpoints.len();
        let mut index = self.current_index();
        let mut left = count;
        loop {
            left -= 1;
            // A streamed body cannot be sent twice: such a request gets
            // one endpoint.
            let spare = (left > 0).then(|| request.try_clone()).flatten();
            let source = match self.http.execute(request).await {
                Ok(response) => {
                    self.current
                        .store(index, std::sync::atomic::Ordering::Relaxed);
                    self.keep_warnings(response.headers());
                    return Ok(response);
                }
                Err(source) => source,
            };
            let next = (index + 1) % count;
            self.current
                .store(next, std::sync::atomic::Ordering::Relaxed);
            // Never connected: nothing reached the controller. Connected but
            // no answer: only an idempotent request (RFC 9110 §9.2.2) may be
            // sent again, since the dead replica may have done it already.
            let resend =
                source.is_connect() || spare.as_ref().is_some_and(|r| is_idempotent(r.method()));
            match spare {
                Some(mut again) if resend => {
                    *again.url_mut() =
                        rebase(again.url(), &self.endpoints[index], &self.endpoints[next])?;
                    request = again;
                    index = next;
                }
                _ => {
                    let endpoint = self.endpoints[index].clone();
                    return Err(match certificate_refusal(&source) {
                        Some(reason) => ClientError::Untrusted { endpoint, reason },
                        None => ClientError::Unreachable { endpoint, source },
                    });
                }
            }
        }
    }

    /// Every item of a list route, following `next_cursor` page by page
    /// (`path` may carry a query of its own).
    pub async fn list_all<L: DeserializeOwned + crate::http::Paged>(
        &self,
        path: &str,
    ) -> Result<Vec<L::Item>, ClientError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page_path = match &cursor {
                None => path.to_string(),
                Some(cursor) => {
                    let join = if path.contains('?') { '&' } else { '?' };
                    format!("{path}{join}after={}", url_component(cursor))
                }
            };
            let page: L = self
                .request::<(), _>(reqwest::Method::GET, &page_path, None)
                .await?;
            let (mut got, next) = page.into_page();
            items.append(&mut got);
            match next {
                // A server repeating a cursor would loop forever.
                Some(next) if cursor.as_ref() != Some(&next) => cursor = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// Send a request with an optional JSON body and decode the JSON answer.
    pub async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            // Strict is safe from this client: request bodies leave out every
            // optional field that is not set, so an older controller only
            // sees a field it lacks when a user asked for that setting, and
            // then failing beats silently dropping it (docs/version-skew.md).
            req = req.query(&[(FIELD_VALIDATION, "Strict")]).json(body);
        }
        self.send(req, path).await
    }

    /// Sends `req` (to `path`) and decodes the answer or the API error.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T, ClientError> {
        let resp = self.dispatch(self.build(req)?).await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<Node>, ClientError> {
        self.list_all::<NodeList>("/v1/nodes").await
    }

    /// `GET /v1/nodes/{id_or_name}`.
    pub async fn get_node(&self, id_or_name: &str) -> Result<Node, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/nodes/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/nodes/{id_or_name}/logs`.
    pub async fn node_logs(&self, id_or_name: &str) -> Result<LogList, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/nodes/{}/logs", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/events?after=`.
    pub async fn events(&self, after: i64) -> Result<EventList, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/events?after={after}"),
            None,
        )
        .await
    }

    /// `PATCH /v1/nodes/{id_or_name}`: replace the node's labels.
    pub async fn set_node_labels(
        &self,
        id_or_name: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Node, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{}", url_component(id_or_name)),
            Some(&NodePatch {
                labels,
                flow_export: None,
                cpu_overcommit: None,
                memory_overcommit: None,
            }),
        )
        .await
    }

    /// `PATCH /v1/nodes/{id_or_name}`: labels and overcommit ratios.
    pub async fn patch_node(
        &self,
        id_or_name: &str,
        patch: &NodePatch,
    ) -> Result<Node, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{}", url_component(id_or_name)),
            Some(patch),
        )
        .await
    }

    // ---- Platforms, QoS policies, appliances, VMs, programs, tasks, results ----

    /// `GET /v1/platforms`.
    pub async fn list_platforms(&self) -> Result<Vec<Platform>, ClientError> {
        self.list_all::<PlatformList>("/v1/platforms").await
    }

    /// `POST /v1/platforms`.
    pub async fn create_platform(&self, body: &PlatformCreate) -> Result<Platform, ClientError> {
        self.request(reqwest::Method::POST, "/v1/platforms", Some(body))
            .await
    }

    /// `GET /v1/platforms/{id_or_name}`.
    pub async fn get_platform(&self, id_or_name: &str) -> Result<Platform, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/platforms/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/platforms/{id_or_name}/flows?since=&until=` (RFC 3339 times;
    /// `None`: the last hour up to now), every page, oldest first.
    pub async fn platform_flows(
        &self,
        id_or_name: &str,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Vec<crate::http::Flow>, ClientError> {
        let mut path = format!(
            "/v1/platforms/{}/flows?format=json",
            url_component(id_or_name)
        );
        for (name, value) in [("since", since), ("until", until)] {
            if let Some(value) = value {
                path.push_str(&format!("&{name}={}", url_component(value)));
            }
        }
        let mut flows = self.list_all::<crate::http::FlowList>(&path).await?;
        // Each page is sorted, but the pages follow the collector's files,
        // which the records of one moment can straddle.
        flows.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
        Ok(flows)
    }

    /// `GET /v1/platforms/{id_or_name}/points`: the latest point list of the
    /// platform's MSCS.
    pub async fn platform_points(
        &self,
        id_or_name: &str,
    ) -> Result<crate::http::PlatformPoints, ClientError> {
        let path = format!("/v1/platforms/{}/points", url_component(id_or_name));
        self.request::<(), _>(reqwest::Method::GET, &path, None)
            .await
    }

    /// `GET /v1/platforms/{id_or_name}/control-key`: the key of the
    /// platform's MSCS and points (owner or member).
    pub async fn platform_control_key(
        &self,
        id_or_name: &str,
    ) -> Result<crate::http::PlatformControlKey, ClientError> {
        let path = format!("/v1/platforms/{}/control-key", url_component(id_or_name));
        self.request::<(), _>(reqwest::Method::GET, &path, None)
            .await
    }

    /// `POST /v1/platforms/{id_or_name}/control-key/rotate`: a fresh key for
    /// the platform (empty `control_key` when `request_id` replays an earlier
    /// rotation).
    pub async fn rotate_platform_control_key(
        &self,
        id_or_name: &str,
        request_id: Option<String>,
    ) -> Result<crate::http::PlatformControlKey, ClientError> {
        let path = format!(
            "/v1/platforms/{}/control-key/rotate",
            url_component(id_or_name)
        );
        self.request(
            reqwest::Method::POST,
            &path,
            Some(&RequestOptions { request_id }),
        )
        .await
    }

    /// `PATCH /v1/platforms/{id_or_name}`.
    pub async fn update_platform(
        &self,
        id_or_name: &str,
        body: &PlatformPatch,
    ) -> Result<Platform, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/platforms/{}", url_component(id_or_name)),
            Some(body),
        )
        .await
    }

    /// `DELETE /v1/platforms/{id_or_name}`.
    pub async fn delete_platform(&self, id_or_name: &str) -> Result<Platform, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/platforms/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/platforms/{id_or_name}/peers`.
    pub async fn list_platform_peers(
        &self,
        platform: &str,
    ) -> Result<Vec<crate::http::PlatformPeer>, ClientError> {
        self.list_all::<crate::http::PlatformPeerList>(&format!(
            "/v1/platforms/{}/peers",
            url_component(platform)
        ))
        .await
    }

    /// `POST /v1/platforms/{id_or_name}/peers`: the answer carries the
    /// private key when the controller generated it (this once).
    pub async fn create_platform_peer(
        &self,
        platform: &str,
        body: &crate::http::PlatformPeerCreate,
    ) -> Result<crate::http::PlatformPeer, ClientError> {
        self.request(
            reqwest::Method::POST,
            &format!("/v1/platforms/{}/peers", url_component(platform)),
            Some(body),
        )
        .await
    }

    /// `GET /v1/platforms/{id_or_name}/peers/{id_or_name}`.
    pub async fn get_platform_peer(
        &self,
        platform: &str,
        peer: &str,
    ) -> Result<crate::http::PlatformPeer, ClientError> {
        self.request::<(), _>(reqwest::Method::GET, &peer_path(platform, peer), None)
            .await
    }

    /// `DELETE /v1/platforms/{id_or_name}/peers/{id_or_name}`.
    pub async fn delete_platform_peer(
        &self,
        platform: &str,
        peer: &str,
    ) -> Result<crate::http::PlatformPeer, ClientError> {
        self.request::<(), _>(reqwest::Method::DELETE, &peer_path(platform, peer), None)
            .await
    }

    /// `POST /v1/platforms/{id_or_name}/start` or `/pause` (`action`).
    pub async fn platform_power(
        &self,
        id_or_name: &str,
        action: &str,
    ) -> Result<Platform, ClientError> {
        self.request(
            reqwest::Method::POST,
            &format!(
                "/v1/platforms/{}/{}",
                url_component(id_or_name),
                url_component(action)
            ),
            Some(&RequestOptions::default()),
        )
        .await
    }

    /// `GET /v1/qos_policies`.
    pub async fn list_qos_policies(&self) -> Result<Vec<QosPolicy>, ClientError> {
        self.list_all::<QosPolicyList>("/v1/qos_policies").await
    }

    /// `POST /v1/qos_policies`.
    pub async fn create_qos_policy(
        &self,
        body: &QosPolicyCreate,
    ) -> Result<QosPolicy, ClientError> {
        self.request(reqwest::Method::POST, "/v1/qos_policies", Some(body))
            .await
    }

    /// `GET /v1/qos_policies/{id_or_name}`.
    pub async fn get_qos_policy(&self, id_or_name: &str) -> Result<QosPolicy, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/qos_policies/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `PATCH /v1/qos_policies/{id_or_name}`.
    pub async fn update_qos_policy(
        &self,
        id_or_name: &str,
        body: &QosPolicyPatch,
    ) -> Result<QosPolicy, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/qos_policies/{}", url_component(id_or_name)),
            Some(body),
        )
        .await
    }

    /// `DELETE /v1/qos_policies/{id_or_name}`.
    pub async fn delete_qos_policy(&self, id_or_name: &str) -> Result<QosPolicy, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/qos_policies/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/appliances`.
    pub async fn list_appliances(&self) -> Result<Vec<Appliance>, ClientError> {
        self.list_all::<ApplianceList>("/v1/appliances").await
    }

    /// `POST /v1/appliances`.
    pub async fn create_appliance(&self, body: &ApplianceCreate) -> Result<Appliance, ClientError> {
        self.request(reqwest::Method::POST, "/v1/appliances", Some(body))
            .await
    }

    /// `GET /v1/appliances/{id_or_name}`.
    pub async fn get_appliance(&self, id_or_name: &str) -> Result<Appliance, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/appliances/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `DELETE /v1/appliances/{id_or_name}`.
    pub async fn delete_appliance(&self, id_or_name: &str) -> Result<Appliance, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/appliances/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `PUT /v1/appliance_files/{sha256}`: uploads `body` (streamed, e.g.
    /// from a file), which the controller stores only if its SHA-256 is
    /// `sha256`.
    pub async fn upload_appliance_file(
        &self,
        sha256: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<ApplianceFile, ClientError> {
        let path = format!("/v1/appliance_files/{}", url_component(sha256));
        let req = self
            .http
            .put(self.url(&path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            // An image of gigabytes takes longer than the default timeout.
            .timeout(std::time::Duration::from_secs(3600))
            .body(body.into());
        self.send(req, &path).await
    }

    /// `GET /v1/vms` (optionally `?platform=&node=`, given as `query` without `?`).
    pub async fn list_vms(&self, query: &str) -> Result<Vec<Vm>, ClientError> {
        let path = if query.is_empty() {
            "/v1/vms".to_string()
        } else {
            format!("/v1/vms?{query}")
        };
        self.list_all::<VmList>(&path).await
    }

    /// `POST /v1/vms`.
    pub async fn create_vm(&self, body: &VmCreate) -> Result<Vm, ClientError> {
        self.request(reqwest::Method::POST, "/v1/vms", Some(body))
            .await
    }

    /// `POST /v1/vms/{id_or_name}/exec`: opens an exec or copy session and
    /// returns the upgraded connection to drive with
    /// [`crate::exec::drive_session`]. Refusals (bad field, unknown VM, a
    /// node without an exec channel) come back as [`ClientError::Api`].
    pub async fn exec_open(
        &self,
        id_or_name: &str,
        open: &crate::exec::ExecOpen,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let path = format!("/v1/vms/{}/exec", url_component(id_or_name));
        let request = self
            .http
            .post(self.url(&path))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, crate::exec::EXEC_UPGRADE_PROTOCOL)
            .json(open);
        let resp = self.dispatch(self.build(request)?).await?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        resp.upgrade()
            .await
            .map_err(|e| ClientError::Decode(format!("{path}: upgrade failed: {e}")))
    }

    /// `GET /v1/vms/{id_or_name}` (name: `platform/name` or a unique name).
    pub async fn get_vm(&self, id_or_name: &str) -> Result<Vm, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/vms/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/vms/{id_or_name}/usage`: the guest's usage series over
    /// `since`..`until` (RFC 3339; default the last hour) in steps of
    /// `step_seconds` (default chosen by the controller).
    pub async fn vm_usage(
        &self,
        id_or_name: &str,
        since: Option<&str>,
        until: Option<&str>,
        step_seconds: Option<u32>,
    ) -> Result<crate::http::VmUsage, ClientError> {
        let step = step_seconds.map(|s| s.to_string());
        let mut query = Vec::new();
        for (name, value) in [
            ("since", since),
            ("until", until),
            ("step", step.as_deref()),
        ] {
            if let Some(value) = value {
                query.push(format!("{name}={}", url_component(value)));
            }
        }
        let mut path = format!("/v1/vms/{}/usage", url_component(id_or_name));
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.request::<(), _>(reqwest::Method::GET, &path, None)
            .await
    }

    /// `PATCH /v1/vms/{id_or_name}`.
    pub async fn update_vm(&self, id_or_name: &str, body: &VmPatch) -> Result<Vm, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/vms/{}", url_component(id_or_name)),
            Some(body),
        )
        .await
    }

    /// `DELETE /v1/vms/{id_or_name}[?force=true]`: returns the VM marked deleting
    /// (or as it was, when forced).
    pub async fn delete_vm(&self, id_or_name: &str, force: bool) -> Result<Vm, ClientError> {
        let path = if force {
            format!("/v1/vms/{}?force=true", url_component(id_or_name))
        } else {
            format!("/v1/vms/{}", url_component(id_or_name))
        };
        self.request::<(), _>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `POST /v1/programs`.
    pub async fn create_program(&self, body: &ProgramCreate) -> Result<Program, ClientError> {
        self.request(reqwest::Method::POST, "/v1/programs", Some(body))
            .await
    }

    /// `POST /v1/programs` with the file at `upload.path` as the raw
    /// `application/octet-stream` body, read from disk as it is sent, so a
    /// program of up to 64 MiB is never held in memory (the JSON route would
    /// hold it, and its base64, at once).
    ///
    /// The controller answers `503` with `Retry-After` while it receives as
    /// many uploads as `--max-concurrent-uploads` allows; the upload is then
    /// sent again, the file opened anew (a streamed body cannot be replayed),
    /// for at most [`UPLOAD_BUSY_WAIT`] in all.
    pub async fn upload_program(&self, upload: &ProgramUpload<'_>) -> Result<Program, ClientError> {
        let mut query = vec![("name", upload.name)];
        query.extend(upload.sha256.map(|sha256| ("sha256", sha256)));
        query.extend(upload.request_id.map(|id| ("request_id", id)));
        query.extend(upload.tenant.map(|tenant| ("tenant", tenant)));
        let waited_until = std::time::Instant::now() + UPLOAD_BUSY_WAIT;
        // dispatch() cannot replay a streamed body on the next replica
        // itself; a refused connection sent nothing, so it is sent again
        // here, where the file can be opened anew.
        let mut refused = 0;
        loop {
            let file = tokio::fs::File::open(upload.path).await.map_err(|e| {
                ClientError::Source(format!("cannot read {}: {e}", upload.path.display()))
            })?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let req = self
                .http
                .post(self.url("/v1/programs"))
                .bearer_auth(&self.token)
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body);
            let resp = match self.dispatch(self.build(req)?).await {
                Err(ClientError::Unreachable { source, .. })
                    if source.is_connect() && refused + 1 < self.endpoints.len() =>
                {
                    refused += 1;
                    continue;
                }
                resp => resp?,
            };
            let status = resp.status();
            let retry_after = (status == reqwest::StatusCode::SERVICE_UNAVAILABLE)
                .then(|| retry_after(resp.headers()))
                .flatten();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Decode(format!("/v1/programs: {e}")));
            }
            match retry_after {
                Some(pause) if std::time::Instant::now() + pause <= waited_until => {
                    tokio::time::sleep(pause).await;
                }
                _ => return Err(api_error(status, &bytes)),
            }
        }
    }

    /// `GET /v1/programs/{id_or_name}`.
    pub async fn get_program(&self, id_or_name: &str) -> Result<Program, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/programs/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `DELETE /v1/programs/{id_or_name}`.
    pub async fn delete_program(&self, id_or_name: &str) -> Result<Program, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/programs/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `POST /v1/deployments`.
    pub async fn create_deployment(
        &self,
        body: &DeploymentCreate,
    ) -> Result<Deployment, ClientError> {
        self.request(reqwest::Method::POST, "/v1/deployments", Some(body))
            .await
    }

    /// `GET /v1/deployments/{id}`.
    pub async fn get_deployment(&self, id: &str) -> Result<Deployment, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/deployments/{}", url_component(id)),
            None,
        )
        .await
    }

    /// `PATCH /v1/deployments/{id}`: changes the outputs; the runs go on.
    pub async fn update_deployment(
        &self,
        id: &str,
        body: &crate::http::DeploymentPatch,
    ) -> Result<Deployment, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/deployments/{}", url_component(id)),
            Some(body),
        )
        .await
    }

    /// `GET /v1/deployments/{id}/outputs`: each VM's declared output files.
    pub async fn deployment_outputs(
        &self,
        id: &str,
    ) -> Result<crate::http::DeploymentOutputs, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/deployments/{}/outputs", url_component(id)),
            None,
        )
        .await
    }

    /// `GET /v1/deployments/{id}/outputs/{output}[?vm=]`: the response
    /// whose body is the file (read it with `chunk()`); its length and
    /// [`crate::http::OUTPUT_SHA256_HEADER`] say what must arrive. Refusals
    /// come back as [`ClientError::Api`]. Not bounded by the client's
    /// request timeout: a large file takes as long as the link needs.
    pub async fn download_output(
        &self,
        id: &str,
        output: &str,
        vm: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut path = format!(
            "/v1/deployments/{}/outputs/{}",
            url_component(id),
            url_component(output)
        );
        if let Some(vm) = vm {
            path.push_str(&format!("?vm={}", url_component(vm)));
        }
        let request = self
            .http
            .get(self.url(&path))
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(24 * 3600));
        let resp = self.dispatch(self.build(request)?).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(resp)
    }

    /// `DELETE /v1/deployments/{id}`: stops every run.
    pub async fn delete_deployment(&self, id: &str) -> Result<Deployment, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/deployments/{}", url_component(id)),
            None,
        )
        .await
    }

    /// `GET /v1/tasks`.
    pub async fn list_tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.list_all::<TaskList>("/v1/tasks").await
    }

    /// `POST /v1/tasks`.
    pub async fn create_task(&self, body: &TaskCreate) -> Result<Task, ClientError> {
        self.request(reqwest::Method::POST, "/v1/tasks", Some(body))
            .await
    }

    /// `GET /v1/tasks/{id_or_name}`.
    pub async fn get_task(&self, id_or_name: &str) -> Result<Task, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/tasks/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `DELETE /v1/tasks/{id_or_name}`.
    pub async fn delete_task(&self, id_or_name: &str) -> Result<Task, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/tasks/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/whoami`: the token's role and tenant.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.request::<(), _>(reqwest::Method::GET, "/v1/whoami", None)
            .await
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ClientError> {
        self.list_all::<TenantList>("/v1/tenants").await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(&self, body: &TenantCreate) -> Result<Tenant, ClientError> {
        self.request(reqwest::Method::POST, "/v1/tenants", Some(body))
            .await
    }

    /// `GET /v1/tenants/{id_or_name}`.
    pub async fn get_tenant(&self, id_or_name: &str) -> Result<Tenant, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/tenants/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `PATCH /v1/tenants/{id_or_name}`.
    pub async fn update_tenant(
        &self,
        id_or_name: &str,
        body: &TenantPatch,
    ) -> Result<Tenant, ClientError> {
        self.request(
            reqwest::Method::PATCH,
            &format!("/v1/tenants/{}", url_component(id_or_name)),
            Some(body),
        )
        .await
    }

    /// `DELETE /v1/tenants/{id_or_name}`.
    pub async fn delete_tenant(&self, id_or_name: &str) -> Result<Tenant, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/tenants/{}", url_component(id_or_name)),
            None,
        )
        .await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, ClientError> {
        self.list_all::<ApiTokenList>("/v1/tokens").await
    }

    /// `POST /v1/tokens`: the answer carries the secret, this once.
    pub async fn create_token(
        &self,
        body: &ApiTokenCreate,
    ) -> Result<ApiTokenCreated, ClientError> {
        self.request(reqwest::Method::POST, "/v1/tokens", Some(body))
            .await
    }

    /// `GET /v1/tokens/{id}`.
    pub async fn get_token(&self, id: &str) -> Result<ApiToken, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/tokens/{}", url_component(id)),
            None,
        )
        .await
    }

    /// `DELETE /v1/tokens/{id}`: revoke.
    pub async fn revoke_token(&self, id: &str) -> Result<ApiToken, ClientError> {
        self.request::<(), _>(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{}", url_component(id)),
            None,
        )
        .await
    }

    /// `GET /v1/results?...` (`query` without `?`, e.g. `task=t1&since=...`).
    pub async fn list_results(&self, query: &str) -> Result<Vec<ResultRecord>, ClientError> {
        let list: ResultList = self
            .request::<(), _>(reqwest::Method::GET, &format!("/v1/results?{query}"), None)
            .await?;
        Ok(list.results)
    }

    /// `POST /v1/results`: store a result document that carries `task_id`.
    pub async fn post_result(
        &self,
        document: &serde_json::Value,
    ) -> Result<ResultRecord, ClientError> {
        self.request(reqwest::Method::POST, "/v1/results", Some(document))
            .await
    }

    /// `GET /v1/results/latest?task=`.
    pub async fn latest_result(&self, task: &str) -> Result<ResultRecord, ClientError> {
        self.request::<(), _>(
            reqwest::Method::GET,
            &format!("/v1/results/latest?task={}", url_component(task)),
            None,
        )
        .await
    }
}

/// `/v1/platforms/{platform}/peers/{peer}`, each part escaped.
fn peer_path(platform: &str, peer: &str) -> String {
    format!(
        "/v1/platforms/{}/peers/{}",
        url_component(platform),
        url_component(peer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in controller for one request: it answers `{}` with
    /// `extra_headers` (each ending in CRLF) and yields the request head
    /// the client sent.
    async fn answer_once(extra_headers: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before the end of the head");
                head.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\n{extra_headers}content-length: 2\r\nconnection: close\r\n\r\n{{}}"
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&head).into_owned()
        });
        (endpoint, server)
    }

    /// The request line a real `Client` sends for `method` with or without
    /// a body, read off a socket.
    async fn request_line(method: reqwest::Method, body: Option<serde_json::Value>) -> String {
        let (endpoint, server) = answer_once("").await;
        let client = Client::new(&endpoint, "t", None).unwrap();
        let _: serde_json::Value = client
            .request(method, "/v1/results?task=a", body.as_ref())
            .await
            .unwrap();
        let head = server.await.unwrap();
        head.lines().next().unwrap().to_string()
    }

    #[tokio::test]
    async fn bodies_ask_for_strict_field_validation() {
        assert_eq!(
            request_line(reqwest::Method::POST, Some(serde_json::json!({"a": 1}))).await,
            "POST /v1/results?task=a&fieldValidation=Strict HTTP/1.1"
        );
        assert_eq!(
            request_line(reqwest::Method::GET, None).await,
            "GET /v1/results?task=a HTTP/1.1"
        );
    }

    /// A client identifying as `component` sends one GET to a stand-in
    /// that answers with `warnings`: the request head it sent and the
    /// warnings it kept, taken twice.
    async fn warned(component: &str, warnings: &'static str) -> (String, Vec<String>, Vec<String>) {
        let (endpoint, server) = answer_once(warnings).await;
        let client = Client::new(&endpoint, "t", None)
            .unwrap()
            .identifying_as(component);
        let _: serde_json::Value = client
            .request::<(), _>(reqwest::Method::GET, "/v1/whoami", None)
            .await
            .unwrap();
        let first = client.take_warnings();
        let head = server.await.unwrap().to_ascii_lowercase();
        (head, first, client.take_warnings())
    }

    #[tokio::test]
    async fn the_client_names_itself_and_keeps_the_controllers_warnings_once() {
        let (head, first, second) = warned(
            "provider",
            "warning: 299 - \"measurelab-provider 0.1.0 is older than this controller \\\"x\\\"\"\r\n\
             warning: 299 - \"measurelab-provider 0.1.0 is older than this controller \\\"x\\\"\"\r\n\
             warning: 299 ctl \"second\" \"Sat, 25 Aug 2012 23:34:45 GMT\"\r\n\
             warning: garbage\r\n",
        )
        .await;
        assert!(
            head.contains(&format!(
                "\r\nuser-agent: measurelab-provider/{CLIENT_VERSION}\r\n"
            )),
            "{head}"
        );
        assert_eq!(
            first,
            [
                "measurelab-provider 0.1.0 is older than this controller \"x\"",
                "second"
            ]
        );
        assert!(second.is_empty(), "{second:?}");
        let (head, first, _) = warned("cli", "").await;
        assert!(head.contains("\r\nuser-agent: measurelab-cli/"), "{head}");
        assert!(first.is_empty(), "{first:?}");
    }

    #[test]
    fn plaintext_is_only_for_loopback_unless_insecure() {
        for ok in [
            "http://127.0.0.1:7070",
            "http://localhost:7070/",
            "http://[::1]:7070",
            "https://10.0.0.1:7070",
        ] {
            assert!(check_transport(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:7070",
            "http://ctl.example",
            "http://[fe80::1]:80",
        ] {
            let err = check_transport(refused, false).unwrap_err();
            assert!(
                err.contains("not loopback") && err.contains("insecure"),
                "{err}"
            );
            assert!(check_transport(refused, true).is_ok(), "{refused}");
        }
    }

    /// A controller stand-in that answers `{}` to every request, counting
    /// them, or (`answer = false`) reads each request and hangs up.
    async fn stand_in(answer: bool) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        head.clear();
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if !answer {
                            return;
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, requests)
    }

    /// An address where nothing listens: a port the kernel handed out and
    /// took back.
    fn refusing_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    #[tokio::test]
    async fn a_refused_endpoint_is_skipped_and_the_next_one_kept() {
        let dead = refusing_endpoint();
        let (alive, requests) = stand_in(true).await;
        let client = Client::new(&format!("{dead}, {alive}/"), "t", None).unwrap();
        assert_eq!(client.endpoint(), dead);
        let _: serde_json::Value = client
            .request::<(), _>(reqwest::Method::GET, "/v1/whoami", None)
            .await
            .expect("the second endpoint answers");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            client.endpoint(),
            alive,
            "the client sticks to the one that answered"
        );
        // A body goes along to the next endpoint too.
        let _: serde_json::Value = client
            .request(
                reqwest::Method::POST,
                "/v1/tasks",
                Some(&serde_json::json!({"a": 1})),
            )
            .await
            .unwrap();
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// An endpoint whose connects never complete, as a host that is down
    /// and sends no RST: a listener that never accepts, its accept queue
    /// filled, so the kernel drops further SYNs. The streams that filled it
    /// are returned to be held for the test's length.
    async fn silent_endpoint() -> (String, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        // A loopback connect completes at once while the queue has room;
        // the first one that does not finish in a second found it full.
        for _ in 0..64 {
            match tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(stream) => held.push(stream.unwrap()),
                Err(_) => return (format!("http://{addr}"), listener, held),
            }
        }
        panic!("the accept queue of {addr} never filled");
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_a_connect_is_left_for_the_next() {
        let (dead, _listener, _held) = silent_endpoint().await;
        let (alive, requests) = stand_in(true).await;
        let client = Client::new(&format!("{dead},{alive}"), "t", None).unwrap();
        // Well under REQUEST_TIMEOUT: without a connect timeout the first
        // endpoint holds the request for the whole of it.
        let bound = CONNECT_TIMEOUT * 3;
        let started = std::time::Instant::now();
        let _: serde_json::Value = tokio::time::timeout(
            bound,
            client.request::<(), _>(reqwest::Method::GET, "/v1/whoami", None),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer within {bound:?}: the dead endpoint held it"))
        .expect("the second endpoint answers");
        assert!(
            started.elapsed() >= CONNECT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(client.endpoint(), alive);
    }

    #[tokio::test]
    async fn a_request_that_reached_a_controller_is_not_sent_again() {
        let (hangs_up, first) = stand_in(false).await;
        let (alive, second) = stand_in(true).await;
        let client = Client::new(&format!("{hangs_up},{alive}"), "t", None).unwrap();
        let err = client
            .request(
                reqwest::Method::POST,
                "/v1/tasks",
                Some(&serde_json::json!({"a": 1})),
            )
            .await
            .map(|_: serde_json::Value| ())
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Unreachable { endpoint, .. } if *endpoint == hangs_up),
            "{err}"
        );
        assert_eq!(first.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            second.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not resent"
        );
        // The caller's next attempt goes to the next endpoint.
        assert_eq!(client.endpoint(), alive);
    }

    #[tokio::test]
    async fn a_read_that_lost_its_answer_is_sent_to_the_next_endpoint() {
        let (hangs_up, first) = stand_in(false).await;
        let (alive, second) = stand_in(true).await;
        let client = Client::new(&format!("{hangs_up},{alive}"), "t", None).unwrap();
        let _: serde_json::Value = client
            .request::<(), _>(reqwest::Method::GET, "/v1/vms/x", None)
            .await
            .expect("the second endpoint answers the read");
        assert_eq!(first.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(second.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(client.endpoint(), alive);
    }

    #[tokio::test]
    async fn every_endpoint_refused_names_the_last_one_tried() {
        let (a, b) = (refusing_endpoint(), refusing_endpoint());
        let client = Client::new(&format!("{a},{b}"), "t", None).unwrap();
        let err = client
            .request::<(), serde_json::Value>(reqwest::Method::GET, "/v1/whoami", None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Unreachable { endpoint, .. } if *endpoint == b),
            "{err}"
        );
    }

    #[test]
    fn endpoint_lists_are_checked() {
        assert_eq!(
            split_endpoints(" https://a:7070/ ,https://b:7070").unwrap(),
            ["https://a:7070", "https://b:7070"]
        );
        for bad in ["", "https://a:7070,", "https://a:7070,,https://b:7070"] {
            let err = split_endpoints(bad).unwrap_err();
            assert!(err.contains("empty entry"), "{bad:?}: {err}");
            assert!(matches!(
                Client::new(bad, "t", None),
                Err(ClientError::Config(_))
            ));
        }
        // One plaintext endpoint off loopback is enough to refuse the list.
        let err = check_transport("https://a:7070,http://10.0.0.2:7070", false).unwrap_err();
        assert!(err.contains("10.0.0.2"), "{err}");
    }

    #[test]
    fn a_url_moves_to_another_endpoint_with_its_path_and_query() {
        let url: reqwest::Url = "http://a:1/api/v1/vms/x?force=true".parse().unwrap();
        assert_eq!(
            rebase(&url, "http://a:1/api", "https://b:2/api/")
                .unwrap()
                .as_str(),
            "https://b:2/api/v1/vms/x?force=true"
        );
        let url: reqwest::Url = "http://a:1/v1/nodes".parse().unwrap();
        assert_eq!(
            rebase(&url, "http://a:1", "http://c:3").unwrap().as_str(),
            "http://c:3/v1/nodes"
        );
    }

    #[test]
    fn names_are_one_path_segment() {
        let path = format!("/v1/vms/{}", url_component("lab/a?b c"));
        assert_eq!(path, "/v1/vms/lab%2Fa%3Fb%20c");
    }

    #[test]
    fn query_values_cannot_add_parameters() {
        let query = format!("task={}", url_component("t&force=true#x%"));
        assert_eq!(query, "task=t%26force%3Dtrue%23x%25");
    }

    #[test]
    fn unreserved_characters_stay_as_they_are() {
        let id = "6f1c2a3b-4d5e_x.y~Z9";
        assert_eq!(url_component(id).to_string(), id);
    }
}
