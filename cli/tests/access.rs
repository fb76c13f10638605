//! `measurelab tenant ...` and `measurelab token ...` against a real
//! `measurelab controller` process. Loopback only; no root needed.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

struct Controller {
    child: Child,
    endpoint: String,
    admin_token: String,
    _data: tempfile::TempDir,
}

impl Controller {
    fn start() -> Controller {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["controller", "--data-dir"])
            .arg(data.path())
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoint = loop {
            let addr = std::fs::read_to_string(data.path().join("http.addr")).unwrap_or_default();
            let token =
                std::fs::read_to_string(data.path().join("admin.token")).unwrap_or_default();
            if !addr.trim().is_empty()
                && !token.trim().is_empty()
                && std::net::TcpStream::connect(addr.trim()).is_ok()
            {
                break format!("http://{}", addr.trim());
            }
            assert!(Instant::now() < deadline, "controller did not come up");
            assert!(child.try_wait().unwrap().is_none(), "controller exited");
            std::thread::sleep(Duration::from_millis(50));
        };
        let admin_token = std::fs::read_to_string(data.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Controller {
            child,
            endpoint,
            admin_token,
            _data: data,
        }
    }

    fn run(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("MEASURELAB_ENDPOINT", &self.endpoint)
            .env("MEASURELAB_TOKEN", token)
            .output()
            .unwrap()
    }

    fn ok(&self, token: &str, args: &[&str]) -> String {
        let output = self.run(token, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tenants_and_tokens_are_managed_from_the_command_line() {
    let controller = Controller::start();
    let admin = controller.admin_token.clone();
    controller.ok(&admin, &["tenant", "create", "t1", "--max-vms", "4"]);
    assert!(controller
        .ok(&admin, &["tenant", "list"])
        .contains("\tt1\t"));

    let secret = controller
        .ok(
            &admin,
            &["token", "create", "ci", "--role", "owner", "--tenant", "t1"],
        )
        .trim()
        .to_string();
    assert!(secret.starts_with("mlt_"), "{secret}");
    // The owner lists its tenant's tokens and mints a viewer for it.
    let listed = controller.ok(&secret, &["token", "list"]);
    assert!(listed.contains("\tci\towner\t"), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    let viewer = controller
        .ok(&secret, &["token", "create", "dash", "--role", "viewer"])
        .trim()
        .to_string();
    // A viewer may not create tokens; the message says what it needs.
    let refused = controller.run(&viewer, &["token", "create", "x", "--role", "viewer"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("needs role owner"), "{stderr}");

    let id = secret
        .strip_prefix("mlt_")
        .and_then(|rest| rest.rsplit_once('_'))
        .map(|(id, _)| id.to_string())
        .unwrap();
    let revoked = controller.ok(&admin, &["token", "revoke", &id]);
    assert!(revoked.contains("revoked"), "{revoked}");
    let after = controller.run(&secret, &["token", "list"]);
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("was revoked at"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );

    controller.ok(&admin, &["tenant", "delete", "t1"]);
    assert!(!controller
        .ok(&admin, &["tenant", "list"])
        .contains("\tt1\t"));
    // The tenant's tokens went with it.
    assert!(!controller.run(&viewer, &["token", "list"]).status.success());
}
