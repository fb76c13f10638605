//! TLS to the server: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` URL parameters, on rustls with the ring provider the rest of the
//! controller uses.
//!
//! The `postgres` crate parses only `sslmode=disable|prefer|require` and
//! none of the file parameters, and verifies nothing itself (its TLS is a
//! plug-in). So [`split_url`] takes these parameters out of a URL before the
//! rest goes to `postgres::Config`, and [`Tls`] is the plug-in: a rustls
//! client whose certificate check is what the mode asks for.
//!
//! The connector is written here over tokio-rustls (already in the build for
//! the controller's own APIs) rather than taken from tokio-postgres-rustls:
//! that crate would bring a second `sha2` and the `x509-cert`/`der` family
//! only for SCRAM channel binding, which these sessions do not offer (a
//! server that requires `SCRAM-SHA-256-PLUS` refuses them; use
//! `verify-full` to be protected against a man in the middle instead).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::config::SslMode;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::error::PgError;

/// libpq's sslmodes, as this controller carries them out (docs/postgresql.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plaintext.
    Disable,
    /// Without `sslrootcert`: plaintext, as before TLS was built in (an
    /// unverified session would look secure and not be). With it: TLS with
    /// the chain checked when the server offers TLS, plaintext when it
    /// does not.
    Prefer,
    /// TLS or no session. Without `sslrootcert` the session is encrypted but
    /// the server is not authenticated; with it, the chain is checked.
    Require,
    /// TLS, the chain checked against `sslrootcert`; any host name.
    VerifyCa,
    /// TLS, the chain checked against `sslrootcert` and the certificate
    /// naming the host the URL connects to (DNS name or IP address SAN).
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode, PgError> {
        Ok(match value {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(PgError::Url {
                    reason: format!(
                        "sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                    ),
                })
            }
        })
    }

    fn from_session(mode: SslMode) -> Mode {
        match mode {
            SslMode::Disable => Mode::Disable,
            SslMode::Require => Mode::Require,
            // Prefer, and anything a later postgres adds: the default.
            _ => Mode::Prefer,
        }
    }
}

/// The TLS parameters of a URL, taken out of it by [`split_url`].
#[derive(Debug, Default)]
pub(crate) struct Params {
    sslmode: Option<String>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
}

/// `url` without its TLS parameters, and those parameters. A string that is
/// not a `postgres://` or `postgresql://` URL (the `key=value` form) is
/// returned whole: there `postgres` reads `sslmode` itself, and the file
/// parameters are not available.
pub(crate) fn split_url(url: &str) -> Result<(String, Params), PgError> {
    let mut params = Params::default();
    let Some(scheme_end) = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| url.starts_with(*scheme))
        .map(|scheme| scheme.len())
    else {
        return Ok((url.to_string(), params));
    };
    // As postgres reads it: credentials run to the first '@', and the query
    // starts at the first '?' after them.
    let after_credentials = url[scheme_end..]
        .find('@')
        .map_or(scheme_end, |at| scheme_end + at + 1);
    let Some(query_start) = url[after_credentials..]
        .find('?')
        .map(|q| after_credentials + q)
    else {
        return Ok((url.to_string(), params));
    };
    let mut kept = Vec::new();
    for pair in url[query_start + 1..].split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key)?.as_str() {
            "sslmode" => params.sslmode = Some(decode(value)?),
            "sslrootcert" => params.sslrootcert = Some(PathBuf::from(decode(value)?)),
            "sslcert" => params.sslcert = Some(PathBuf::from(decode(value)?)),
            "sslkey" => params.sslkey = Some(PathBuf::from(decode(value)?)),
            _ => kept.push(pair),
        }
    }
    let mut rest = url[..query_start].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, params))
}

fn decode(text: &str) -> Result<String, PgError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| PgError::Url {
            reason: "a query parameter is not UTF-8 once percent-decoded".into(),
        })
}

/// What a session does about TLS; built once per URL (files read and
/// checked then), used for every connect.
#[derive(Clone)]
pub(crate) struct Tls {
    mode: Mode,
    /// None: plaintext (disable, or prefer without `sslrootcert`).
    connector: Option<Connector>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("tls", &self.connector.is_some())
            .finish()
    }
}

