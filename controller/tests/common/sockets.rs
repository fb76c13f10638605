//! Raw TCP peers for the bounds tests: many connections from chosen
//! loopback source addresses, and whether the server has closed them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `source` (any of
/// 127.0.0.0/8 works without configuration), so one test can be several
/// sources to the per-source caps.
pub async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("source address"))?;
    socket.connect(to).await
}

/// True once the server closed `stream` (EOF or reset); false while open.
/// Reads (and drops) what the server sent meanwhile.
pub fn closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Polls until at least `want` of `streams` are closed and returns how many
/// are; fails after `within`.
pub async fn wait_closed(streams: &[TcpStream], want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = streams.iter().filter(|s| closed(s)).count();
        if n >= want {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {} idle connections closed, want {want}",
            streams.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
