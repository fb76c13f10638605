//! Harness for the acceptance tests in `tests/`: a real lab brought up with the
//! built `measurelab` binary, the built provider published through a Terraform
//! CLI config, and the real `terraform` CLI.
//!
//! # Layout
//! - [`acc_enabled`]: the `TF_ACC=1` gate (a skip is printed, never silent).
//! - [`Binaries`]: the built `measurelab` and `terraform-provider-measurelab`.
//! - [`Lab`]: `measurelab lab up` on a temp dir, `lab down` on drop.
//! - [`Terraform`]: a working directory and the `terraform` CLI with the lab's
//!   environment.
//!
//! Tests need root (the lab creates network namespaces) and run slowly, which
//! is why they are gated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use measurelab_api::client::Client;
use measurelab_api::http::Node;

#[path = "../../cli/src/tfrc.rs"]
pub mod tfrc;

pub mod multicast_example;
pub mod periodic_task;
pub mod release;
pub mod service_host;

/// True when acceptance tests should run (`TF_ACC=1`); otherwise prints a
/// visible skip line for `test`.
pub fn acc_enabled(test: &str) -> bool {
    if std::env::var("TF_ACC").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("SKIPPED {test}: acceptance tests run only with TF_ACC=1 (they need root, a lab and terraform)");
    println!("SKIPPED {test}: set TF_ACC=1 to run");
    false
}

/// The workspace's built binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Directory holding both binaries (the cargo profile dir).
    pub dir: PathBuf,
}

impl Binaries {
    /// Find the binaries in `$CARGO_TARGET_DIR/debug` (or `<workspace>/target/debug`).
    /// They are not built here: a nested `cargo build` inside `cargo test` would
    /// wait forever on the build-directory lock. `cargo xtask acc` builds first.
    pub fn locate() -> anyhow::Result<Self> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let dir = target.join("debug");
        // The node agent starts `measurelab-guest-agent` from beside its own
        // executable inside every VM, so VM tests need it there too.
        for binary in [
            "measurelab",
            "terraform-provider-measurelab",
            "measurelab-guest-agent",
            // Platform gateways run it beside the agent.
            "measurelab-wg",
        ] {
            let path = dir.join(binary);
            if !path.is_file() {
                bail!(
                    "{} is missing: build it first with \
                     `cargo build -p measurelab -p measurelab-guest -p measurelab-wireguard -p terraform-provider-measurelab` \
                     (or run `cargo run -p xtask -- acc`)",
                    path.display()
                );
            }
        }
        Ok(Binaries { dir })
    }

    /// Path of the `measurelab` binary.
    pub fn measurelab(&self) -> PathBuf {
        self.dir.join("measurelab")
    }

    /// Path of the provider binary.
    pub fn provider(&self) -> PathBuf {
        self.dir.join("terraform-provider-measurelab")
    }
}

/// Root of the cargo workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Lab names become interface names (`<name>-nK-up`, at most 15 bytes), so
/// they are short: `ac` + pid in hex + a per-process counter.
fn unique_lab_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "ac{:x}{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running lab; `measurelab lab down` runs on drop, even when the test panics.
pub struct Lab {
    /// Lab name (`--name`).
    pub name: String,
    /// Lab directory (`--dir`), removed after `lab down`.
    pub dir: tempfile::TempDir,
    /// `MEASURELAB_ENDPOINT` from `lab env`.
    pub endpoint: String,
    /// `MEASURELAB_CA_CERT` from `lab env`: the controller's CA (a TLS lab,
    /// the default), the only CA the lab's clients trust.
    pub ca_cert: Option<String>,
    /// The operator token (`lab env --operator`): nodes, appliances, tenants.
    pub token: String,
    /// Every variable `lab env --operator` printed.
    pub env: Vec<(String, String)>,
    /// The demo tenant's member token (`lab env`, what a researcher has).
    pub member_token: String,
    /// Every variable `lab env` printed (the only environment examples get).
    pub member_env: Vec<(String, String)>,
    /// The Terraform CLI config (`TF_CLI_CONFIG_FILE`).
    pub tfrc: PathBuf,
    /// The built binaries.
    pub binaries: Binaries,
}