impl Tls {
    /// `params` from [`split_url`]; `session_mode` is what postgres parsed
    /// (used when the URL form did not carry `sslmode` through `params`).
    pub(crate) fn new(params: Params, session_mode: SslMode) -> Result<Tls, PgError> {
        let mode = match &params.sslmode {
            Some(value) => Mode::parse(value)?,
            None => Mode::from_session(session_mode),
        };
        let plaintext = Tls {
            mode,
            connector: None,
        };
        let verify = match (mode, params.sslrootcert.as_deref()) {
            // As in libpq, disable ignores the TLS files: none is read.
            (Mode::Disable, _) | (Mode::Prefer, None) => return Ok(plaintext),
            (Mode::VerifyCa | Mode::VerifyFull, None) => {
                return Err(PgError::Url {
                    reason: format!(
                        "sslmode {}: needs sslrootcert=/path/to/ca.pem, the CA that signed the server's certificate",
                        if mode == Mode::VerifyCa { "verify-ca" } else { "verify-full" }
                    ),
                })
            }
            (Mode::Require, None) => Verify::Nothing,
            (Mode::VerifyFull, Some(path)) => Verify::Full(read_roots(path)?),
            (Mode::Prefer | Mode::Require | Mode::VerifyCa, Some(path)) => {
                Verify::Chain(read_roots(path)?)
            }
        };
        let identity = client_identity(&params)?;
        Ok(Tls {
            mode,
            connector: Some(Connector::new(verify, identity)?),
        })
    }

    /// The sslmode postgres is to run: it decides whether to ask the server
    /// for TLS and whether a refusal ends the connect.
    pub(crate) fn session_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector, or None for a plaintext session.
    pub(crate) fn connector(&self) -> Option<&Connector> {
        self.connector.as_ref()
    }
}

/// Everything TLS that tokio-postgres reports has this Display (its error
/// kind is not public): the server refusing TLS under `require`, and every
/// failed handshake, including a certificate this side did not accept.
const TLS_FAILURE: &str = "error performing TLS handshake";

/// Whether a failed connect failed at TLS rather than at the network or at
/// authentication.
pub(crate) fn is_tls_failure(err: &postgres::Error) -> bool {
    err.as_db_error().is_none() && err.to_string().starts_with(TLS_FAILURE)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(parameter: &'static str, path: &Path, reason: impl ToString) -> PgError {
    PgError::TlsFile {
        parameter,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(parameter: &'static str, path: &Path) -> Result<Vec<u8>, PgError> {
    std::fs::read(path).map_err(|err| file_error(parameter, path, format!("cannot read: {err}")))
}

fn read_certs(
    parameter: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PgError> {
    let pem = read(parameter, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(parameter, path, format!("not PEM certificates: {err}")))?;
    if certs.is_empty() {
        return Err(file_error(parameter, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, PgError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("sslrootcert", path)? {
        roots.add(cert).map_err(|err| {
            file_error(
                "sslrootcert",
                path,
                format!("not a usable CA certificate: {err}"),
            )
        })?;
    }
    Ok(Arc::new(roots))
}

/// A client certificate and its key, for servers that authenticate by
/// certificate (`hostssl … cert` in pg_hba.conf).
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(params: &Params) -> Result<Option<Identity>, PgError> {
    let (cert, key) = match (&params.sslcert, &params.sslkey) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(PgError::Url {
                reason: "sslcert needs sslkey, the client certificate's private key".into(),
            })
        }
        (None, Some(_)) => {
            return Err(PgError::Url {
                reason: "sslkey needs sslcert, the client certificate".into(),
            })
        }
    };
    let certs = read_certs("sslcert", cert)?;
    let pem = read("sslkey", key)?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|err| file_error("sslkey", key, format!("not a PEM key: {err}")))?
        .ok_or_else(|| file_error("sslkey", key, "holds no PEM private key"))?;
    Ok(Some((certs, key)))
}

/// What is checked of the server's certificate.
enum Verify {
    /// Only that the server holds the key of the certificate it shows
    /// (`require` without `sslrootcert`): encrypted, not authenticated.
    Nothing,
    /// The chain up to one of these roots; any host name.
    Chain(Arc<RootCertStore>),
    /// The chain, and the certificate naming the host connected to.
    Full(Arc<RootCertStore>),
}

/// The plug-in postgres connects through (its `MakeTlsConnect`).
#[derive(Clone)]
pub(crate) struct Connector {
    config: Arc<ClientConfig>,
}

impl Connector {
    fn new(verify: Verify, identity: Option<Identity>) -> Result<Connector, PgError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(Partial {
                chain: None,
                provider: provider.clone(),
            }),
            Verify::Chain(roots) => Arc::new(Partial {
                chain: Some(webpki(roots, &provider)?),
                provider: provider.clone(),
            }),
            Verify::Full(roots) => webpki(roots, &provider)?,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| PgError::Url {
                reason: format!("TLS: {err}"),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((certs, key)) => {
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|err| PgError::Url {
                        reason: format!("sslcert and sslkey do not make a client identity: {err}"),
                    })?
            }
        };
        Ok(Connector {
            config: Arc::new(config),
        })
    }
}

fn webpki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, PgError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|err| PgError::Url {
            reason: format!("sslrootcert: {err}"),
        })
}

