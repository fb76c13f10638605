//! Each limit of the accept loop, against a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use measurelab_httpserve::{plain, serve, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Far longer than any limit below: a wait that reaches it means a limit did
/// not act.
const NOT_ACTED: Duration = Duration::from_secs(5);

fn limits() -> Limits {
    Limits {
        max_connections: 64,
        max_connections_per_source: 64,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let router =
            axum::Router::new()
                .route("/", get(|| async { "ok" }))
                .route(
                    "/peer",
                    get(
                        |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                            SocketAddr,
                        >| async move { peer.ip().to_string() },
                    ),
                )
                .route("/stuck", get(std::future::pending::<&'static str>));
        Server::start_with(router, limits).await
    }

    async fn start_with(router: axum::Router, limits: Limits) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, plain, router, limits, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(NOT_ACTED, self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

/// A connection from `source` (any 127/8 address is local on Linux).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes; panics if it does not within NOT_ACTED.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(NOT_ACTED, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

async fn get_ok(addr: SocketAddr, path: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(NOT_ACTED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    closed_by_server(&mut silent).await;
    server.stop().await;
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    closed_by_server(&mut stream).await;
    server.stop().await;
}

#[tokio::test]
async fn a_head_sent_slowly_is_cut_off_by_the_header_read_timeout() {
    let server = Server::start(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    closed_by_server(&mut slow).await;
    server.stop().await;
}

#[tokio::test]
async fn a_handler_over_the_request_timeout_answers_408() {
    let server = Server::start(Limits {
        request_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/stuck", server.addr))
        .timeout(NOT_ACTED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");
    server.stop().await;
}

#[tokio::test]
async fn one_source_cannot_take_the_connections_of_another() {
    let server = Server::start(Limits {
        max_connections_per_source: 4,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.2", server.addr).await);
    }
    // The listener accepts in order: once the fifth is closed, the first four
    // are counted.
    let mut fifth = connect_from("127.0.0.2", server.addr).await;
    closed_by_server(&mut fifth).await;
    assert_eq!(get_ok(server.addr, "/peer").await, "127.0.0.1");
    // A slot comes back when its connection closes.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + NOT_ACTED;
    loop {
        let mut again = connect_from("127.0.0.2", server.addr).await;
        again
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        if matches!(again.read(&mut buf).await, Ok(n) if n > 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot is never reused"
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_overall_cap_are_closed_at_accept() {
    let server = Server::start(Limits {
        max_connections: 3,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held.push(connect_from(source, server.addr).await);
    }
    let mut fourth = connect_from("127.0.0.5", server.addr).await;
    closed_by_server(&mut fourth).await;
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let router = axum::Router::new().route(
        "/slow",
        get({
            let started = started.clone();
            || async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, plain, router, limits(), async move {
        let _ = stopped.await;
    }));
    let request = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        answer
    });
    // Shut down only once the handler runs.
    started.notified().await;
    let _ = stop.send(());
    let answer = tokio::time::timeout(NOT_ACTED, request)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.ends_with("done"), "{answer}");
    tokio::time::timeout(NOT_ACTED, task)
        .await
        .unwrap()
        .unwrap();
}

/// A route that lifts the request timeout and then reads its body.
fn upload_router() -> axum::Router {
    async fn upload(
        axum::Extension(timeout): axum::Extension<measurelab_httpserve::RequestTimeout>,
        body: axum::body::Body,
    ) -> String {
        timeout.lift();
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes.len().to_string(),
            Err(err) => err.to_string(),
        }
    }
    axum::Router::new().route("/upload", axum::routing::put(upload))
}

#[tokio::test]
async fn a_lifted_upload_outlasts_the_request_timeout_while_it_progresses() {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(500),
        ..limits()
    };
    let server = Server::start_with(upload_router(), limits).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\n")
        .await
        .unwrap();
    // Eight bytes over about 800 ms: four request timeouts, each gap under
    // the idle timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"x").await.unwrap();
    }
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(NOT_ACTED, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("8"),
        "{answer}"
    );
    server.task.abort();
}

#[tokio::test]
async fn a_lifted_upload_that_stalls_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..limits()
    };
    let server = Server::start_with(upload_router(), limits).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"PUT /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\nxx")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(NOT_ACTED, stream.read_to_end(&mut answer))
        .await
        .expect("the stalled upload is closed")
        .ok();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    server.task.abort();
}
