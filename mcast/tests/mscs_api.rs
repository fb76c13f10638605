//! The MSCS's HTTP API in-process on loopback: validation errors, task lifecycle and
//! result listing. The points are unreachable on purpose (closed loopback ports), so
//! every run fails at the source; that path must still produce a recorded result.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use measurelab_mcast::mscs::{run, MscsConfig, PointEndpoint};
use measurelab_mcast::result::{ReceiverStatus, ResultDocument, ResultSchema, RunStatus};
use serde_json::{json, Value};

fn closed_port() -> u16 {
    // Bind and drop: nothing listens there afterwards.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(state_dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let points = ["p1", "p2"]
        .iter()
        .map(|name| PointEndpoint {
            name: name.to_string(),
            control: format!("127.0.0.1:{}", closed_port()).parse().unwrap(),
        })
        .collect();
    let mut config = MscsConfig::new(points, state_dir.join("state.json"));
    config.periodic = None;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (base, stop)
}

#[tokio::test]
async fn bad_tasks_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start(dir.path()).await;
    let http = reqwest::Client::new();
    let cases = [
        (json!({"source": "nope"}), "source"),
        (json!({"source": "p1", "receivers": ["p1"]}), "receivers"),
        (json!({"source": "p1", "rate_pps": 0}), "rate_pps"),
        (json!({"source": "p1", "group": "10.1.1.1"}), "group"),
        (
            json!({"source": "p1", "ssm": true, "group": "239.1.1.1"}),
            "group",
        ),
        (
            json!({"source": "p1", "packet_size_bytes": 4}),
            "packet_size_bytes",
        ),
        (json!({"source": "p1", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        let response = http
            .post(format!("{base}/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_argument");
        assert_eq!(error["error"]["field"], field, "{body} -> {error}");
    }
    let missing = http
        .get(format!("{base}/tasks/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // Nothing was half-applied: no task was stored.
    let tasks: Value = http
        .get(format!("{base}/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["tasks"], json!([]));
}

#[tokio::test]
async fn a_task_with_an_unreachable_source_is_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _stop) = start(dir.path()).await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{base}/tasks"))
        .json(&json!({"source": "p1", "duration_seconds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let task = loop {
        let task: Value = http
            .get(format!("{base}/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if task["status"] == "failed" || task["status"] == "succeeded" {
            break task;
        }
        assert!(Instant::now() < deadline, "task never finished: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"].as_str().unwrap().contains("unreachable"),
        "{task}"
    );
    let page: Value = http
        .get(format!("{base}/results?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["next_since"], 1);
    // Read as the typed document: a field it lacks or mistypes fails here.
    let document: ResultDocument =
        serde_json::from_value(page["results"][0]["document"].clone()).unwrap();
    assert_eq!(document.schema, ResultSchema::V1);
    assert_eq!(document.task_id.as_deref(), Some(id.as_str()));
    assert_eq!(document.status, RunStatus::Failed);
    assert_eq!(document.receivers[0].point, "p2");
    assert_eq!(document.receivers[0].status, ReceiverStatus::Missing);
    let empty: Value = http
        .get(format!("{base}/results?since=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty["results"], json!([]));
    assert_eq!(empty["next_since"], 1);
}

/// The API's own bounds: a connection past the cap is closed at once, an idle or
/// header-dribbling connection is closed after the header-read timeout (freeing its
/// slot), and an oversized task body is refused.
#[tokio::test]
async fn connections_are_capped_and_idle_ones_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let points = ["p1", "p2"]
        .iter()
        .map(|name| PointEndpoint {
            name: name.to_string(),
            control: format!("127.0.0.1:{}", closed_port()).parse().unwrap(),
        })
        .collect();
    let mut config = MscsConfig::new(points, dir.path().join("state.json"));
    config.periodic = None;
    config.api_limits.max_connections = 3;
    config.api_limits.header_read_timeout = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        run(config, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let http = reqwest::Client::new();
    let healthz = format!("http://{addr}/healthz");
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);
    drop(http);

    // Three idle connections take every slot; one of them dribbles half a request line.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    idle[0].write_all(b"GET /healthz HT").await.unwrap();
    // The fourth is closed without an answer. (The earlier reqwest connection may still
    // hold a slot until the server sees it close, which only makes this sooner.)
    let mut fourth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(1), fourth.read(&mut byte))
        .await
        .expect("a connection past the cap is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The idle ones are closed by the header-read timeout (2 s), not held forever.
    let started = Instant::now();
    for mut stream in idle {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an idle connection is closed within the header-read timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // Their slots are free again.
    let http = reqwest::Client::new();
    assert_eq!(http.get(&healthz).send().await.unwrap().status(), 200);
    let huge = vec![b' '; 100 * 1024];
    let response = http
        .post(format!("http://{addr}/tasks"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    drop(http);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
