//! The agent's side of TLS to the controller: the controller's CA pinned
//! from a join bundle's fingerprint and kept in the state directory, the
//! node's key and CSR, the certificate the controller signs, and when to
//! renew it.
//!
//! Trust: after the first connection the agent trusts only the stored CA
//! (tonic is built without any root store, so nothing else is trusted).
//! The node key lives in memory only: every start registers again and gets
//! a fresh certificate, so a key never needs to sit on disk.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The controller's CA, pinned on the first connection.
pub const CONTROLLER_CA_FILE: &str = "controller-ca.pem";
/// How long fetching the CA (connect plus handshake) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS to the controller cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControllerTlsError {
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The controller could not be reached (retried).
    #[error("cannot fetch the CA of the controller at {endpoint}: {reason}")]
    Unreachable {
        /// gRPC endpoint.
        endpoint: String,
        /// Cause.
        reason: String,
    },
    /// The controller does not present the pinned CA: refuse to join.
    #[error(
        "join bundle: ca_sha256 {expected} is not the CA of the controller at {endpoint} \
         (it presents {presented}); the bundle is for another controller, or someone is in \
         between: refusing to join"
    )]
    FingerprintMismatch {
        /// gRPC endpoint.
        endpoint: String,
        /// The bundle's fingerprint.
        expected: String,
        /// Fingerprints of what the controller presented.
        presented: String,
    },
    /// The stored CA is not the one the bundle pins.
    #[error(
        "join bundle: ca_sha256 {expected} differs from the controller CA pinned earlier in {path} \
         ({stored}); to join another controller, remove {path} (and identity.json)"
    )]
    StoredCaMismatch {
        /// The stored CA file.
        path: PathBuf,
        /// The bundle's fingerprint.
        expected: String,
        /// The stored CA's fingerprint.
        stored: String,
    },
    /// A certificate, key or endpoint is unusable.
    #[error("{what}: {reason}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
}

fn invalid(what: impl Into<String>, reason: impl ToString) -> ControllerTlsError {
    ControllerTlsError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, ControllerTlsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| invalid(what, "holds no PEM certificate"))?
        .map_err(|e| invalid(what, format!("not a PEM certificate: {e}")))
}

/// The CA pinned earlier, checked against the bundle's fingerprint when
/// one is given; `None` when nothing is pinned yet.
pub fn stored_ca(
    state_dir: &Path,
    pin: Option<&str>,
) -> Result<Option<String>, ControllerTlsError> {
    let path = state_dir.join(CONTROLLER_CA_FILE);
    let pem = match std::fs::read_to_string(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ControllerTlsError::Io { path, source }),
    };
    let stored = fingerprint(&first_cert(&pem, &path.display().to_string())?);
    if let Some(pin) = pin {
        if stored != pin {
            return Err(ControllerTlsError::StoredCaMismatch {
                path,
                expected: pin.to_string(),
                stored,
            });
        }
    }
    Ok(Some(pem))
}

