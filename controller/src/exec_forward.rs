//! Forwarding a request to the controller replica that holds the node
//! agent's `ExecChannel` (replicas on one PostgreSQL database;
//! `store::exec_channels` says which one, at which URL): `vm exec` / `vm
//! cp` sessions ([`ExecForwarder::open`], an upgrade) and the reads of
//! deployment outputs ([`ExecForwarder::request`], a plain `GET` whose
//! answer is relayed as it streams).
//!
//! The forward is the client's own request again: the same body, the
//! client's `Authorization`, so the other replica authorizes the caller
//! itself and this one never lends it access it would not have there. It
//! carries [`FORWARDED_HEADER`]; a replica never forwards a request that
//! has it, so two replicas whose records disagree cannot bounce a request
//! between them. For a session, once both sides answered `101`, the
//! handler splices the two byte streams (`api/exec.rs`).
//!
//! Over `https://` the other replica is verified against this controller's
//! own CA: replicas of one database share it (`store::replica_files`), and
//! its server certificate names the host of its `--advertise-url`
//! (`--tls-san`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use measurelab_api::exec::EXEC_UPGRADE_PROTOCOL;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::forward_proof::{ForwardKey, UNPROVEN};
use crate::tls::{first_cert_der, TlsError};

/// Marks a request one replica forwarded to another; its value is the
/// forwarding replica's proof (`forward_proof`).
pub const FORWARDED_HEADER: &str = "x-measurelab-forwarded";
/// Connecting, the TLS handshake and the other replica's answer together:
/// it answers before its upgrade as fast as this replica does, so a replica
/// that takes longer is as good as down.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of the other replica's refusal read (a JSON error).
pub(crate) const MAX_REFUSAL_BYTES: usize = 16 * 1024;

/// Why a request for a VM on `node_id` is not served: its exec channel is
/// on controller `replica`, and `why` it could not be used there. One
/// wording for sessions and outputs, so operators grep for one thing.
pub(crate) fn held_elsewhere(node_id: &str, replica: &str, why: impl std::fmt::Display) -> String {
    format!("node {node_id}'s exec channel is on controller replica {replica}, {why}")
}

/// Why a replica has no URL to forward to.
pub(crate) const NO_ADVERTISE_URL: &str = "which has no --advertise-url to forward to";

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The recorded URL cannot be used.
    #[error("its URL {0:?} is not an http(s)://HOST:PORT URL")]
    Url(String),
    /// The URL is https but this replica runs without TLS, so it has no CA
    /// to verify the other one with.
    #[error(
        "its URL is https, but this replica runs without --tls and has no CA to verify it with"
    )]
    NoCa,
    /// TCP connect or TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (cannot happen for valid headers).
    #[error("cannot build the request: {0}")]
    Request(#[from] axum::http::Error),
    /// The other replica did not switch protocols.
    #[error("it answered {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its error message (or body).
        message: String,
    },
    /// No answer within this long.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Opens forwarded sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct ExecForwarder {
    /// Verifies other replicas over https; `None` without TLS.
    tls: Option<TlsConnector>,
    /// Proves this replica's forwards to the others; `None` without a
    /// shared database (nothing to forward to).
    key: Option<ForwardKey>,
}