/// What verify-full's web PKI check is not: `chain` set, that check except
/// that a certificate for another name is accepted (verify-ca, and
/// require/prefer with `sslrootcert`); rustls checks the chain before the
/// name, so a name error means the chain passed. `chain` unset (`require`
/// without `sslrootcert`, as libpq does it): any certificate. Either way the
/// handshake must be signed with the certificate's key.
#[derive(Debug)]
struct Partial {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Partial {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = io::Error;

    /// `host` is the URL's host name or address; empty for a unix socket,
    /// where the server never offers TLS and no handshake happens.
    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, io::Error> {
        let name = if host.is_empty() {
            None
        } else {
            Some(ServerName::try_from(host.to_string()).map_err(|err| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("host {host:?} is not a DNS name or IP address for TLS: {err}"),
                )
            })?)
        };
        Ok(Handshake {
            config: self.config.clone(),
            name,
        })
    }
}

/// One handshake, to the host its [`Connector`] was asked for.
pub(crate) struct Handshake {
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, io::Error>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no host name to verify")
            })?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, socket)
                .await?;
            Ok(Stream(Box::new(stream)))
        })
    }
}

/// A session's socket inside TLS.
pub(crate) struct Stream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        // See the module doc: SCRAM channel binding is not offered.
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays_as_written() {
        let (rest, params) = split_url(
            "postgres://u:p%3Fw@h:5/db?application_name=a%20b&sslmode=verify-full&sslrootcert=/etc/m/ca%20x.pem&sslcert=c.pem&sslkey=k.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@h:5/db?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(
            params.sslrootcert.as_deref(),
            Some(Path::new("/etc/m/ca x.pem"))
        );
        assert_eq!(params.sslcert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(params.sslkey.as_deref(), Some(Path::new("k.pem")));

        // Only TLS parameters: no query is left.
        let (rest, _) = split_url("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        // A '?' in the password is not the query.
        let (rest, params) = split_url("postgres://u:a?b@h/db").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert!(params.sslmode.is_none());
        // The key=value form is postgres's to parse.
        let (rest, _) = split_url("host=h sslmode=require").unwrap();
        assert_eq!(rest, "host=h sslmode=require");
    }

    #[test]
    fn verify_modes_need_a_root_certificate_and_unknown_modes_are_refused() {
        for mode in ["verify-ca", "verify-full"] {
            let (_, params) = split_url(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            match Tls::new(params, SslMode::Prefer) {
                Err(err @ PgError::Url { .. }) => {
                    assert!(err.to_string().contains("needs sslrootcert="), "{err}")
                }
                other => panic!("{mode}: {other:?}"),
            }
        }
        let (_, params) = split_url("postgres://h/db?sslmode=allow").unwrap();
        match Tls::new(params, SslMode::Prefer) {
            Err(err @ PgError::Url { .. }) => {
                assert!(err.to_string().contains("\"allow\""), "{err}")
            }
            other => panic!("{other:?}"),
        }
        let (_, params) = split_url("postgres://h/db?sslmode=require&sslcert=c.pem").unwrap();
        match Tls::new(params, SslMode::Prefer) {
            Err(err @ PgError::Url { .. }) => assert!(err.to_string().contains("sslkey"), "{err}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefer_without_a_root_certificate_stays_plaintext() {
        let (_, params) = split_url("postgres://h/db").unwrap();
        let tls = Tls::new(params, SslMode::Prefer).unwrap();
        assert!(tls.connector().is_none());
        assert_eq!(tls.session_mode(), SslMode::Prefer);
        let (_, params) = split_url("postgres://h/db?sslmode=require").unwrap();
        let tls = Tls::new(params, SslMode::Prefer).unwrap();
        assert!(tls.connector().is_some());
        assert_eq!(tls.session_mode(), SslMode::Require);
    }

    #[test]
    fn unusable_files_are_errors_naming_the_parameter_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        for (url, parameter, path, reason) in [
            (
                format!(
                    "postgres://h/db?sslmode=verify-full&sslrootcert={}",
                    missing.display()
                ),
                "sslrootcert",
                &missing,
                "cannot read",
            ),
            (
                format!(
                    "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
                    not_pem.display()
                ),
                "sslrootcert",
                &not_pem,
                "holds no PEM certificate",
            ),
        ] {
            let (_, params) = split_url(&url).unwrap();
            match Tls::new(params, SslMode::Prefer) {
                Err(err) => {
                    let PgError::TlsFile {
                        parameter: got,
                        path: at,
                        reason: why,
                    } = &err
                    else {
                        panic!("{url}: {err:?}")
                    };
                    assert_eq!((*got, at), (parameter, path), "{err}");
                    assert!(why.contains(reason), "{err}");
                    assert!(
                        err.to_string().contains(&path.display().to_string()),
                        "{err}"
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
