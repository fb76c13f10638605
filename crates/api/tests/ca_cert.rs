//! A client given `ca_cert` (the provider's and the CLI's) trusts that CA
//! and no other: an HTTPS server whose certificate chains to another CA is
//! refused, even when that CA is where a system trust store would be.
//!
//! What this cannot catch offline: the client's built-in roots are the
//! public web PKI compiled into the binary (reqwest's `rustls-tls`, no
//! system store), and no test can hold a certificate one of them signed.
//! `tls_built_in_root_certs(false)` in `Client::new` keeps them out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use measurelab_api::client::{Client, ClientError};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA certificate and its key.
fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

/// An HTTPS server on 127.0.0.1 with a certificate for localhost signed by
/// `issuer`, answering every request with an empty node list; returns its
/// endpoint and how many handshakes it completed.
async fn serve(issuer: &(rcgen::Certificate, KeyPair)) -> (String, Arc<AtomicUsize>) {
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer.0, &issuer.1)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"nodes":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://localhost:{port}"), handshakes)
}

#[tokio::test]
async fn a_server_of_another_ca_is_refused_with_ca_cert_given() {
    let ours = ca("our controller CA");
    let other = ca("another CA");
    // The other CA where a system trust store would list it: a client that
    // read the system store would trust it.
    let store = tempfile_path("other-ca.pem");
    std::fs::write(&store, other.0.pem()).unwrap();
    std::env::set_var("SSL_CERT_FILE", &store);
    std::env::set_var("SSL_CERT_DIR", store.parent().unwrap());

    let (endpoint, handshakes) = serve(&other).await;
    let trusting_ours = Client::new(&endpoint, "token", Some(ours.0.pem().as_bytes())).unwrap();
    // Refused as a certificate the client does not trust, not as a
    // controller that is not there: the advice differs (ca_cert, not
    // "start the controller").
    match trusting_ours.list_nodes().await {
        Err(ClientError::Untrusted {
            endpoint: at,
            reason,
        }) => {
            assert_eq!(at, endpoint);
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("served by another CA's certificate, or refused otherwise: {other:?}"),
    }
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        0,
        "a handshake completed"
    );

    // The same server with its own CA given: served. So it was the CA
    // that decided, not the server.
    let trusting_other = Client::new(&endpoint, "token", Some(other.0.pem().as_bytes())).unwrap();
    let nodes = trusting_other.list_nodes().await.unwrap();
    assert!(nodes.is_empty());
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    let _ = std::fs::remove_dir_all(store.parent().unwrap());
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("measurelab-ca-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
