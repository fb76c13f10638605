//! `POST /v1/vms/{vm}/exec` through the real HTTP listener: everything that
//! can be refused is refused before the upgrade, with the usual JSON error
//! (another tenant's VM is 404, a viewer 403, a bad field names the field,
//! a node without an exec channel 503). The streaming path itself is tested
//! end to end in cli/tests/lab_exec.rs and guest/tests/exec.rs.

mod common;

use common::TestController;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::exec::ExecOpen;
use reqwest::Method;
use serde_json::json;

fn command(argv: &[&str]) -> ExecOpen {
    ExecOpen::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        tty: false,
        size: None,
    }
}

fn client(controller: &TestController, token: &str) -> Client {
    Client::new(controller.url("").trim_end_matches('/'), token, None).unwrap()
}

fn status(result: Result<reqwest::Upgraded, ClientError>) -> (u16, Option<String>, String) {
    match result {
        Ok(_) => panic!("the session was opened"),
        Err(ClientError::Api {
            status,
            field,
            message,
            ..
        }) => (status, field, message),
        Err(other) => panic!("not an API refusal: {other}"),
    }
}

#[tokio::test]
async fn exec_is_refused_before_the_upgrade_with_clear_errors() {
    let (_dir, controller) = TestController::fresh().await;
    controller.register("n1", "").await;
    let member = controller.tenant_token("t1", "ci", "member").await;
    let viewer = controller.tenant_token("t1", "dash", "viewer").await;
    let other = controller.tenant_token("t2", "other", "member").await;
    for (path, body) in [
        ("/v1/platforms", json!({"name": "lab", "nodes": ["n1"]})),
        (
            "/v1/vms",
            json!({"name": "box", "platform": "lab", "node": "n1", "vcpus": 1,
                "memory_mib": 64, "appliance": "namespace", "power_state": "running"}),
        ),
    ] {
        let (code, answer) = controller
            .call_as(&member, Method::POST, path, Some(body))
            .await;
        assert_eq!(code, 201, "{path}: {answer}");
    }

    // Another tenant: no such VM, whatever the command.
    let (code, _, message) = status(
        client(&controller, &other)
            .exec_open("lab/box", &command(&["true"]))
            .await,
    );
    assert_eq!(code, 404, "{message}");
    // A viewer sees the VM but may not run things in it.
    let (code, _, message) = status(
        client(&controller, &viewer)
            .exec_open("lab/box", &command(&["true"]))
            .await,
    );
    assert_eq!(code, 403, "{message}");
    // A field that can never work is named.
    let (code, field, _) = status(
        client(&controller, &member)
            .exec_open("lab/box", &command(&[]))
            .await,
    );
    assert_eq!((code, field.as_deref()), (422, Some("argv")));
    let put = ExecOpen::Put {
        path: "/tmp/../etc/passwd".into(),
        size: 1,
        sha256: "0".repeat(64),
    };
    let (code, field, _) = status(
        client(&controller, &member)
            .exec_open("lab/box", &put)
            .await,
    );
    assert_eq!((code, field.as_deref()), (422, Some("path")));
    // The node registered over gRPC but has no ExecChannel open.
    let (code, _, message) = status(
        client(&controller, &member)
            .exec_open("lab/box", &command(&["true"]))
            .await,
    );
    assert_eq!(code, 503, "{message}");
    assert!(message.contains("no exec channel"), "{message}");

    // A plain POST without the upgrade is told how to ask.
    let (code, answer) = controller
        .call_as(
            &member,
            Method::POST,
            "/v1/vms/lab%2Fbox/exec",
            Some(json!({"kind": "command", "argv": ["true"]})),
        )
        .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(answer["error"]["field"], "Upgrade");
    controller.stop().await;
}
