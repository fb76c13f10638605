//! The vendored h2 (controller/vendor/README.md) frees a connection's write
//! buffer once it is flushed and shrinks its read buffer between bursts of
//! frames, so an idle node connection holds neither. A connection that went
//! idle must still carry large messages both ways, intact, and small ones
//! between them.

use std::time::Duration;

/// Bytes that differ with their position, so a stale or shifted buffer
/// shows.
fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

async fn read_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body chunk");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release capacity");
        received.extend_from_slice(&chunk);
    }
    received
}

#[tokio::test]
async fn an_idle_http2_connection_still_carries_large_messages_both_ways() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers each request with its body reversed: an answer made of what
    // was last in a buffer would not match.
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut connection = h2::server::handshake(tcp).await.unwrap();
        while let Some(accepted) = connection.accept().await {
            let (request, mut respond) = accepted.unwrap();
            tokio::spawn(async move {
                let mut body = read_body(request.into_body()).await;
                body.reverse();
                let mut send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                send.send_data(body.into(), true).unwrap();
            });
        }
    });

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        // Small (buffers released after it), large (read buffer grows from
        // its idle size, write buffer allocated again and chained), and so on.
        for size in [10, 3 << 20, 10, 100_000, 1, 3 << 20, 10] {
            let sent = payload(size);
            let request = http::Request::post("http://controller/echo")
                .body(())
                .unwrap();
            let (response, mut send) = client.send_request(request, false).unwrap();
            send.send_data(sent.clone().into(), true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let received = read_body(response.into_body()).await;
            let mut expected = sent;
            expected.reverse();
            assert_eq!(received.len(), expected.len(), "size {size}");
            assert!(received == expected, "size {size}: body differs");
            client = client.ready().await.unwrap();
        }
    };
    // A buffer the patch failed to give back would stall the connection.
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("exchanges finished within 60 s");
}
