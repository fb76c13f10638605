//! TLS of the controller's two APIs: its CA (created on first start in the
//! data directory), the server certificate, node client certificates signed
//! from CSRs, and the HTTPS accept loop.
//!
//! Everything here is a separable piece: [`ServerTls::https_acceptor`] and
//! [`ServerTls::grpc_acceptor`] are plain `TlsAcceptor`s, so another accept
//! loop can take them as they are.
//!
//! Node certificates carry the node id as a DNS name
//! (`<node id>.node.measurelab.invalid`, `.invalid` so it can never be a
//! real host) and the node name as the common name. Each gRPC call but
//! Register must present one naming the node the call is about.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;

/// The CA certificate in the data directory (PEM, world-readable: it is public).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key in the data directory (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// Default lifetime of a node certificate; agents renew at two thirds of it.
pub const DEFAULT_NODE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// A node certificate lasts at least this many heartbeat intervals: agents
/// renew it at a heartbeat two thirds into its life, and the last third
/// must hold two heartbeats so that one failed renewal is not yet fatal.
pub const MIN_NODE_CERT_HEARTBEATS: u32 = 6;
/// Suffix of the DNS name a node certificate carries after the node id.
pub const NODE_NAME_SUFFIX: &str = ".node.measurelab.invalid";
/// The CA's subject. Fixed, because a restarted controller rebuilds the
/// issuer from it and the stored key (rcgen cannot parse a certificate
/// without x509-parser): certificates it signs must name the same issuer.
const CA_COMMON_NAME: &str = "measurelab controller CA";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// The server certificate is made anew at each start, so a long validity
/// costs nothing and SAN changes apply on restart.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);
/// Clock skew between controller and nodes that a fresh certificate tolerates.
const BACKDATE: Duration = Duration::from_secs(3600);

/// How the controller serves TLS (`ControllerConfig::tls`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Host names and IP addresses the generated server certificate is
    /// valid for, besides the bind addresses (`--tls-san`).
    pub sans: Vec<String>,
    /// An operator's certificate chain and key (PEM files) instead of a
    /// generated server certificate. Node certificates still come from the
    /// controller's own CA.
    pub cert_files: Option<(PathBuf, PathBuf)>,
    /// Lifetime of the node certificates the controller signs.
    pub node_cert_lifetime: Duration,
}

impl TlsConfig {
    /// A generated server certificate valid for `sans` and the bind
    /// addresses, and 30-day node certificates.
    pub fn generated(sans: Vec<String>) -> Self {
        TlsConfig {
            sans,
            cert_files: None,
            node_cert_lifetime: DEFAULT_NODE_CERT_LIFETIME,
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A key, certificate or setting is unusable; `what` names it.
    #[error("{what}: {reason}")]
    Invalid {
        /// The field or file.
        what: String,
        /// Why.
        reason: String,
    },
}

fn invalid(what: impl Into<String>, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Why a node's CSR was refused.
#[derive(Debug, thiserror::Error)]
#[error("csr_pem: {0}")]
pub struct CsrError(pub String);

/// The controller's certificate authority.
pub struct Ca {
    key: KeyPair,
    /// Rebuilt from the fixed subject and the key: only its subject and key
    /// identifier end up in what it signs.
    issuer: rcgen::Certificate,
    pem: String,
    der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    // Path length 0: it signs leaf certificates only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// The text of `path`, or `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `contents` to `path` with `mode`, atomically (tmp + rename), so a
/// crash never leaves half a key.
pub(crate) fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // open()'s mode only applies on creation; a stale tmp could be looser.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// SHA-256 of a DER certificate as lower-case hex: what a join bundle pins.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str, what: &str) -> Result<Vec<u8>, TlsError> {
    let certs = parse_certs(pem, what)?;
    Ok(certs[0].to_vec())
}

fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, "holds no PEM certificate"));
    }
    Ok(certs)
}

