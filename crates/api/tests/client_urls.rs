//! What the client puts on the wire for awkward names: the request line a
//! controller receives, read from a bare TCP listener.

use measurelab_api::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves one connection: answers 404 and returns the request line.
async fn request_line_of(call: impl AsyncFnOnce(Client)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request head ended");
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let head = String::from_utf8(head).unwrap();
        head.lines().next().unwrap().to_string()
    });
    call(Client::new(&endpoint, "token", None).unwrap()).await;
    server.await.unwrap()
}

#[tokio::test]
async fn a_name_with_slash_question_mark_and_space_is_one_path_segment() {
    let line = request_line_of(async |client| {
        let err = client.get_vm("lab/a?b c").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    })
    .await;
    assert_eq!(line, "GET /v1/vms/lab%2Fa%3Fb%20c HTTP/1.1");
}

#[tokio::test]
async fn a_task_name_cannot_add_query_parameters() {
    let line = request_line_of(async |client| {
        let err = client.latest_result("t&limit=1 #").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    })
    .await;
    assert_eq!(
        line,
        "GET /v1/results/latest?task=t%26limit%3D1%20%23 HTTP/1.1"
    );
}