/// Pin `pem` in the state directory (atomically).
pub fn store_ca(state_dir: &Path, pem: &str) -> Result<(), ControllerTlsError> {
    let path = state_dir.join(CONTROLLER_CA_FILE);
    let io = |source| ControllerTlsError::Io {
        path: path.clone(),
        source,
    };
    let tmp = state_dir.join(format!(".{CONTROLLER_CA_FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io)?;
    file.write_all(pem.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Records the chain the server presents and accepts it: this handshake
/// only looks for the pinned CA in the chain. Nothing is sent over it; the
/// real connection afterwards verifies the server against that CA alone.
#[derive(Debug)]
struct CaptureChain {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
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

/// Connect to `endpoint` (`https://HOST:PORT`), and return the certificate
/// of the chain it presents whose SHA-256 is `pin`, as PEM.
pub async fn fetch_ca(endpoint: &str, pin: &str) -> Result<String, ControllerTlsError> {
    let uri: tonic::transport::Uri = endpoint
        .parse()
        .map_err(|e| invalid("controller", format!("{endpoint:?}: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid("controller", format!("{endpoint:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| invalid("controller", format!("{host:?}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(CaptureChain {
        chain: Mutex::default(),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let unreachable = |reason: String| ControllerTlsError::Unreachable {
        endpoint: endpoint.to_string(),
        reason,
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| unreachable(format!("TLS handshake: {e}")))
    };
    tokio::time::timeout(FETCH_TIMEOUT, handshake)
        .await
        .map_err(|_| unreachable(format!("no TLS handshake within {FETCH_TIMEOUT:?}")))??;
    let chain = capture
        .chain
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match chain.iter().find(|cert| fingerprint(cert) == pin) {
        Some(ca) => Ok(pem_encode("CERTIFICATE", ca)),
        None => Err(ControllerTlsError::FingerprintMismatch {
            endpoint: endpoint.to_string(),
            expected: pin.to_string(),
            presented: chain
                .iter()
                .map(|c| fingerprint(c))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A fresh node key and a CSR for it (PEM both).
pub fn new_key_and_csr(node_name: &str) -> Result<(String, String), ControllerTlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| invalid("node key", e))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| invalid("node CSR", e))?;
    Ok((key.serialize_pem(), csr))
}

/// The node's current certificate and key, and when to renew them.
#[derive(Clone)]
pub struct NodeCert {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Key (PEM).
    pub key_pem: String,
    /// Two thirds of the way from its receipt to its expiry.
    pub renew_at: OffsetDateTime,
    /// When it expires (notAfter).
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("renew_at", &self.renew_at)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// The certificate the controller issued for `key_pem`, received now.
    pub fn issued(cert_pem: String, key_pem: String) -> Result<NodeCert, ControllerTlsError> {
        NodeCert::received_at(cert_pem, key_pem, OffsetDateTime::now_utc())
    }

    /// The certificate the controller issued for `key_pem`, received at
    /// `received`. Its lifetime counts from then, not from notBefore: the
    /// controller backdates notBefore (an hour, for clock skew), which
    /// would otherwise move the renewal an hour early, and make a
    /// certificate of a few minutes due at once.
    pub fn received_at(
        cert_pem: String,
        key_pem: String,
        received: OffsetDateTime,
    ) -> Result<NodeCert, ControllerTlsError> {
        let der = first_cert(&cert_pem, "node_cert_pem")?;
        let (not_before, not_after) = validity(&der)
            .ok_or_else(|| invalid("node_cert_pem", "its validity period does not parse"))?;
        if not_after <= not_before {
            return Err(invalid("node_cert_pem", "expires before it starts"));
        }
        if not_after <= received {
            return Err(invalid(
                "node_cert_pem",
                format!(
                    "expired at {not_after} before it arrived (now {received}); is this \
                     node's clock ahead of the controller's?"
                ),
            ));
        }
        let start = not_before.max(received);
        let renew_at = start + (not_after - start) * 2 / 3;
        Ok(NodeCert {
            cert_pem,
            key_pem,
            renew_at,
            not_after,
        })
    }

    /// Whether it is time to renew.
    pub fn due(&self) -> bool {
        OffsetDateTime::now_utc() >= self.renew_at
    }

    /// Whether it has expired: the controller refuses it from then on.
    pub fn expired(&self) -> bool {
        OffsetDateTime::now_utc() >= self.not_after
    }
}

/// notBefore and notAfter of a DER certificate.
fn validity(der: &[u8]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    fn time(r: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<OffsetDateTime> {
        let raw = r.read_der()?;
        match raw.first() {
            Some(0x17) => yasna::parse_der(&raw, |r| r.read_utctime()).map(|t| *t.datetime()),
            _ => yasna::parse_der(&raw, |r| r.read_generalized_time()).map(|t| *t.datetime()),
        }
    }
    yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let validity = r.next().read_sequence(|r| {
                // [0] version, serial, signature algorithm, issuer, then validity.
                for _ in 0..4 {
                    r.next().read_der()?;
                }
                let validity = r
                    .next()
                    .read_sequence(|r| Ok((time(r.next())?, time(r.next())?)))?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(validity)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(validity)
        })
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(not_before: OffsetDateTime, not_after: OffsetDateTime) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n".to_string()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn renewal_falls_two_thirds_into_the_lifetime() {
        let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (cert, key) = cert_valid(start, start + Duration::from_secs(3000));
        let issued = NodeCert::received_at(cert, key, start).unwrap();
        assert_eq!(issued.renew_at, start + Duration::from_secs(2000));
        assert_eq!(issued.not_after, start + Duration::from_secs(3000));
        assert!(!issued.due());
        assert!(!issued.expired());
    }

    #[test]
    fn a_backdated_certificate_is_renewed_two_thirds_from_its_receipt() {
        // What the controller issues: notBefore an hour back, so that a
        // node whose clock is behind accepts it; 30 s ahead.
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (cert, key) = cert_valid(
            now - Duration::from_secs(3600),
            now + Duration::from_secs(30),
        );
        let issued = NodeCert::received_at(cert, key, now).unwrap();
        assert_eq!(issued.renew_at, now + Duration::from_secs(20));
    }

    #[test]
    fn a_certificate_expired_on_arrival_is_refused_naming_the_clock() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let (cert, key) = cert_valid(
            now - Duration::from_secs(3600),
            now - Duration::from_secs(1),
        );
        let err = NodeCert::received_at(cert, key, now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node_cert_pem") && err.contains("clock"),
            "{err}"
        );
    }

    #[test]
    fn a_stored_ca_with_another_fingerprint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        store_ca(dir.path(), &ca.pem()).unwrap();
        let right = fingerprint(ca.der());
        assert!(stored_ca(dir.path(), Some(&right)).unwrap().is_some());
        let err = stored_ca(dir.path(), Some(&"0".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("join bundle: ca_sha256"), "{err}");
    }
}
