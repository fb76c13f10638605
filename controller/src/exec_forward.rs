//! Forwarding a `vm exec` / `vm cp` session to the controller replica that
//! holds the node agent's `ExecChannel` (replicas on one PostgreSQL
//! database; `store::exec_channels` says which one, at which URL).
//!
//! The forward is the client's own request again: the same body, the
//! client's `Authorization`, `POST {url}/v1/vms/{vm_id}/exec` with the
//! upgrade, so the other replica authorizes the caller itself and this one
//! never lends it access it would not have there. It carries
//! [`FORWARDED_HEADER`]; a replica never forwards a request that has it, so
//! two replicas whose records disagree cannot bounce a session between
//! them. Once both sides answered `101`, the handler splices the two byte
//! streams (`api/exec.rs`).
//!
//! Over `https://` the other replica is verified against this controller's
//! own CA: replicas of one database share it (the operator copies
//! `ca.pem`/`ca.key` into each data dir), and its server certificate names
//! the host of its `--advertise-url` (`--tls-san`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use measurelab_api::exec::EXEC_UPGRADE_PROTOCOL;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::{first_cert_der, TlsError};

/// Marks a request one replica forwarded to another.
pub const FORWARDED_HEADER: &str = "x-measurelab-forwarded";
/// Connecting, the TLS handshake and the other replica's answer together:
/// it answers before its upgrade as fast as this replica does, so a replica
/// that takes longer is as good as down.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of the other replica's refusal read (a JSON error).
const MAX_REFUSAL_BYTES: usize = 16 * 1024;

/// Why a session could not be forwarded.
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
    /// No answer within [`OPEN_TIMEOUT`].
    #[error("no answer within {OPEN_TIMEOUT:?}")]
    Timeout,
}

/// Opens forwarded sessions. Cheap to clone.
#[derive(Clone, Default)]
pub struct ExecForwarder {
    /// Verifies other replicas over https; `None` without TLS.
    tls: Option<TlsConnector>,
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
        })
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
        .map_err(|_| ForwardError::Timeout)?
    }

    async fn open_now(
        &self,
        base_url: &str,
        vm_id: &str,
        authorization: Option<HeaderValue>,
        body: Bytes,
    ) -> Result<Upgraded, ForwardError> {
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
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/vms/{vm_id}/exec"))
            .header(header::HOST, authority.as_str())
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, EXEC_UPGRADE_PROTOCOL)
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, "1");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(Body::from(body))?;
        if !https {
            return exchange(tcp, request).await;
        }
        let connector = self.tls.as_ref().ok_or(ForwardError::NoCa)?;
        let name = ServerName::try_from(host.to_string()).map_err(|_| bad_url())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(ForwardError::Connect)?;
        exchange(tls, request).await
    }
}

/// One HTTP/1.1 request on `io`; the upgraded stream if it switched.
async fn exchange<S>(io: S, request: Request<Body>) -> Result<Upgraded, ForwardError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
fn refusal_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_told_by_its_message() {
        assert_eq!(
            refusal_message(br#"{"error":{"code":"unavailable","message":"no channel"}}"#),
            "no channel"
        );
        assert_eq!(refusal_message(b"bad gateway\n"), "bad gateway");
    }
}