impl Lab {
    /// `measurelab lab up --nodes N`, then wait until every node is online.
    pub fn up(nodes: u32) -> anyhow::Result<Lab> {
        Lab::up_with(nodes, &[])
    }

    /// Like [`Lab::up`], with extra `lab up` flags (e.g. a short heartbeat).
    pub fn up_with(nodes: u32, extra: &[&str]) -> anyhow::Result<Lab> {
        let binaries = Binaries::locate()?;
        let measurelab = binaries.measurelab();
        Lab::up_from(&measurelab, nodes, extra)
    }

    /// Like [`Lab::up_with`], with the lab made by another `measurelab`
    /// binary (another release's): its controller and agents run from it.
    /// The harness's own commands (`lab env`, `lab down`), the clients and
    /// the provider stay this build's.
    pub fn up_from(measurelab: &Path, nodes: u32, extra: &[&str]) -> anyhow::Result<Lab> {
        let binaries = Binaries::locate()?;
        let name = unique_lab_name();
        let dir = tempfile::Builder::new()
            .prefix("measurelab-acc-")
            .tempdir()?;
        let started = Instant::now();
        let output = Command::new(measurelab)
            .args([
                "lab",
                "up",
                "--nodes",
                &nodes.to_string(),
                // Port 0: labs of tests running in parallel must not fight over 7070.
                "--http-port",
                "0",
                "--name",
                &name,
                "--dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .context("running measurelab lab up")?;
        // From here on, Drop tears the lab down even if `up` half-failed.
        let mut lab = Lab {
            name,
            dir,
            endpoint: String::new(),
            ca_cert: None,
            token: String::new(),
            env: Vec::new(),
            member_token: String::new(),
            member_env: Vec::new(),
            tfrc: PathBuf::new(),
            binaries,
        };
        if !output.status.success() {
            bail!("measurelab lab up failed:\n{}", describe(&output));
        }
        let env_output = lab.measurelab(&["lab", "env", "--operator"])?;
        lab.env = parse_env(&String::from_utf8_lossy(&env_output.stdout));
        lab.endpoint = env_var(&lab.env, "MEASURELAB_ENDPOINT")?;
        lab.token = env_var(&lab.env, "MEASURELAB_TOKEN")?;
        lab.ca_cert = env_var(&lab.env, "MEASURELAB_CA_CERT").ok();
        let member_output = lab.measurelab(&["lab", "env"])?;
        lab.member_env = parse_env(&String::from_utf8_lossy(&member_output.stdout));
        lab.member_token = env_var(&lab.member_env, "MEASURELAB_TOKEN")?;
        lab.tfrc = tfrc::write_tfrc(lab.dir.path(), &lab.binaries.dir)?;
        lab.wait_online(nodes as usize, Duration::from_secs(60))?;
        eprintln!(
            "lab {} up with {nodes} nodes in {:.1?}",
            lab.name,
            started.elapsed()
        );
        Ok(lab)
    }

    /// Run `measurelab <args> --name NAME --dir DIR`, failing on non-zero exit.
    pub fn measurelab(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.measurelab_from(&self.binaries.measurelab(), args)
    }

    /// Like [`Lab::measurelab`], with another `measurelab` binary: processes
    /// that `lab up` restarts run from it (an upgrade of one service).
    pub fn measurelab_from(&self, binary: &Path, args: &[&str]) -> anyhow::Result<Output> {
        let output = Command::new(binary)
            .args(args)
            .args(["--name", &self.name, "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running measurelab {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "measurelab {} failed:\n{}",
                args.join(" "),
                describe(&output)
            );
        }
        Ok(output)
    }

    /// Name of node `k` (1-based) as its agent registers it (`nK`, the same in
    /// every lab, which is what lets the examples name nodes literally).
    pub fn node_name(&self, k: u32) -> String {
        format!("n{k}")
    }

    /// Stripped copies of the built `mcast-point` and `mcast-mscs` in `into`:
    /// the controller refuses programs over 64 MiB and a debug `mcast-mscs` is
    /// bigger, so tests upload what a release build ships.
    pub fn strip_mcast_binaries_into(&self, into: &Path) -> anyhow::Result<()> {
        for name in ["mcast-point", "mcast-mscs"] {
            let built = self.binaries.dir.join(name);
            anyhow::ensure!(
                built.is_file(),
                "{} is missing: build it with `cargo build -p measurelab-mcast`",
                built.display()
            );
            let status = Command::new("strip")
                .arg("-o")
                .arg(into.join(name))
                .arg(&built)
                .status()?;
            anyhow::ensure!(status.success(), "strip {} failed", built.display());
        }
        Ok(())
    }

    /// Stop node `name`'s agent (SIGTERM to the pid the lab recorded), so the
    /// controller sees the node go silent.
    pub fn stop_agent(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.pid(&format!("{name}-agent"))?;
        let status = Command::new("kill").arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill {pid} failed");
        Ok(())
    }

    /// The pid the lab recorded for `process` (`controller`, `nK-agent`).
    pub fn pid(&self, process: &str) -> anyhow::Result<i32> {
        let pid_file = self.dir.path().join("pids").join(format!("{process}.pid"));
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?} is not a pid", pid_file.display()))
    }

    /// SIGTERM to `process`, as systemd stops a unit, then wait until it has
    /// exited, so a following `lab up` starts it again.
    pub fn stop_and_wait(&self, process: &str, timeout: Duration) -> anyhow::Result<()> {
        let pid = self.pid(process)?;
        let status = Command::new("kill").arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill {pid} ({process}) failed");
        let deadline = Instant::now() + timeout;
        while Path::new(&format!("/proc/{pid}")).exists() {
            if Instant::now() > deadline {
                bail!("{process} (pid {pid}) did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGSTOP to `process` (`controller`, `nK-agent`), returned once the
    /// kernel reports it stopped: it keeps its sockets, and the kernel keeps
    /// accepting connections into their backlogs, but nothing answers. The
    /// returned guard sends SIGCONT when dropped, so a failing test does not
    /// leave `lab down` a process that cannot act on SIGTERM.
    pub fn freeze(&self, process: &str) -> anyhow::Result<Frozen> {
        let pid = self.pid(process)?;
        send_signal("STOP", pid)?;
        let frozen = Frozen { pid, thawed: false };
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_state(pid)? != 'T' {
            if Instant::now() > deadline {
                bail!("{process} (pid {pid}) not stopped within 10 s of SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(frozen)
    }

    /// Wait until the controller reports `name` with `status`.
    pub fn wait_status(
        &self,
        name: &str,
        status: measurelab_api::http::NodeStatus,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.node(name)?.is_some_and(|n| n.status == status) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {name} not {status:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A client for the lab's controller, with the operator token.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_as(&self.token)
    }

    /// A client for the lab's controller with `token`.
    pub fn client_as(&self, token: &str) -> anyhow::Result<Client> {
        let ca = self.ca_pem()?;
        Ok(Client::new(&self.endpoint, token, ca.as_deref())?)
    }

    /// The lab CA's PEM (`None` for a plaintext lab).
    pub fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.ca_cert
            .as_ref()
            .map(|path| std::fs::read(path).with_context(|| format!("reading the lab CA {path}")))
            .transpose()
    }

    /// A plain HTTP client for the lab's API that trusts the lab's CA only.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = self.ca_pem()? {
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(builder.build()?)
    }

    /// The environment `lab env` would print for `token`.
    pub fn env_as(&self, token: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("MEASURELAB_ENDPOINT".to_string(), self.endpoint.clone()),
            ("MEASURELAB_TOKEN".to_string(), token.to_string()),
        ];
        if let Some(ca) = &self.ca_cert {
            env.push(("MEASURELAB_CA_CERT".to_string(), ca.clone()));
        }
        env
    }

    /// Ask the controller about one node (`None` if it does not exist).
    pub fn node(&self, name: &str) -> anyhow::Result<Option<Node>> {
        let client = self.client()?;
        block_on(async move {
            match client.get_node(name).await {
                Ok(node) => Ok(Some(node)),
                Err(err) if err.is_not_found() => Ok(None),
                Err(err) => Err(err.into()),
            }
        })
    }

    /// All nodes the controller knows.
    pub fn nodes(&self) -> anyhow::Result<Vec<Node>> {
        let client = self.client()?;
        block_on(async move { Ok(client.list_nodes().await?) })
    }

    /// Wait until at least `count` nodes are online.
    pub fn wait_online(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes = self.nodes();
            if let Ok(nodes) = &nodes {
                let online = nodes
                    .iter()
                    .filter(|n| n.status == measurelab_api::http::NodeStatus::Online)
                    .count();
                if online >= count {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "lab {}: {count} nodes not online within {timeout:?}: {nodes:?}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A fresh Terraform working directory wired to this lab, as the operator.
    pub fn terraform(&self) -> anyhow::Result<Terraform> {
        Terraform::new(&self.tfrc, &self.env)
    }

    /// A fresh Terraform working directory wired to this lab with `env`
    /// (e.g. [`Lab::member_env`] or [`Lab::env_as`]).
    pub fn terraform_as(&self, env: &[(String, String)]) -> anyhow::Result<Terraform> {
        Terraform::new(&self.tfrc, env)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        match self.measurelab(&["lab", "down"]) {
            Ok(_) => eprintln!("lab {} down", self.name),
            Err(err) => eprintln!("WARNING: lab {} teardown failed: {err:#}", self.name),
        }
    }
}

/// The executable process `pid` runs.
pub fn executable(pid: i32) -> anyhow::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("reading /proc/{pid}/exe"))
}

/// Every process of a namespace-backend guest, from its cgroup (the backend
/// names both `vm-<first 8 hex of the VM id>`).
pub fn guest_processes(vm_id: &str) -> BTreeSet<i32> {
    let netns = format!("vm-{}", &vm_id.replace('-', "")[..8]);
    let unified = Path::new("/sys/fs/cgroup/unified");
    let root = if unified.join("cgroup.procs").is_file() {
        unified
    } else {
        Path::new("/sys/fs/cgroup")
    };
    std::fs::read_to_string(root.join("measurelab").join(netns).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The value of `key` in `lab env` output.
fn env_var(env: &[(String, String)], key: &str) -> anyhow::Result<String> {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .with_context(|| format!("`measurelab lab env` printed no {key}"))
}

/// Parse `KEY=VALUE` lines (optionally prefixed with `export `, optionally quoted).
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("export ").trim();
            let (key, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('"').trim_matches('\'');
            Some((key.trim().to_string(), value.to_string()))
        })
        .filter(|(k, _)| !k.is_empty() && !k.starts_with('#'))
        .collect()
}

/// Run a future on a private runtime (tests are synchronous).
pub fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

/// Exit status plus both streams, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A Terraform working directory and the environment to run `terraform` in.
pub struct Terraform {
    /// The working directory (removed on drop).
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Terraform {
    /// A working directory using `tfrc` and exactly `env` as provider settings.
    pub fn new(tfrc: &Path, env: &[(String, String)]) -> anyhow::Result<Terraform> {
        let dir = tempfile::Builder::new()
            .prefix("measurelab-tf-")
            .tempdir()?;
        let mut all = vec![
            ("TF_CLI_CONFIG_FILE".to_string(), tfrc.display().to_string()),
            ("TF_IN_AUTOMATION".to_string(), "1".to_string()),
            ("TF_INPUT".to_string(), "0".to_string()),
            ("CHECKPOINT_DISABLE".to_string(), "1".to_string()),
        ];
        all.extend(env.iter().cloned());
        Ok(Terraform { dir, env: all })
    }

    /// Write (or overwrite) a file in the working directory.
    pub fn write(&self, name: &str, content: &str) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join(name), content)?;
        Ok(())
    }

    /// Remove a file from the working directory.
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.dir.path().join(name))?;
        Ok(())
    }

    /// A `terraform` command in the working directory with the lab environment
    /// and nothing else that could point the provider elsewhere.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("terraform");
        command
            .current_dir(self.dir.path())
            .args(args)
            .stdin(Stdio::null());
        for key in [
            "MEASURELAB_ENDPOINT",
            "MEASURELAB_TOKEN",
            "MEASURELAB_CA_CERT",
            "TF_CLI_CONFIG_FILE",
        ] {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Run `terraform <args> -no-color` and return its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full: Vec<&str> = args.to_vec();
        full.push("-no-color");
        self.command(&full)
            .output()
            .with_context(|| format!("running terraform {}", args.join(" ")))
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.run(args)?;
        if !output.status.success() {
            bail!(
                "terraform {} failed:\n{}",
                args.join(" "),
                describe(&output)
            );
        }
        Ok(output)
    }

    /// `terraform init`.
    pub fn init(&self) -> anyhow::Result<Output> {
        self.ok(&["init", "-input=false"])
    }

    /// `terraform apply -auto-approve`.
    pub fn apply(&self) -> anyhow::Result<Output> {
        self.ok(&["apply", "-auto-approve", "-input=false"])
    }

    /// `terraform destroy -auto-approve`.
    pub fn destroy(&self) -> anyhow::Result<Output> {
        self.ok(&["destroy", "-auto-approve", "-input=false"])
    }

    /// Exit code of `terraform plan -detailed-exitcode` (0 = no changes, 2 = changes).
    pub fn plan_exit_code(&self) -> anyhow::Result<(i32, Output)> {
        let output = self.run(&["plan", "-detailed-exitcode", "-input=false"])?;
        Ok((output.status.code().unwrap_or(-1), output))
    }

    /// `terraform plan -out` then `terraform show -json` of the saved plan.
    pub fn saved_plan_json(&self, plan_file: &str) -> anyhow::Result<serde_json::Value> {
        self.ok(&["plan", "-input=false", &format!("-out={plan_file}")])?;
        let shown = self.ok(&["show", "-json", plan_file])?;
        Ok(serde_json::from_slice(&shown.stdout)?)
    }

    /// `terraform show -json` of the state.
    pub fn state_json(&self) -> anyhow::Result<serde_json::Value> {
        let shown = self.ok(&["show", "-json"])?;
        Ok(serde_json::from_slice(&shown.stdout)?)
    }

    /// Addresses in the state (`terraform state list`).
    pub fn state_list(&self) -> anyhow::Result<Vec<String>> {
        let output = self.run(&["state", "list"])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// The `values` of the resource at `address` in `terraform show -json` output.
pub fn resource_values<'a>(
    state: &'a serde_json::Value,
    address: &str,
) -> Option<&'a serde_json::Value> {
    state["values"]["root_module"]["resources"]
        .as_array()?
        .iter()
        .find(|r| r["address"] == address)
        .map(|r| &r["values"])
}

/// The planned actions for `address` in a saved plan's JSON.
pub fn planned_actions(plan: &serde_json::Value, address: &str) -> Vec<String> {
    plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["address"] == address)
        .flat_map(|c| {
            c["change"]["actions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// The `terraform { required_providers }` block every test config starts with.
pub const PROVIDER_BLOCK: &str = r#"terraform {
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}

provider "measurelab" {}
"#;

/// HCL for platform `platform` on n1 with one 64 MiB namespace VM,
/// `measurelab_vm.worker`, for tests of what runs inside a VM.
pub fn worker_slice_hcl(platform: &str) -> String {
    format!(
        r#"
resource "measurelab_virtual_platform" "slice" {{
  name  = "{platform}"
  nodes = ["n1"]
}}

resource "measurelab_vm" "worker" {{
  name       = "worker"
  platform   = measurelab_virtual_platform.slice.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}}
"#
    )
}

/// HCL for a multicast slice written with the resources directly (no
/// module): platform `platform` on n1 and n2, VMs `mscs` and `a` on n1 and
/// `b` on n2, programs `<prefix>-point` and `<prefix>-mscs` from `bin`, a
/// point serving on port 7400 in `a` and `b`, and an MSCS in `mscs` that
/// knows both. A test adds its task (depending on
/// `measurelab_deployment.mscs`) and its outputs.
pub fn mcast_slice_hcl(platform: &str, prefix: &str, bin: &std::path::Path) -> String {
    let bin = bin.display();
    format!(
        r#"
resource "measurelab_virtual_platform" "t" {{
  name  = "{platform}"
  nodes = ["n1", "n2"]
}}

resource "measurelab_vm" "vm" {{
  for_each   = {{ mscs = "n1", a = "n1", b = "n2" }}
  name       = each.key
  platform   = measurelab_virtual_platform.t.name
  node       = each.value
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  # Program delivery holds the ~18 MiB mcast-mscs (and its base64) in the
  # guest agent's memory; 32 MiB got it OOM-killed in the VM's cgroup.
  memory_mib = 128
}}

resource "measurelab_program" "point" {{
  name   = "{prefix}-point"
  source = "{bin}/mcast-point"
}}

resource "measurelab_program" "mscs" {{
  name   = "{prefix}-mscs"
  source = "{bin}/mcast-mscs"
}}

resource "measurelab_deployment" "point" {{
  for_each = toset(["a", "b"])
  program  = measurelab_program.point.id
  vms      = [measurelab_vm.vm[each.key].id]
  args     = ["serve", "--listen", "${{measurelab_vm.vm[each.key].address}}:7400", "--name", each.key,
              "--data-addr", measurelab_vm.vm[each.key].address]
}}

resource "measurelab_deployment" "mscs" {{
  program = measurelab_program.mscs.id
  vms     = [measurelab_vm.vm["mscs"].id]
  args = ["--state-file", "state.json", "--platform-api", "http://127.0.0.1:7079",
          "--platform-poll-seconds", "1",
          "--point", "a=${{measurelab_vm.vm["a"].address}}:7400",
          "--point", "b=${{measurelab_vm.vm["b"].address}}:7400"]
  depends_on = [measurelab_deployment.point]
}}
"#
    )
}

/// A local TCP port with nothing listening on it (bound, then released).
pub fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Send SIGINT to a whole process group, as Ctrl-C in a terminal does.
pub fn interrupt_group(pgid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()?;
    anyhow::ensure!(status.success(), "kill -INT -{pgid} failed");
    Ok(())
}

/// SIGINT to one process only: Terraform then asks its plugins to stop with
/// `StopProvider`, and they never see the signal themselves.
pub fn interrupt_process(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -INT {pid} failed");
    Ok(())
}

/// A process stopped by [`Lab::freeze`]; SIGCONT on [`Frozen::thaw`] or drop.
pub struct Frozen {
    pid: i32,
    thawed: bool,
}

impl Frozen {
    /// SIGCONT: the process runs again from where it stopped.
    pub fn thaw(mut self) -> anyhow::Result<()> {
        self.thawed = true;
        send_signal("CONT", self.pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            if let Err(err) = send_signal("CONT", self.pid) {
                eprintln!("WARNING: {err:#}");
            }
        }
    }
}

fn send_signal(signal: &str, pid: i32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T` stopped, ...).
fn process_state(pid: i32) -> anyhow::Result<char> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name in parentheses may hold spaces and parentheses itself:
    // the state is the first field after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .with_context(|| format!("{path}: no state in {stat:?}"))
}

#[cfg(test)]
mod harness_tests {
    use super::*;

    #[test]
    fn parses_lab_env_output() {
        let env = parse_env(
            "export MEASURELAB_ENDPOINT=http://127.0.0.1:7070\nMEASURELAB_TOKEN='abc'\n\n",
        );
        assert_eq!(
            env,
            vec![
                (
                    "MEASURELAB_ENDPOINT".to_string(),
                    "http://127.0.0.1:7070".to_string()
                ),
                ("MEASURELAB_TOKEN".to_string(), "abc".to_string()),
            ]
        );
    }

    #[test]
    fn lab_names_fit_interface_names() {
        let name = unique_lab_name();
        assert!(format!("{name}-n9-up").len() <= 15, "{name}");
    }
}
