//! Shared by the lab tests (`lab.rs`, `lab_dataplane.rs`): a lab guard that
//! owns one lab named after the test process and runs `lab down` on drop,
//! even when the test fails, plus polling and process helpers.
// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use measurelab_api::http::{Event, Node, NodeList};

pub const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

pub struct LabGuard {
    pub name: String,
    dir: tempfile::TempDir,
}

impl LabGuard {
    /// A lab named `t<pid><letter>`: unique per test process and short
    /// enough for `<name>-nK-up` to fit in an interface name.
    pub fn new(letter: char) -> Self {
        let name = format!("t{}{letter}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("mlab-test-")
            .tempdir()
            .expect("temp dir");
        LabGuard { name, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn lab(&self, sub: &str, extra: &[&str]) -> Output {
        Command::new(BIN)
            .args(["lab", sub, "--name", &self.name, "--dir"])
            .arg(self.dir())
            .args(extra)
            .output()
            .expect("run measurelab")
    }

    pub fn up_command(&self, nodes: u32, heartbeat_seconds: u32) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["lab", "up", "--name", &self.name, "--dir"])
            .arg(self.dir())
            .args(["--nodes", &nodes.to_string(), "--http-port", "0"])
            .args([
                "--heartbeat-interval-seconds",
                &heartbeat_seconds.to_string(),
            ])
            .args([
                "--offline-after-seconds",
                &(3 * heartbeat_seconds).to_string(),
            ])
            .args(["--timeout-seconds", "60"]);
        cmd
    }

    /// `lab up` with short intervals; panics with the output on failure.
    pub fn up(&self, nodes: u32, heartbeat_seconds: u32) -> String {
        let out = self.up_command(nodes, heartbeat_seconds).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "lab up failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub fn nodes(&self) -> Vec<Node> {
        let out = self.lab("status", &["--json"]);
        assert!(
            out.status.success(),
            "lab status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: NodeList = serde_json::from_slice(&out.stdout).expect("status --json");
        list.nodes
    }

    pub fn node(&self, name: &str) -> Node {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("node {name} not listed"))
    }

    pub fn pid(&self, process: &str) -> i32 {
        let path = self.dir().join("pids").join(format!("{process}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    pub fn pids(&self) -> Vec<(String, i32)> {
        let mut pids: Vec<(String, i32)> = std::fs::read_dir(self.dir().join("pids"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
                        let pid = std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?;
                        Some((name, pid))
                    })
                    .collect()
            })
            .unwrap_or_default();
        pids.sort();
        pids
    }

    /// `lab env --operator` as KEY -> value.
    pub fn env_values(&self) -> std::collections::BTreeMap<String, String> {
        let out = self.lab("env", &["--operator"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The operator's endpoint and token: these tests watch nodes, their
    /// logs and events, which a tenant's token (plain `lab env`) cannot see.
    pub fn env(&self) -> (String, String) {
        let values = self.env_values();
        let value = |key: &str| {
            values
                .get(key)
                .unwrap_or_else(|| panic!("{key} missing in lab env output: {values:?}"))
                .clone()
        };
        (value("MEASURELAB_ENDPOINT"), value("MEASURELAB_TOKEN"))
    }

    /// The lab controller's CA (labs run TLS by default), as `lab env`
    /// names it; `None` for a plaintext lab.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        let path = self.env_values().remove("MEASURELAB_CA_CERT")?;
        Some(std::fs::read(&path).unwrap_or_else(|e| panic!("reading the lab CA {path}: {e}")))
    }

    /// Whether the controller answers `/healthz`, over TLS with the lab's CA
    /// when the lab runs TLS.
    pub fn healthz_ok(&self, endpoint: &str, ca_pem: Option<&[u8]>) -> bool {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2));
        if let Some(pem) = ca_pem {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("the lab CA"));
        }
        let client = builder.build().expect("an HTTP client");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            client
                .get(format!("{endpoint}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    }

    pub fn client(&self) -> (measurelab_api::client::Client, tokio::runtime::Runtime) {
        let (endpoint, token) = self.env();
        let ca = self.ca_pem();
        let client = measurelab_api::client::Client::new(&endpoint, &token, ca.as_deref()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (client, runtime)
    }

    pub fn logs(&self, node: &str) -> Vec<measurelab_api::http::LogLine> {
        let (client, runtime) = self.client();
        runtime
            .block_on(client.node_logs(node))
            .expect("logs")
            .lines
    }

    pub fn events(&self) -> Vec<Event> {
        let (client, runtime) = self.client();
        runtime.block_on(client.events(0)).expect("events").events
    }

    /// Network namespace of node K (`<name>-nK`).
    pub fn node_ns(&self, k: u32) -> String {
        format!("{}-n{k}", self.name)
    }

    /// `ovs-vsctl` against node K's private ovsdb-server (run dir
    /// `DIR/nodes/nK/ovs`); the output, or the error text.
    pub fn node_vsctl(&self, k: u32, args: &[&str]) -> Result<String, String> {
        let socket = self.dir().join(format!("nodes/n{k}/ovs/db.sock"));
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", socket.display()))
            .arg("--timeout=20")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The last `lines` lines of a lab process's log (DIR/logs/NAME.log).
    pub fn log_tail(&self, process: &str, lines: usize) -> String {
        let path = self.dir().join("logs").join(format!("{process}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- {}\n{}",
            path.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let out = self.lab("down", &[]);
        if !out.status.success() {
            eprintln!(
                "lab down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

pub fn sigkill(pid: i32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

pub fn process_exists(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z") | None
        ),
        Err(_) => false,
    }
}

/// Poll `check` every 50 ms until it returns Some or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn ip_output(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned()
}

/// Names of every named network namespace (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    ip_output(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The guest agent the node agents start inside every VM, from beside the
/// `measurelab` binary (where the lab's agents look for it). Built here when
/// missing: nextest and `cargo test` have released the build lock by the
/// time tests run, and `-p measurelab` alone does not build it.
pub fn ensure_guest_agent() -> PathBuf {
    let profile_dir = Path::new(BIN).parent().expect("bin dir").to_path_buf();
    let path = profile_dir.join("measurelab-guest-agent");
    if !path.is_file() {
        let status = measurelab_testbed::cargo::command()
            .args([
                "build",
                "-q",
                "-p",
                "measurelab-guest",
                "--bin",
                "measurelab-guest-agent",
            ])
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target dir"),
            )
            .status()
            .unwrap();
        assert!(status.success(), "building measurelab-guest-agent failed");
    }
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// A running namespace VM of 1 vCPU and 64 MiB on `node`.
pub fn namespace_vm(name: &str, platform: &str, node: &str) -> measurelab_api::http::VmCreate {
    measurelab_api::http::VmCreate {
        tenant: None,
        name: name.into(),
        platform: platform.into(),
        node: node.into(),
        vcpus: 1,
        memory_mib: 64,
        disk_mib: None,
        swap_mib: None,
        max_vcpus: None,
        max_memory_mib: None,
        appliance: "namespace".into(),
        qos_policy: None,
        power_state: measurelab_api::http::VmPowerState::Running,
        backend: Some(measurelab_api::http::VmBackend::Namespace),
        request_id: None,
    }
}

/// A new tenant and an owner token of it.
pub fn tenant_token(
    admin: &measurelab_api::client::Client,
    runtime: &tokio::runtime::Runtime,
    tenant: &str,
) -> String {
    runtime
        .block_on(admin.create_tenant(&measurelab_api::http::TenantCreate {
            name: tenant.into(),
            description: None,
            quota: None,
            request_id: None,
        }))
        .unwrap_or_else(|e| panic!("create tenant {tenant}: {e}"));
    runtime
        .block_on(admin.create_token(&measurelab_api::http::ApiTokenCreate {
            name: format!("{tenant}-owner"),
            role: measurelab_api::http::Role::Owner,
            tenant: Some(tenant.into()),
            expires_at: None,
            ttl_seconds: None,
            request_id: None,
        }))
        .unwrap_or_else(|e| panic!("token for {tenant}: {e}"))
        .secret
}

/// Creates platform `platform` on n1 with one namespace VM `vm` through
/// `client`, and waits up to `wait` until its guest agent registered.
pub fn platform_with_ready_vm(
    lab: &LabGuard,
    runtime: &tokio::runtime::Runtime,
    client: &measurelab_api::client::Client,
    (platform, vm): (&str, &str),
    wait: std::time::Duration,
) {
    runtime
        .block_on(
            client.create_platform(&measurelab_api::http::PlatformCreate {
                tenant: None,
                name: platform.into(),
                nodes: vec!["n1".into()],
                admins: vec![],
                description: None,
                request_id: None,
                flow_monitoring: None,
                gateway: None,
            }),
        )
        .expect("create platform");
    runtime
        .block_on(client.create_vm(&namespace_vm(vm, platform, "n1")))
        .expect("create VM");
    let deadline = std::time::Instant::now() + wait;
    loop {
        let vm = runtime
            .block_on(client.get_vm(&format!("{platform}/{vm}")))
            .expect("get VM");
        if guest_ready(&vm) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VM not ready in {wait:?}: {} {:?}\n{}",
            vm.actual_state,
            vm.conditions,
            lab.log_tail("n1-agent", 30)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The VM runs and its guest agent said hello.
pub fn guest_ready(vm: &measurelab_api::http::Vm) -> bool {
    vm.actual_state == "running"
        && vm
            .conditions
            .iter()
            .any(|c| c.condition_type == "GuestRegistered" && c.status == "True")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
}
