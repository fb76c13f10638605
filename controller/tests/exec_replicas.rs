//! `vm exec` across two controller replicas on one PostgreSQL database
//! (issue 13 §4): the agent streams its ExecChannel to replica B, the
//! client reaches replica A, and A forwards the session to B (recorded in
//! the database with B's --advertise-url) and splices the streams. A
//! request already forwarded is never forwarded again. Deployment outputs,
//! which a viewer may read, are forwarded as HTTP requests the same way.

mod common;

use base64::Engine;
use common::TestController;
use futures::SinkExt;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::exec::{ExecExit, ExecFrame, ExecOpen, ExecStream, EXEC_UPGRADE_PROTOCOL};
use measurelab_api::http::OUTPUT_SHA256_HEADER;
use measurelab_api::node_v1::{ExecDown, ExecUp, RegisterResponse};
use measurelab_controller::{ControllerConfig, RateLimits, TokenBucket};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A replica on `url`; `advertise`: it records its HTTP address for the
/// others. Replicas share the join token (and would share the TLS CA).
async fn replica(dir: &std::path::Path, url: &str, advertise: bool) -> TestController {
    replica_with(dir, url, advertise, |_| {}).await
}

/// [`replica`], with `tweak` applied to its configuration last.
async fn replica_with(
    dir: &std::path::Path,
    url: &str,
    advertise: bool,
    tweak: impl FnOnce(&mut ControllerConfig),
) -> TestController {
    TestController::start_replica(dir, url, |config| {
        config.join_token = Some("replicas-join-token".into());
        if advertise {
            let http = config.http_listener.local_addr().unwrap();
            config.advertise_url = Some(format!("http://{http}"));
        }
        tweak(config);
    })
    .await
}