impl Ca {
    /// Load `ca.pem`/`ca.key` from `data_dir`, or create both on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = data_dir.join(CA_CERT_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(pem), Some(key_pem)) => {
                let key = KeyPair::from_pem(&key_pem)
                    .map_err(|e| invalid(key_path.display().to_string(), e))?;
                let der = first_cert_der(&pem, &cert_path.display().to_string())?;
                let issuer = ca_params()
                    .self_signed(&key)
                    .map_err(|e| invalid(key_path.display().to_string(), e))?;
                // The stored certificate must hold the stored key, or every
                // certificate signed here would fail to verify against it.
                let stored_key = spki_of(&der).ok_or_else(|| {
                    invalid(cert_path.display().to_string(), "cannot read its public key")
                })?;
                if stored_key != key.public_key_der() {
                    return Err(invalid(
                        cert_path.display().to_string(),
                        format!("does not belong to the key in {}", key_path.display()),
                    ));
                }
                Ok(Ca {
                    key,
                    issuer,
                    pem,
                    der,
                })
            }
            (None, None) => {
                let key = KeyPair::generate().map_err(|e| invalid("CA key", e))?;
                let mut params = ca_params();
                validity(&mut params, CA_VALIDITY);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| invalid("CA certificate", e))?;
                // Key first: a certificate without its key would be refused
                // at the next start, a key without certificate too, but a
                // rerun after the key alone is written is impossible to
                // confuse with a valid pair.
                write_atomically(&key_path, &key.serialize_pem(), 0o600)?;
                let pem = cert.pem();
                write_atomically(&cert_path, &pem, 0o644)?;
                tracing::info!(path = %cert_path.display(), fingerprint = %fingerprint(cert.der()), "created the controller CA");
                Ok(Ca {
                    der: cert.der().to_vec(),
                    issuer: cert,
                    key,
                    pem,
                })
            }
            (Some(_), None) => Err(invalid(
                key_path.display().to_string(),
                format!("is missing while {} exists; restore it or remove both to make a new CA (every node then needs a new join bundle)", cert_path.display()),
            )),
            (None, Some(_)) => Err(invalid(
                cert_path.display().to_string(),
                format!("is missing while {} exists; restore it or remove both to make a new CA (every node then needs a new join bundle)", key_path.display()),
            )),
        }
    }

    /// The CA certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// SHA-256 of the CA certificate (lower-case hex).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }

    /// A new server certificate for `sans`, signed by this CA: the chain
    /// (leaf, then the CA, so an agent can pin the CA from the handshake)
    /// and the key, both PEM.
    fn server_identity(&self, sans: &[String]) -> Result<(String, String), TlsError> {
        let mut params = CertificateParams::new(sans.to_vec())
            .map_err(|e| invalid("tls sans", format!("{sans:?}: {e}")))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "measurelab controller");
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, SERVER_CERT_VALIDITY);
        let key = KeyPair::generate().map_err(|e| invalid("server key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|e| invalid("server certificate", e))?;
        Ok((format!("{}{}", cert.pem(), self.pem), key.serialize_pem()))
    }

    /// Check a node's CSR (well-formed, ECDSA P-256, signed by its own key)
    /// without signing anything: Register calls this before it changes the
    /// store, so a bad CSR leaves nothing half-applied.
    pub fn check_csr(&self, csr_pem: &str) -> Result<CsrKey, CsrError> {
        parse_csr(csr_pem)
    }

    /// A client certificate for `key`, bound to `node_id` (DNS name) and
    /// naming `node_name`, valid for `lifetime`.
    pub fn sign_node(
        &self,
        key: &CsrKey,
        node_id: &str,
        node_name: &str,
        lifetime: Duration,
    ) -> Result<NodeCert, CsrError> {
        self.sign_nodes(key, &[node_id], node_name, lifetime)
    }

    /// A client certificate bound to every node of `node_ids`. The
    /// controller never issues one: it exists for the heartbeat benchmark,
    /// whose simulated nodes outnumber the connections one process may
    /// open, so one connection carries the heartbeats of a few nodes and
    /// the `check_peer` test stays the one real agents pass.
    pub fn sign_nodes(
        &self,
        key: &CsrKey,
        node_ids: &[&str],
        node_name: &str,
        lifetime: Duration,
    ) -> Result<NodeCert, CsrError> {
        let sans = node_ids
            .iter()
            .map(|node_id| {
                rcgen::Ia5String::try_from(format!("{node_id}{NODE_NAME_SUFFIX}"))
                    .map(SanType::DnsName)
                    .map_err(|e| CsrError(format!("node id {node_id:?} cannot be a DNS name: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_name);
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, lifetime);
        // rcgen would derive the serial from the public key, so a renewal
        // with the same key would repeat it and revoking one certificate
        // would revoke the other. 16 random bytes; the first byte between
        // 0x40 and 0x7f keeps the INTEGER positive without a padding byte
        // and without a leading zero, so its hex is the same when
        // [`cert_serial`] reads it back.
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
        serial[0] = (serial[0] & 0x3f) | 0x40;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let not_after = params.not_after;
        let cert = params
            .signed_by(key, &self.issuer, &self.key)
            .map_err(|e| CsrError(format!("cannot sign: {e}")))?;
        Ok(NodeCert {
            pem: cert.pem(),
            serial: hex::encode(serial),
            not_after,
        })
    }
}

/// A signed node certificate and what the controller records of it.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The certificate (PEM).
    pub pem: String,
    /// Its serial number, lower-case hex (as [`cert_serial`] reads it).
    pub serial: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
}

/// The serial number of a DER certificate as lower-case hex (without the
/// sign padding byte DER may add), or `None` if it does not parse.
pub fn cert_serial(cert_der: &[u8]) -> Option<String> {
    yasna::parse_der(cert_der, |r| {
        r.read_sequence(|r| {
            let serial = r.next().read_sequence(|r| {
                // [0] EXPLICIT version is optional (absent means v1).
                r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_der()))?;
                let (bytes, _non_negative) = r.next().read_bigint_bytes()?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(bytes)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(serial)
        })
    })
    .ok()
    .map(|bytes| {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        hex::encode(&bytes[start..])
    })
}

/// The notAfter of a DER certificate, or `None` if it does not parse.
pub fn cert_not_after(cert_der: &[u8]) -> Option<OffsetDateTime> {
    fn time(r: yasna::BERReader<'_, '_>) -> yasna::ASN1Result<OffsetDateTime> {
        let raw = r.read_der()?;
        match raw.first() {
            Some(0x17) => yasna::parse_der(&raw, |r| r.read_utctime()).map(|t| *t.datetime()),
            _ => yasna::parse_der(&raw, |r| r.read_generalized_time()).map(|t| *t.datetime()),
        }
    }
    yasna::parse_der(cert_der, |r| {
        r.read_sequence(|r| {
            let not_after = r.next().read_sequence(|r| {
                // [0] version, serial, signature algorithm, issuer, then validity.
                for _ in 0..4 {
                    r.next().read_der()?;
                }
                let not_after = r.next().read_sequence(|r| {
                    r.next().read_der()?;
                    time(r.next())
                })?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(not_after)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(not_after)
        })
    })
    .ok()
}

/// The SubjectPublicKeyInfo of a DER certificate, or `None` if it does not parse.
fn spki_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    yasna::parse_der(cert_der, |r| {
        r.read_sequence(|r| {
            let spki = r.next().read_sequence(|r| {
                // [0] version, serial, signature algorithm, issuer, validity,
                // subject, then the SubjectPublicKeyInfo.
                r.next().read_der()?;
                for _ in 0..5 {
                    r.next().read_der()?;
                }
                let spki = r.next().read_der()?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(spki)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(spki)
        })
    })
    .ok()
}

/// The public key of a checked CSR.
#[derive(Debug, Clone)]
pub struct CsrKey {
    /// The EC point (the SubjectPublicKeyInfo's BIT STRING).
    point: Vec<u8>,
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_ECDSA_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
/// A CSR is a few hundred bytes; anything far larger is not one.
const MAX_CSR_PEM: usize = 8 * 1024;

/// Parse a PKCS#10 request (RFC 2986) far enough to take its public key,
/// and check its self-signature (proof that the requester holds the key).
/// Only ECDSA P-256 with SHA-256 is accepted: what agents generate, and one
/// algorithm is less to get wrong.
fn parse_csr(csr_pem: &str) -> Result<CsrKey, CsrError> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(CsrError(format!(
            "is {} bytes; a CSR is at most {MAX_CSR_PEM}",
            csr_pem.len()
        )));
    }
    let mut reader = csr_pem.as_bytes();
    let der = match rustls_pemfile::read_one(&mut reader) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der,
        Ok(_) => return Err(CsrError("is not a PEM CERTIFICATE REQUEST".into())),
        Err(e) => return Err(CsrError(format!("is not PEM: {e}"))),
    };
    let ec_key = yasna::models::ObjectIdentifier::from_slice(OID_EC_PUBLIC_KEY);
    let p256 = yasna::models::ObjectIdentifier::from_slice(OID_P256);
    let ecdsa_sha256 = yasna::models::ObjectIdentifier::from_slice(OID_ECDSA_SHA256);
    let parsed = yasna::parse_der(der.as_ref(), |r| {
        r.read_sequence(|r| {
            let info = r.next().read_der()?;
            let signature_algorithm = r.next().read_sequence(|r| {
                let oid = r.next().read_oid()?;
                // Parameters are absent for ECDSA; tolerate NULL.
                r.read_optional(|r| r.read_null())?;
                Ok(oid)
            })?;
            let (signature, _) = r.next().read_bitvec_bytes()?;
            Ok((info, signature_algorithm, signature))
        })
    })
    .map_err(|e| CsrError(format!("is not a PKCS#10 request: {e}")))?;
    let (info, signature_algorithm, signature) = parsed;
    if signature_algorithm != ecdsa_sha256 {
        return Err(CsrError(format!(
            "is signed with {signature_algorithm}; only ECDSA with SHA-256 is accepted"
        )));
    }
    let (key_algorithm, curve, point) = yasna::parse_der(&info, |r| {
        r.read_sequence(|r| {
            let version = r.next().read_u8()?;
            if version != 0 {
                return Err(yasna::ASN1Error::new(yasna::ASN1ErrorKind::Invalid));
            }
            r.next().read_der()?; // subject
            let spki = r.next().read_sequence(|r| {
                let (algorithm, curve) = r.next().read_sequence(|r| {
                    let algorithm = r.next().read_oid()?;
                    let curve = r.next().read_oid()?;
                    Ok((algorithm, curve))
                })?;
                let (point, _) = r.next().read_bitvec_bytes()?;
                Ok((algorithm, curve, point))
            })?;
            // [0] attributes (rcgen writes them, possibly empty).
            r.read_optional(|r| r.read_der())?;
            Ok(spki)
        })
    })
    .map_err(|e| CsrError(format!("its request info does not parse: {e}")))?;
    if key_algorithm != ec_key || curve != p256 {
        return Err(CsrError(
            "holds a key other than ECDSA P-256; only P-256 is accepted".into(),
        ));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(&info, &signature)
        .map_err(|_| {
            CsrError("its signature does not verify with its own key (not a valid CSR)".into())
        })?;
    Ok(CsrKey { point })
}

/// Whether `cert` (a node's leaf certificate, already verified against the
/// CA by the handshake) is bound to `node_id`.
pub fn cert_names_node(cert: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(format!("{node_id}{NODE_NAME_SUFFIX}")) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// What both servers need: the server identity and the CA.
#[derive(Debug, Clone)]
pub struct ServerTls {
    chain_pem: String,
    key_pem: String,
    /// The CA that signs (and verifies) node certificates.
    pub ca: Arc<Ca>,
    /// Lifetime of the node certificates signed at registration.
    pub node_cert_lifetime: Duration,
}

impl ServerTls {
    /// Set up from `config`: load or create the CA in `data_dir`, and make a
    /// server certificate for the SANs plus `bind_addresses` (unless the
    /// operator gave one).
    pub fn new(
        config: &TlsConfig,
        data_dir: &Path,
        bind_addresses: &[std::net::IpAddr],
    ) -> Result<ServerTls, TlsError> {
        let ca = Arc::new(Ca::load_or_create(data_dir)?);
        let (chain_pem, key_pem) = match &config.cert_files {
            Some((cert, key)) => {
                let chain = read_optional(cert)?.ok_or_else(|| {
                    invalid("tls_cert", format!("{} does not exist", cert.display()))
                })?;
                let key_pem = read_optional(key)?.ok_or_else(|| {
                    invalid("tls_key", format!("{} does not exist", key.display()))
                })?;
                parse_certs(&chain, "tls_cert")?;
                (chain, key_pem)
            }
            None => {
                let mut sans = config.sans.clone();
                for ip in bind_addresses {
                    // An unspecified bind address is no name to reach us by.
                    if !ip.is_unspecified() && !sans.contains(&ip.to_string()) {
                        sans.push(ip.to_string());
                    }
                }
                if sans.is_empty() {
                    return Err(invalid(
                        "tls sans",
                        "no name to issue the server certificate for: the listeners bind 0.0.0.0, so give the names and addresses clients use (--tls-san)",
                    ));
                }
                ca.server_identity(&sans)?
            }
        };
        let tls = ServerTls {
            chain_pem,
            key_pem,
            ca,
            node_cert_lifetime: config.node_cert_lifetime,
        };
        // Fail at start, not at the first handshake.
        tls.https_acceptor()?;
        tls.grpc_acceptor()?;
        Ok(tls)
    }

    /// The HTTPS side: server authentication only (operators and the
    /// provider authenticate with bearer tokens).
    pub fn https_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let (certs, key) = self.server_identity()?;
        let mut config = server_config_builder()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid("tls_cert", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The gRPC side: the same server certificate, and node certificates
    /// verified against the CA. Optional at the handshake because Register
    /// comes before a node has one; every other call checks it. A plain
    /// acceptor rather than tonic's TLS, so the gRPC accept stream runs the
    /// handshake itself, under its handshake timeout.
    pub fn grpc_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in parse_certs(self.ca.pem(), "ca.pem")? {
            roots.add(ca).map_err(|e| invalid("ca.pem", e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid("ca.pem", e))?;
        let (certs, key) = self.server_identity()?;
        let mut config = server_config_builder()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| invalid("tls_cert", e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    fn server_identity(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let certs = parse_certs(&self.chain_pem, "tls_cert")?;
        let key = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(|e| invalid("tls_key", format!("not a PEM key: {e}")))?
            .ok_or_else(|| invalid("tls_key", "holds no PEM private key"))?;
        Ok((certs, key))
    }
}

fn server_config_builder(
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsError> {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(key: &KeyPair) -> String {
        CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn ca_is_created_once_with_a_private_key_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
    }

    #[test]
    fn a_cert_without_its_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.key") && err.contains("missing"), "{err}");
    }

    #[test]
    fn node_certificates_name_their_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr_key = ca.check_csr(&csr(&key)).unwrap();
        let cert = ca
            .sign_node(&csr_key, "n-1", "alpha", Duration::from_secs(3600))
            .unwrap();
        let der = first_cert_der(&cert.pem, "cert").unwrap();
        let der = CertificateDer::from(der);
        assert!(cert_names_node(&der, "n-1"));
        assert!(!cert_names_node(&der, "n-2"));
    }

    #[test]
    fn each_certificate_has_its_own_serial_even_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr_key = ca.check_csr(&csr(&key)).unwrap();
        let sign = || {
            ca.sign_node(&csr_key, "n-1", "alpha", Duration::from_secs(3600))
                .unwrap()
        };
        let (first, second) = (sign(), sign());
        assert_ne!(first.serial, second.serial);
        for cert in [first, second] {
            let der = first_cert_der(&cert.pem, "cert").unwrap();
            // What the peer check reads back is what the store recorded.
            assert_eq!(cert_serial(&der).as_deref(), Some(cert.serial.as_str()));
        }
        assert_eq!(cert_serial(b"not DER"), None);
    }

    #[test]
    fn a_multi_node_certificate_names_exactly_its_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let csr_key = ca.check_csr(&csr(&key)).unwrap();
        let pem = ca
            .sign_nodes(&csr_key, &["n-1", "n-3"], "pool", Duration::from_secs(3600))
            .unwrap();
        let der = CertificateDer::from(first_cert_der(&pem.pem, "cert").unwrap());
        assert!(cert_names_node(&der, "n-1"));
        assert!(cert_names_node(&der, "n-3"));
        assert!(!cert_names_node(&der, "n-2"));
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let key = KeyPair::generate().unwrap();
        let pem = csr(&key);
        let mut der = match rustls_pemfile::read_one(&mut pem.as_bytes()).unwrap() {
            Some(rustls_pemfile::Item::Csr(der)) => der.to_vec(),
            other => panic!("{other:?}"),
        };
        // Flip a bit inside the public key: the self-signature breaks.
        let at = der.len() - 90;
        der[at] ^= 1;
        use base64::Engine as _;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let err = parse_csr(&tampered).unwrap_err().to_string();
        assert!(err.starts_with("csr_pem: "), "{err}");
        assert!(parse_csr("hello").is_err());
    }
}