impl ExecForwarder {
    /// Trust `ca_pem` (this controller's CA) for https replicas; `None`:
    /// plain http only.
    pub fn new(ca_pem: Option<&str>) -> Result<Self, TlsError> {
        let Some(pem) = ca_pem else {
            return Ok(ExecForwarder::default());
        };
        let invalid = |reason: String| TlsError::Invalid {
            what: "ca.pem".into(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_cert_der(pem, "ca.pem")?.into())
            .map_err(|e| invalid(e.to_string()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ExecForwarder {
            tls: Some(TlsConnector::from(Arc::new(config))),
            key: None,
        })
    }

    /// Prove forwarded requests with `key`, and accept the other
    /// replicas' proofs made with it.
    pub fn with_key(mut self, key: ForwardKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The replicas' key, to check a forwarded request's proof with.
    pub fn key(&self) -> Option<&ForwardKey> {
        self.key.as_ref()
    }

    /// The [`FORWARDED_HEADER`] value for this request.
    fn mark(
        &self,
        method: &Method,
        path_and_query: &str,
        authorization: Option<&HeaderValue>,
    ) -> HeaderValue {
        match &self.key {
            Some(key) => key.proof(
                method,
                path_and_query,
                authorization,
                std::time::SystemTime::now(),
            ),
            None => HeaderValue::from_static(UNPROVEN),
        }
    }

    /// `POST {base_url}/v1/vms/{vm_id}/exec` with `body` as `authorization`
    /// asking for the upgrade; the upgraded stream once it switched.
    pub async fn open(
        &self,
        base_url: &str,
        vm_id: &str,
        authorization: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<Upgraded, ForwardError> {
        tokio::time::timeout(
            OPEN_TIMEOUT,
            self.open_now(base_url, vm_id, authorization, body),
        )
        .await
        .map_err(|_| ForwardError::Timeout(OPEN_TIMEOUT))?
    }

    async fn open_now(
        &self,
        base_url: &str,
        vm_id: &str,
        authorization: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<Upgraded, ForwardError> {
        let (io, authority) = self.connect(base_url).await?;
        let path = format!("/v1/vms/{vm_id}/exec");
        let mark = self.mark(&Method::POST, &path, authorization.as_ref());
        let request = forwarded(Method::POST, &path, &authority, authorization, mark)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, EXEC_UPGRADE_PROTOCOL)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))?;
        exchange(io, request).await
    }

    /// `GET {base_url}{path_and_query}` as `authorization`, marked as
    /// forwarded: the other replica's answer whatever its status, its body
    /// still streaming. Connecting must take at most [`OPEN_TIMEOUT`], the
    /// answer's head at most `answer_within` more (the caller knows how
    /// long the other replica may work before it answers).
    pub async fn request(
        &self,
        base_url: &str,
        path_and_query: &str,
        authorization: Option<HeaderValue>,
        answer_within: Duration,
    ) -> Result<hyper::Response<Incoming>, ForwardError> {
        let (io, authority) = tokio::time::timeout(OPEN_TIMEOUT, self.connect(base_url))
            .await
            .map_err(|_| ForwardError::Timeout(OPEN_TIMEOUT))??;
        let mark = self.mark(&Method::GET, path_and_query, authorization.as_ref());
        let request = forwarded(Method::GET, path_and_query, &authority, authorization, mark)
            .body(Body::empty())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        // Drives the connection until the answer's body is read to its end
        // (or dropped), long after this function returned.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "forwarded request's connection failed");
            }
        });
        tokio::time::timeout(answer_within, sender.send_request(request))
            .await
            .map_err(|_| ForwardError::Timeout(answer_within))?
            .map_err(ForwardError::from)
    }

    /// A connection to `base_url` (TLS verified against our CA for
    /// https) and the authority to name in `Host`.
    async fn connect(&self, base_url: &str) -> Result<(Box<dyn Io>, String), ForwardError> {
        let bad_url = || ForwardError::Url(base_url.to_string());
        let uri: Uri = base_url.parse().map_err(|_| bad_url())?;
        let authority = uri.authority().ok_or_else(bad_url)?.clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url()),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        // IPv6 literals come bracketed in a URL, bare in a socket address
        // and in a certificate's name.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(ForwardError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok((Box::new(tcp), authority.to_string()));
        }
        let connector = self.tls.as_ref().ok_or(ForwardError::NoCa)?;
        let name = ServerName::try_from(host.to_string()).map_err(|_| bad_url())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(ForwardError::Connect)?;
        Ok((Box::new(tls), authority.to_string()))
    }
}

/// A byte stream to another replica, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for S {}

/// A request to another replica, marked as forwarded with `mark`, with the
/// caller's `Authorization`.
fn forwarded(
    method: Method,
    path_and_query: &str,
    authority: &str,
    authorization: Option<HeaderValue>,
    mark: HeaderValue,
) -> axum::http::request::Builder {
    let request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, authority)
        .header(FORWARDED_HEADER, mark);
    match authorization {
        Some(authorization) => request.header(header::AUTHORIZATION, authorization),
        None => request,
    }
}

/// One HTTP/1.1 request on `io`; the upgraded stream if it switched.
async fn exchange(io: Box<dyn Io>, request: Request<Body>) -> Result<Upgraded, ForwardError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Drives the connection until the upgrade hands it over (or it fails,
    // which `send_request` reports).
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(%err, "forwarded exec connection failed");
        }
    });
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = axum::body::to_bytes(Body::new(response.into_body()), MAX_REFUSAL_BYTES)
            .await
            .unwrap_or_default();
        return Err(ForwardError::Refused {
            status,
            message: refusal_message(&body),
        });
    }
    Ok(hyper::upgrade::on(response).await?)
}