/// Plays `node`'s agent: its exec channel to `controller`, which records
/// the channel before it answers. Returns the frames up and the stream down.
async fn agent_channel(
    controller: &TestController,
    node: &RegisterResponse,
) -> (
    futures::channel::mpsc::Sender<ExecUp>,
    tonic::Streaming<ExecDown>,
) {
    let (mut up, up_rx) = futures::channel::mpsc::channel::<ExecUp>(16);
    up.send(ExecUp {
        node_id: node.node_id.clone(),
        node_secret: node.node_secret.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let down = controller
        .grpc()
        .await
        .exec_channel(up_rx)
        .await
        .unwrap()
        .into_inner();
    (up, down)
}

fn frame(session_id: &str, frame: &ExecFrame) -> ExecUp {
    ExecUp {
        session_id: session_id.to_string(),
        frame_json: serde_json::to_vec(frame).unwrap(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_one_replica_reaches_the_agent_streaming_to_the_other() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(dir_a.path(), db.url(), true).await;
    let node = a.register("n1", "").await;
    // Before B starts: B loads the token table at start.
    let member = a.tenant_token("t1", "ci", "member").await;
    for (path, body) in [
        ("/v1/platforms", json!({"name": "lab", "nodes": ["n1"]})),
        (
            "/v1/vms",
            json!({"name": "box", "platform": "lab", "node": "n1", "vcpus": 1,
                "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
        ),
    ] {
        let (code, answer) = a.call_as(&member, Method::POST, path, Some(body)).await;
        assert_eq!(code, 201, "{path}: {answer}");
    }
    let (_, vm) = a
        .call_as(&member, Method::GET, "/v1/vms/lab%2Fbox", None)
        .await;
    let vm_id = vm["id"].as_str().unwrap().to_string();
    let b = replica(dir_b.path(), db.url(), true).await;

    let (mut up, mut down) = agent_channel(&b, &node).await;

    // A request marked as forwarded is not forwarded again: A, which has
    // no channel of n1, refuses it as before forwarding existed.
    let refused = reqwest::Client::new()
        .post(a.url(&format!("/v1/vms/{vm_id}/exec")))
        .bearer_auth(&member)
        .header("connection", "upgrade")
        .header("upgrade", EXEC_UPGRADE_PROTOCOL)
        .header("x-measurelab-forwarded", "1")
        .json(&json!({"kind": "command", "argv": ["true"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let message = refused.text().await.unwrap();
    assert!(message.contains("no exec channel"), "{message}");

    // Through A: forwarded to B, which opens the session on the agent.
    let client = Client::new(a.url("").trim_end_matches('/'), &member, None).unwrap();
    let open = ExecOpen::Command {
        argv: vec!["echo".into(), "hi".into()],
        tty: false,
        size: None,
    };
    let upgraded = match client.exec_open("lab/box", &open).await {
        Ok(upgraded) => upgraded,
        Err(ClientError::Api {
            status, message, ..
        }) => {
            panic!("A refused the session: {status} {message}")
        }
        Err(other) => panic!("{other}"),
    };
    let first: ExecDown = down.message().await.unwrap().unwrap();
    assert_eq!(first.vm_id, vm_id);
    assert_eq!(
        serde_json::from_slice::<ExecFrame>(&first.frame_json).unwrap(),
        ExecFrame::Open { open }
    );
    let session = first.session_id;
    let output = ExecFrame::Output {
        stream: ExecStream::Stdout,
        data: "aGkK".into(),
    };
    let exit = ExecFrame::Exit {
        exit: ExecExit {
            code: Some(3),
            ..Default::default()
        },
    };
    up.send(frame(&session, &output)).await.unwrap();

    let (reader, mut writer) = tokio::io::split(upgraded);
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let line = lines.next_line().await.unwrap().expect("the output frame");
    assert_eq!(serde_json::from_str::<ExecFrame>(&line).unwrap(), output);
    // The client's frames cross both replicas to the agent.
    let credit = ExecFrame::Credit { bytes: 3 };
    let mut line = serde_json::to_vec(&credit).unwrap();
    line.push(b'\n');
    writer.write_all(&line).await.unwrap();
    let next = down.message().await.unwrap().unwrap();
    assert_eq!(next.session_id, session);
    assert_eq!(
        serde_json::from_slice::<ExecFrame>(&next.frame_json).unwrap(),
        credit
    );
    up.send(frame(&session, &exit)).await.unwrap();
    let line = lines.next_line().await.unwrap().expect("the exit frame");
    assert_eq!(serde_json::from_str::<ExecFrame>(&line).unwrap(), exit);
    assert_eq!(
        lines.next_line().await.unwrap(),
        None,
        "the stream ends after the exit"
    );
    writer.shutdown().await.unwrap();

    drop(down);
    drop(up);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_an_advertise_url_is_named_in_the_refusal() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(dir_a.path(), db.url(), true).await;
    let node = a.register("n1", "").await;
    a.create_platform("lab", &["n1"]).await;
    a.create_vm("box", "lab", "n1").await;
    let b = replica(dir_b.path(), db.url(), false).await;
    let (up, down) = agent_channel(&b, &node).await;

    let open = ExecOpen::Command {
        argv: vec!["true".into()],
        tty: false,
        size: None,
    };
    match a.client().exec_open("lab/box", &open).await {
        Err(ClientError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 503, "{message}");
            assert!(
                message.contains("exec channel is on controller replica")
                    && message.contains("no --advertise-url"),
                "{message}"
            );
        }
        Ok(_) => panic!("the session was opened without B's URL"),
        Err(other) => panic!("{other}"),
    }
    drop(down);
    drop(up);
    b.stop().await;
    a.stop().await;
}

/// The output file the fake guest holds, and its SHA-256.
const OUTPUT_PATH: &str = "/var/lib/probe/result.txt";
const OUTPUT: &[u8] = b"measurelab output\n";
const OUTPUT_SHA256: &str = "2ce25d86c04a20a579b537915f8775dd23258c357068b4c15bd7f6a353532ab9";

/// Plays the guest behind `node`'s agent for output reads: answers every
/// `stat` and `get` of [`OUTPUT_PATH`] with [`OUTPUT`], counting them in
/// `answered`.
fn serve_output(
    mut up: futures::channel::mpsc::Sender<ExecUp>,
    mut down: tonic::Streaming<ExecDown>,
    answered: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(message)) = down.message().await {
            let Ok(ExecFrame::Open { open }) = serde_json::from_slice(&message.frame_json) else {
                continue; // credits for the download
            };
            let done = ExecExit {
                code: Some(0),
                size: Some(OUTPUT.len() as u64),
                sha256: Some(OUTPUT_SHA256.into()),
                ..Default::default()
            };
            let id = message.session_id;
            match open {
                ExecOpen::Stat { path, .. } if path == OUTPUT_PATH => {
                    let exit = ExecExit {
                        mtime_unix: Some(1_700_000_000),
                        ..done
                    };
                    up.send(frame(&id, &ExecFrame::Exit { exit }))
                        .await
                        .unwrap();
                }
                ExecOpen::Get { path, .. } if path == OUTPUT_PATH => {
                    let data = base64::engine::general_purpose::STANDARD.encode(OUTPUT);
                    let output = ExecFrame::Output {
                        stream: ExecStream::Stdout,
                        data,
                    };
                    up.send(frame(&id, &output)).await.unwrap();
                    up.send(frame(&id, &ExecFrame::Exit { exit: done }))
                        .await
                        .unwrap();
                }
                other => panic!("the guest was asked {other:?}"),
            }
            answered.fetch_add(1, Ordering::SeqCst);
        }
    })
}

/// A deployment of `member`'s tenant on platform `lab` over `vms` (name,
/// node), declaring [`OUTPUT_PATH`]; returns its outputs path.
async fn deployment_with_output(
    controller: &TestController,
    member: &str,
    vms: &[(&str, &str)],
) -> String {
    let nodes: Vec<&str> = vms.iter().map(|(_, node)| *node).collect();
    let (code, answer) = controller
        .call_as(
            member,
            Method::POST,
            "/v1/platforms",
            Some(json!({"name": "lab", "nodes": nodes})),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
    for (name, node) in vms {
        let vm = json!({"name": name, "platform": "lab", "node": node, "vcpus": 1,
            "memory_mib": 64, "appliance": "namespace", "power_state": "running"});
        let (code, answer) = controller
            .call_as(member, Method::POST, "/v1/vms", Some(vm))
            .await;
        assert_eq!(code, 201, "{answer}");
    }
    let program = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\n");
    let (code, answer) = controller
        .call_as(
            member,
            Method::POST,
            "/v1/programs",
            Some(json!({"name": "probe", "content_base64": program})),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
    let names: Vec<String> = vms.iter().map(|(name, _)| format!("lab/{name}")).collect();
    let (code, deployment) = controller
        .call_as(
            member,
            Method::POST,
            "/v1/deployments",
            Some(json!({"program": "probe", "vms": names, "outputs": [OUTPUT_PATH]})),
        )
        .await;
    assert_eq!(code, 201, "{deployment}");
    format!(
        "/v1/deployments/{}/outputs",
        deployment["id"].as_str().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_name_the_replica_that_could_not_be_reached() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(dir_a.path(), db.url(), true).await;
    let n1 = a.register("n1", "").await;
    let viewer = a.tenant_token("t1", "eyes", "viewer").await;
    let member = a.tenant_token("t1", "ci", "member").await;
    let outputs = deployment_with_output(&a, &member, &[("box", "n1")]).await;
    // B advertises a URL nothing answers on (port 1 of the loopback).
    let dead = "http://127.0.0.1:1";
    let b = replica_with(dir_b.path(), db.url(), false, |config| {
        config.advertise_url = Some(dead.into());
    })
    .await;
    let (up, down) = agent_channel(&b, &n1).await;

    let (code, listing) = a.call_as(&viewer, Method::GET, &outputs, None).await;
    assert_eq!(code, 200, "{listing}");
    let error = listing["vms"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exec channel is on controller replica")
            && error.contains(&format!("forwarding to {dead} failed")),
        "{listing}"
    );
    let (code, answer) = a
        .call_as(&viewer, Method::GET, &format!("{outputs}/0"), None)
        .await;
    assert_eq!(code, 503, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("VM lab/box: ")
            && message.contains(&format!("forwarding to {dead} failed")),
        "{answer}"
    );
    drop(down);
    drop(up);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_through_one_replica_are_read_on_the_replica_holding_the_channel() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(dir_a.path(), db.url(), true).await;
    let n1 = a.register("n1", "").await;
    let n2 = a.register("n2", "").await;
    let member = a.tenant_token("t1", "ci", "member").await;
    let viewer = a.tenant_token("t1", "eyes", "viewer").await;
    let stranger = a.tenant_token("t2", "other", "member").await;
    let outputs = deployment_with_output(&a, &member, &[("box", "n1"), ("box2", "n2")]).await;
    let b = replica(dir_b.path(), db.url(), true).await;
    // n1's agent streams to B, n2's to A.
    let (up, down) = agent_channel(&b, &n1).await;
    let on_b = Arc::new(AtomicUsize::new(0));
    let guest_b = serve_output(up, down, on_b.clone());
    let (up, down) = agent_channel(&a, &n2).await;
    let on_a = Arc::new(AtomicUsize::new(0));
    let guest_a = serve_output(up, down, on_a.clone());

    // A request already forwarded is answered by A alone, which has no
    // channel of n1: what A answered before it forwarded outputs.
    let http = reqwest::Client::new();
    let local: serde_json::Value = http
        .get(a.url(&outputs))
        .bearer_auth(&viewer)
        .header("x-measurelab-forwarded", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let error = local["vms"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no exec channel"), "{local}");
    let refused = http
        .get(a.url(&format!("{outputs}/0?vm=lab%2Fbox")))
        .bearer_auth(&viewer)
        .header("x-measurelab-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);

    // Through either replica, as a viewer (who may not open exec
    // sessions): each lists its own VM and forwards for the other's, and
    // takes from the other's answer only that VM.
    for replica in [&a, &b] {
        let (code, listing) = replica.call_as(&viewer, Method::GET, &outputs, None).await;
        assert_eq!(code, 200, "{listing}");
        let vms = listing["vms"].as_array().unwrap();
        assert_eq!(vms.len(), 2, "{listing}");
        for (vm, name) in vms.iter().zip(["lab/box", "lab/box2"]) {
            assert_eq!(vm["vm"], name, "{listing}");
            assert!(vm["error"].is_null(), "{listing}");
            let file = &vm["files"][0];
            assert_eq!(file["path"], OUTPUT_PATH, "{listing}");
            assert_eq!(file["present"], true, "{listing}");
            assert_eq!(file["size_bytes"], OUTPUT.len(), "{listing}");
            assert_eq!(file["sha256"], OUTPUT_SHA256, "{listing}");
        }
    }

    // The download streams from B through A with B's headers.
    let download = http
        .get(a.url(&format!("{outputs}/result.txt?vm=lab%2Fbox")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let headers = download.headers().clone();
    assert_eq!(headers[OUTPUT_SHA256_HEADER], OUTPUT_SHA256);
    assert_eq!(headers["content-length"], OUTPUT.len().to_string().as_str());
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"result.txt\""
    );
    assert_eq!(download.bytes().await.unwrap().as_ref(), OUTPUT);

    // Another tenant's token: not found, on either replica (B, asked
    // directly, authorizes the caller itself as it does forwarded reads).
    for replica in [&a, &b] {
        for path in [outputs.clone(), format!("{outputs}/0")] {
            let (code, answer) = replica.call_as(&stranger, Method::GET, &path, None).await;
            assert_eq!(code, 404, "{path}: {answer}");
        }
    }
    // A stat per listing that reached the guest (n2's also for the
    // listing marked as forwarded); n1's a stat and a get for the
    // download. Nothing was looked at twice.
    assert_eq!(on_b.load(Ordering::SeqCst), 4);
    assert_eq!(on_a.load(Ordering::SeqCst), 3);

    guest_a.abort();
    guest_b.abort();
    b.stop().await;
    a.stop().await;
}

/// Every client of this test, A's forwards to B included, comes from
/// 127.0.0.1: B's per-source bucket for that address, drained by direct
/// requests, is the bucket all of A's forwarded clients would share at B if
/// B charged forwards to the forwarding replica's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_charged_where_the_client_sent_it_not_again_to_the_forwarding_replica(
) {
    // Enough for this test's own calls through A; a refill too slow to
    // matter within it.
    let limited = |config: &mut ControllerConfig| {
        config.rate_limits = RateLimits {
            per_token: None,
            per_source: Some(TokenBucket {
                per_second: 1,
                burst: 40,
            }),
        };
    };
    let db = measurelab_testbed::pg::database().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica_with(dir_a.path(), db.url(), true, limited).await;
    let n1 = a.register("n1", "").await;
    let viewer = a.tenant_token("t1", "eyes", "viewer").await;
    let member = a.tenant_token("t1", "ci", "member").await;
    let outputs = deployment_with_output(&a, &member, &[("box", "n1")]).await;
    let b = replica_with(dir_b.path(), db.url(), true, limited).await;
    let (up, down) = agent_channel(&b, &n1).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let guest = serve_output(up, down, answered.clone());
    let download = format!("{outputs}/result.txt?vm=lab%2Fbox");

    let http = reqwest::Client::new();
    let mut direct = 0;
    loop {
        let answer = http
            .get(b.url("/v1/platforms"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        if answer.status() == 429 {
            break;
        }
        direct += 1;
        assert!(
            direct <= 60,
            "B never refused 127.0.0.1 after {direct} requests"
        );
    }
    // A mark is not a proof: a keyless replica's "1", or a MAC made up by
    // the caller, is charged as any other request.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for mark in [
        "1".to_string(),
        format!("v1 t={now} mac={}", "00".repeat(32)),
    ] {
        let answer = http
            .get(b.url(&download))
            .bearer_auth(&viewer)
            .header("x-measurelab-forwarded", &mark)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 429, "{mark}");
    }

    // Through A, each download is charged once, at A, and proven to B.
    // Charged again at B, at most one of them could pass (B refills one
    // token a second).
    for _ in 0..5 {
        let answer = http
            .get(a.url(&download))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
        assert_eq!(answer.bytes().await.unwrap().as_ref(), OUTPUT);
    }
    // A stat and a get per download reached the guest, nothing else.
    assert_eq!(answered.load(Ordering::SeqCst), 10);

    guest.abort();
    b.stop().await;
    a.stop().await;
}
