//! Shared by the end-to-end agent tests and the vm-bench example: the guest
//! agent binary, the controller in-process, an agent on its own runtime
//! inside a network namespace, cleanup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use measurelab_agent::hypervisor::{Hypervisor, NamespaceConfig, NamespaceHypervisor};
use measurelab_agent::AgentConfig;
use measurelab_api::client::Client;
use measurelab_controller::{ControllerConfig, ControllerError};

/// The guest agent binary, built once (it lives in another package, so cargo
/// does not build it for this test by itself).
pub fn guest_agent() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| workspace_binary("measurelab-guest", "measurelab-guest-agent"))
        .clone()
}

/// Builds `bin` of `package` into this test's target dir; returns its path
/// (only the crate's own binaries get CARGO_BIN_EXE_*).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    build_workspace_binary(package, bin, false)
}

/// [`workspace_binary`] in the release profile, as `scripts/demo.sh` ships
/// programs: a third of the debug size, which matters for a binary that
/// crosses a guest's serial channel.
pub fn workspace_release_binary(package: &str, bin: &str) -> PathBuf {
    build_workspace_binary(package, bin, true)
}

fn build_workspace_binary(package: &str, bin: &str, release: bool) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    let mut build = measurelab_testbed::cargo::command();
    build
        .args(["build", "-q", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target_dir);
    if release {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "building {bin} failed");
    let path = if release {
        target_dir.join("release").join(bin)
    } else {
        profile_dir.join(bin)
    };
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// Runs `f` on a thread that entered network namespace `netns`.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .unwrap()
}

pub fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// An agent on its own thread and runtime inside the node's namespace.
pub struct RunningAgent {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    pub fn start(netns: &str, config: AgentConfig) -> RunningAgent {
        let path = format!("/run/netns/{netns}");
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            // Worker and blocking threads are spawned from here and inherit
            // the namespace.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            runtime.spawn(async move {
                let never = std::future::pending::<()>();
                tokio::select! {
                    result = measurelab_agent::run(config, never) => {
                        panic!("agent exited: {result:?}");
                    }
                    _ = stop_rx => {}
                }
            });
            let _ = kill_rx.recv();
            let _ = stop_tx.send(());
            // No graceful shutdown: tasks are dropped wherever they are.
            runtime.shutdown_background();
        });
        RunningAgent {
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the guests the agent created, whatever happened.
pub struct GuestCleanup {
    pub state_dir: PathBuf,
}

impl Drop for GuestCleanup {
    fn drop(&mut self) {
        let config = NamespaceConfig::new(self.state_dir.join("namespace"), vec!["true".into()]);
        if let Ok(hv) = NamespaceHypervisor::new(config) {
            for guest in hv.list_owned().unwrap_or_default() {
                let _ = hv.undefine(guest.id);
            }
        }
    }
}

/// The join token of [`NodeController`]'s controller.
pub const JOIN_TOKEN: &str = "join-secret";

/// The controller in-process for one node: HTTP on the root namespace's
/// loopback for the test's client, gRPC on the node namespace's loopback for
/// the agent (as a lab node reaches its controller).
pub struct NodeController {
    /// Admin client of the HTTP API.
    pub client: Client,
    /// Where the node's agent reaches the gRPC API.
    pub grpc_endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ControllerError>>,
}

impl NodeController {
    /// Starts the controller with its data under `data_dir`, lets
    /// `configure` adjust it (heartbeat interval, offline deadline), and
    /// waits up to `token_wait` for its admin token.
    pub async fn start(
        netns: &str,
        data_dir: &Path,
        configure: impl FnOnce(&mut ControllerConfig),
        token_wait: Duration,
    ) -> anyhow::Result<NodeController> {
        let http = std::net::TcpListener::bind("127.0.0.1:0")?;
        let http_addr = http.local_addr()?;
        let grpc = in_netns(netns, || std::net::TcpListener::bind("127.0.0.1:0"))?;
        let grpc_port = grpc.local_addr()?.port();
        let mut config = ControllerConfig::new(data_dir.to_path_buf(), http, grpc);
        config.join_token = Some(JOIN_TOKEN.into());
        configure(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(measurelab_controller::run(config, async {
            let _ = stopped.await;
        }));
        let token_path = data_dir.join("admin.token");
        let deadline = Instant::now() + token_wait;
        let token = loop {
            if let Ok(token) = std::fs::read_to_string(&token_path) {
                break token;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "controller did not write its admin token within {token_wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(NodeController {
            client: Client::new(&format!("http://{http_addr}"), token.trim(), None)?,
            grpc_endpoint: format!("http://127.0.0.1:{grpc_port}"),
            stop,
            task,
        })
    }

    /// The configuration of node `node`'s agent, joining this controller.
    pub fn agent_config(&self, node: &str, state_dir: PathBuf) -> AgentConfig {
        AgentConfig::new(node, &self.grpc_endpoint, JOIN_TOKEN, state_dir)
    }

    /// Asks the controller to stop; `None` when it did not end `within`.
    pub async fn stop(
        self,
        within: Duration,
    ) -> Option<Result<Result<(), ControllerError>, tokio::task::JoinError>> {
        let _ = self.stop.send(());
        tokio::time::timeout(within, self.task).await.ok()
    }
}

/// A running namespace VM of `platform` on node `n1` (the node every test
/// here starts), 1 vCPU and 64 MiB; tests change what they need with
/// struct update syntax.
pub fn namespace_vm(name: &str, platform: &str) -> measurelab_api::http::VmCreate {
    measurelab_api::http::VmCreate {
        tenant: None,
        name: name.into(),
        platform: platform.into(),
        node: "n1".into(),
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

/// Results waiting in an agent's on-disk spool (one `.json` file each) under
/// its state directory.
pub fn spooled_files(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir.join("results"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}