/// The `error.message` of a JSON error, else the body as text.
pub(crate) fn refusal_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ServerTls, TlsConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_refusal_is_told_by_its_message() {
        assert_eq!(
            refusal_message(br#"{"error":{"code":"unavailable","message":"no channel"}}"#),
            "no channel"
        );
        assert_eq!(refusal_message(b"bad gateway\n"), "bad gateway");
    }

    /// Stands in for the other replica: answers `101` to a forwarded
    /// request with the caller's token and echoes the upgraded stream,
    /// `200` with a body to a forwarded `GET /v1/read?x=1`, and 403 to
    /// anything else.
    async fn replica(request: Request<Incoming>) -> Result<hyper::Response<Body>, hyper::Error> {
        let headers = request.headers();
        if request.method() == Method::GET
            && request.uri() == "/v1/read?x=1"
            && headers.get(FORWARDED_HEADER).is_some()
            && headers.get(header::AUTHORIZATION) == Some(&HeaderValue::from_static("Bearer t"))
        {
            return Ok(hyper::Response::new(Body::from("read")));
        }
        let accepted = request.uri().path() == "/v1/vms/vm-1/exec"
            && headers.get(FORWARDED_HEADER).is_some()
            && headers.get(header::AUTHORIZATION) == Some(&HeaderValue::from_static("Bearer t"));
        if !accepted {
            let mut refused = hyper::Response::new(Body::from(
                r#"{"error":{"code":"forbidden","message":"not this request"}}"#,
            ));
            *refused.status_mut() = StatusCode::FORBIDDEN;
            return Ok(refused);
        }
        let upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 5];
            io.read_exact(&mut buf).await.unwrap();
            io.write_all(&buf).await.unwrap();
        });
        let mut switched = hyper::Response::new(Body::empty());
        *switched.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = switched.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(
            header::UPGRADE,
            HeaderValue::from_static(EXEC_UPGRADE_PROTOCOL),
        );
        Ok(switched)
    }

    /// An HTTPS server of `tls` on 127.0.0.1 answering with [`replica`].
    async fn https_replica(tls: &ServerTls) -> String {
        let acceptor = tls.https_acceptor().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(replica))
                        .with_upgrades()
                        .await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn sessions_and_requests_are_forwarded_over_https_to_a_replica_of_the_same_ca_only() {
        let shared = tempfile::tempdir().unwrap();
        let config = TlsConfig::generated(vec!["127.0.0.1".into()]);
        let tls = ServerTls::new(&config, shared.path(), &[]).unwrap();
        let url = https_replica(&tls).await;
        let token = Some(HeaderValue::from_static("Bearer t"));

        let forwarder = ExecForwarder::new(Some(tls.ca.pem())).unwrap();
        let upgraded = forwarder
            .open(&url, "vm-1", token.clone(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let mut io = TokioIo::new(upgraded);
        io.write_all(b"hello").await.unwrap();
        let mut echoed = [0u8; 5];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello");

        // A plain request comes back as the other replica answered it.
        let answer = forwarder
            .request(&url, "/v1/read?x=1", token.clone(), OPEN_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body = axum::body::to_bytes(Body::new(answer.into_body()), 64)
            .await
            .unwrap();
        assert_eq!(&body[..], b"read");
        let answer = forwarder
            .request(&url, "/v1/read?x=1", None, OPEN_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);

        // The other replica's refusal comes back with its message.
        let err = forwarder
            .open(&url, "vm-1", None, Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ForwardError::Refused { status, message }
                if *status == StatusCode::FORBIDDEN && message == "not this request"),
            "{err}"
        );

        // A replica whose certificate another CA signed is not trusted.
        let stranger = tempfile::tempdir().unwrap();
        let other_ca = ServerTls::new(&config, stranger.path(), &[]).unwrap();
        let err = ExecForwarder::new(Some(other_ca.ca.pem()))
            .unwrap()
            .open(&url, "vm-1", token.clone(), Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Connect(_)), "{err}");
        // Without TLS of its own a replica has no CA to verify with.
        let err = ExecForwarder::default()
            .open(&url, "vm-1", token, Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::NoCa), "{err}");
    }
}
