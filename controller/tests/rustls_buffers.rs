//! The vendored rustls (controller/vendor/README.md) frees a session's 4 KiB
//! receive buffer whenever a read would block with nothing buffered, so an
//! idle node connection does not hold it. A session that went idle between
//! records must still receive small and large records intact both ways,
//! also when records arrive in pieces, where a read blocks with part of a
//! record buffered (that buffer must be kept).

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bytes that differ with their position, so a stale, zeroed or shifted
/// buffer shows.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

/// Both ends as the controller's gRPC side runs them: a server certificate
/// and a client certificate from one CA, the client's verified.
fn configs() -> (TlsAcceptor, TlsConnector) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![CertificateDer::from(cert.der().to_vec())], key)
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let roots = Arc::new(roots);

    let (chain, key) = issue("controller.test");
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();

    let (chain, key) = issue("n1.node.measurelab.invalid");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    (
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    )
}

/// Answers each length-prefixed message with its body reversed (an answer
/// made of what was last in a buffer would not match), until the client
/// closes.
async fn echo_reversed(mut server: impl AsyncRead + AsyncWrite + Unpin) {
    loop {
        let len = match server.read_u32().await {
            Ok(len) => len as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => panic!("server read: {e}"),
        };
        let mut body = vec![0; len];
        server.read_exact(&mut body).await.expect("server body");
        body.reverse();
        server.write_all(&body).await.expect("server write");
        server.flush().await.expect("server flush");
    }
}

/// Sends each size in turn and checks the answer; between two messages both
/// ends sit in a read that blocks with nothing buffered.
async fn exchange(mut client: impl AsyncRead + AsyncWrite + Unpin, sizes: &[usize]) {
    for &size in sizes {
        let sent = payload(size);
        client.write_u32(size as u32).await.unwrap();
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut received = vec![0; size];
        client
            .read_exact(&mut received)
            .await
            .unwrap_or_else(|e| panic!("size {size}: {e}"));
        let mut expected = sent;
        expected.reverse();
        assert!(received == expected, "size {size}: body differs");
    }
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_tls_session_still_carries_large_records_both_ways() {
    let (acceptor, connector) = configs();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        echo_reversed(acceptor.accept(tcp).await.expect("server handshake")).await;
    });
    let run = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("controller.test").unwrap();
        let client = connector
            .connect(name, tcp)
            .await
            .expect("client handshake");
        // Small (buffer freed after it), large (many full 16 KiB records,
        // the buffer allocated again and grown), and so on.
        exchange(client, &[10, 3 << 20, 10, 100_000, 1, 3 << 20, 10]).await;
        server.await.unwrap();
    };
    // A receive buffer the patch lost would stall or fail the session.
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("exchanges finished within 60 s");
}

#[tokio::test]
async fn records_that_arrive_in_pieces_survive_reads_that_block_between_them() {
    let (acceptor, connector) = configs();
    // The server's end is a pipe that holds at most 7 bytes each way:
    // every record it reads, the handshake's too, arrives in pieces, and a
    // read that has taken one piece blocks until the next is relayed, with
    // part of a record buffered. The client's end holds 1 MiB, as a socket
    // buffer would, so neither side waits on the other's writes (the
    // server sends its session tickets while the client sends a request).
    let (client_io, client_wire) = tokio::io::duplex(1 << 20);
    let (server_wire, server_io) = tokio::io::duplex(7);
    let (mut from_client, mut to_client) = tokio::io::split(client_wire);
    let (mut from_server, mut to_server) = tokio::io::split(server_wire);
    tokio::spawn(async move {
        tokio::io::copy(&mut from_client, &mut to_server)
            .await
            .unwrap();
        to_server.shutdown().await.unwrap();
    });
    tokio::spawn(async move {
        tokio::io::copy(&mut from_server, &mut to_client)
            .await
            .unwrap();
        to_client.shutdown().await.unwrap();
    });
    let server = tokio::spawn(async move {
        echo_reversed(acceptor.accept(server_io).await.expect("server handshake")).await;
    });
    let run = async {
        let name = ServerName::try_from("controller.test").unwrap();
        let client = connector
            .connect(name, client_io)
            .await
            .expect("client handshake");
        exchange(client, &[1, 200, 20_000, 5, 4_096, 1]).await;
        server.await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("exchanges finished within 60 s");
}
