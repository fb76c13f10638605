//! Program output files through the whole product: `lab up` starts the
//! controller (TLS) and an agent as real processes, a tenant deploys a
//! program onto a namespace VM, the program writes a 20 MiB capture-sized
//! file and a small summary, and the real CLI binary lists and downloads
//! them (CLI → controller → ExecChannel → guest channel → guest agent).
//! Needs root and the packages of scripts/packages.txt; run under the
//! heavy-test lock.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ensure_guest_agent, sha256_hex, tenant_token, LabGuard, BIN};
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Deployment, DeploymentCreate, DeploymentPatch, ProgramCreate};

const WAIT: Duration = Duration::from_secs(180);
const CAPTURE_BYTES: usize = 20 * 1024 * 1024;

fn cli(endpoint: &str, ca: Option<&str>, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("deployment")
        .args(args)
        .env("MEASURELAB_ENDPOINT", endpoint)
        .env("MEASURELAB_TOKEN", token);
    match ca {
        Some(ca) => cmd.env("MEASURELAB_CA_CERT", ca),
        None => cmd.env_remove("MEASURELAB_CA_CERT"),
    };
    cmd.output().expect("run measurelab deployment")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The field and status of an API refusal; panics on anything else.
fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, Option<String>, String) {
    match result {
        Err(ClientError::Api {
            status,
            field,
            message,
            ..
        }) => (status, field, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn outputs_are_listed_and_downloaded_intact() {
    ensure_guest_agent();
    let lab = LabGuard::new('o');
    lab.up(1, 2);
    let (endpoint, _) = lab.env();
    let ca_path = lab.dir().join("outputs-test-ca.pem");
    let ca = lab.ca_pem().map(|pem| {
        std::fs::write(&ca_path, pem).unwrap();
        ca_path.display().to_string()
    });
    let (admin, runtime) = lab.client();
    let mine = tenant_token(&admin, &runtime, "out-a");
    let theirs = tenant_token(&admin, &runtime, "out-b");
    let client = Client::new(&endpoint, &mine, lab.ca_pem().as_deref()).unwrap();
    let other = Client::new(&endpoint, &theirs, lab.ca_pem().as_deref()).unwrap();

    common::platform_with_ready_vm(&lab, &runtime, &client, ("op", "box"), WAIT);

    // The program writes the files and prints the capture's digest as
    // sha256sum computes it in the guest, the reference the download is
    // held to (independent of the controller's own stat).
    let dir = format!("/tmp/mlout-{}", std::process::id());
    let capture = format!("{dir}/capture.pcap");
    let summary = format!("{dir}/summary.txt");
    let never = format!("{dir}/never-written.txt");
    let script = format!(
        "#!/bin/sh\nset -e\nmkdir -p {dir}\nhead -c {CAPTURE_BYTES} /dev/urandom > {capture}\n\
         printf 'packets=%s\\n' 4242 > {summary}\nsha256sum {capture}\n"
    );
    runtime
        .block_on(client.create_program(&ProgramCreate {
            name: "writer".into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(&script),
            sha256: None,
            tenant: None,
            request_id: None,
        }))
        .expect("upload program");
    let create = |outputs: Vec<String>| DeploymentCreate {
        program: "writer".into(),
        vms: vec!["op/box".into()],
        args: vec![],
        env: Default::default(),
        outputs,
        tenant: None,
        request_id: None,
    };

    // Bad paths are refused naming the field, and nothing is deployed.
    for (bad, reason) in [
        ("relative/capture.pcap", "not absolute"),
        ("/tmp/../etc/shadow", ".."),
    ] {
        let (status, field, message) = refusal(
            runtime.block_on(client.create_deployment(&create(vec![summary.clone(), bad.into()]))),
        );
        assert_eq!(status, 422, "{message}");
        assert_eq!(field.as_deref(), Some("outputs[1]"), "{message}");
        assert!(message.contains(reason), "{message}");
    }
    let listed = runtime
        .block_on(client.list_all::<measurelab_api::http::DeploymentList>("/v1/deployments"))
        .unwrap();
    assert!(
        listed.is_empty(),
        "a refused deployment was created: {listed:?}"
    );

    let deployment = runtime
        .block_on(client.create_deployment(&create(vec![
            capture.clone(),
            summary.clone(),
            never.clone(),
        ])))
        .expect("deploy");
    let id = deployment.id.clone();
    let deadline = Instant::now() + WAIT;
    let finished: Deployment = loop {
        let d = runtime.block_on(client.get_deployment(&id)).unwrap();
        match d.runs[0].status.as_str() {
            "exited" => break d,
            "pending" | "running" => {}
            other => panic!("run {other}: {:?}", d.runs[0]),
        }
        assert!(
            Instant::now() < deadline,
            "run did not finish: {:?}\n{}",
            d.runs,
            lab.log_tail("n1-agent", 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        finished.runs[0].exit_code,
        Some(0),
        "{:?}",
        finished.runs[0]
    );
    let guest_sum = finished.runs[0]
        .stdout_tail
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string();

    // The list shows both files with their sizes, and the third as absent.
    let ca = ca.as_deref();
    let list = cli(&endpoint, ca, &mine, &["outputs", &id]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let lines: Vec<Vec<String>> = text(&list.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0][0], "0");
    assert_eq!(lines[0][1], "op/box");
    assert_eq!(lines[0][2], CAPTURE_BYTES.to_string());
    assert_eq!(lines[0][4], guest_sum);
    assert_eq!(lines[0][5], capture);
    assert_eq!(lines[1][2], "packets=4242\n".len().to_string());
    assert_eq!(lines[1][4], sha256_hex(b"packets=4242\n"));
    assert_eq!(lines[2][2], "-");
    assert_eq!(lines[2][5], format!("{never} (absent)"));

    // The capture, by file name, arrives byte for byte.
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("got.pcap");
    let fetched = cli(
        &endpoint,
        ca,
        &mine,
        &["fetch", &id, "capture.pcap", "-o", local.to_str().unwrap()],
    );
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    let bytes = std::fs::read(&local).unwrap();
    assert_eq!(bytes.len(), CAPTURE_BYTES);
    assert_eq!(sha256_hex(&bytes), guest_sum);

    // By index, into a directory: the controller names the file.
    let by_index = cli(
        &endpoint,
        ca,
        &mine,
        &[
            "fetch",
            &id,
            "1",
            "--vm",
            "op/box",
            "-o",
            work.path().to_str().unwrap(),
        ],
    );
    assert!(by_index.status.success(), "{}", text(&by_index.stderr));
    assert_eq!(
        std::fs::read(work.path().join("summary.txt")).unwrap(),
        b"packets=4242\n"
    );

    // A declared file that does not exist is a 404 and leaves nothing.
    let absent = cli(
        &endpoint,
        ca,
        &mine,
        &["fetch", &id, "2", "-o", work.path().to_str().unwrap()],
    );
    assert!(!absent.status.success());
    assert!(
        text(&absent.stderr).contains("404"),
        "{}",
        text(&absent.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // Another tenant sees no such deployment, through the CLI and the API.
    for args in [
        vec!["outputs", id.as_str()],
        vec!["fetch", id.as_str(), "0"],
    ] {
        let refused = cli(&endpoint, ca, &theirs, &args);
        assert!(!refused.status.success());
        assert!(
            text(&refused.stderr).contains("404"),
            "{}",
            text(&refused.stderr)
        );
    }
    let (status, _, _) = refusal(runtime.block_on(other.deployment_outputs(&id)));
    assert_eq!(status, 404);
    let (status, _, _) = refusal(
        runtime
            .block_on(other.download_output(&id, "0", None))
            .map(drop),
    );
    assert_eq!(status, 404);

    // Changing the outputs does not touch the run; a bad change is refused
    // naming the field and changes nothing.
    let (status, field, message) = refusal(runtime.block_on(client.update_deployment(
        &id,
        &DeploymentPatch {
            outputs: Some(vec![capture.clone(), capture.clone()]),
            request_id: None,
        },
    )));
    assert_eq!(
        (status, field.as_deref()),
        (422, Some("outputs[1]")),
        "{message}"
    );
    let patched = runtime
        .block_on(client.update_deployment(
            &id,
            &DeploymentPatch {
                outputs: Some(vec![summary.clone()]),
                request_id: None,
            },
        ))
        .expect("patch outputs");
    assert_eq!(patched.outputs, vec![summary.clone()]);
    assert_eq!(
        patched.runs, finished.runs,
        "the run changed with its outputs"
    );
    let listing = runtime.block_on(client.deployment_outputs(&id)).unwrap();
    assert_eq!(listing.vms[0].files.len(), 1);
    assert_eq!(listing.vms[0].files[0].path, summary);

    let _ = std::fs::remove_dir_all(&dir);
}
