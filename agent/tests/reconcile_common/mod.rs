//! Shared by reconcile_real.rs and the vm-bench example: the guest agent
//! binary, an agent on its own runtime inside a network namespace, cleanup.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use measurelab_agent::hypervisor::{Hypervisor, NamespaceConfig, NamespaceHypervisor};
use measurelab_agent::AgentConfig;

/// The guest agent binary, built once (it lives in another package, so cargo
/// does not build it for this test by itself).
pub fn guest_agent() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "measurelab-guest",
                "--bin",
                "measurelab-guest-agent",
            ])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success(), "building measurelab-guest-agent failed");
        let path = profile_dir.join("measurelab-guest-agent");
        assert!(path.is_file(), "{} missing", path.display());
        path
    })
    .clone()
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
