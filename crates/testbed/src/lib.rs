//! Test support for code that needs real networking: network namespaces, veth
//! pairs and a private, userspace-only Open vSwitch.
//!
//! # Layout
//! - [`Netns`]: a named network namespace (`ip netns add`), deleted on drop.
//! - [`OvsSandbox`]: a private `ovsdb-server` + `ovs-vswitchd` pair in a temporary
//!   run dir; bridges use `datapath_type=netdev` because the kernel has no
//!   openvswitch module.
//! - [`attach_veth`]: plug a namespace into a sandbox bridge through a veth pair.
//! - [`pg`]: a private PostgreSQL server (scripts/pg.sh) and a fresh database per
//!   test.
//! - [`cargo`]: a nested `cargo build` that leaves the outer build's artefacts
//!   alone.
//!
//! # Why the switch lives in its own namespace
//! The userspace datapath creates persistent tap devices named `ovs-netdev` and
//! after each bridge in the namespace where `ovs-vswitchd` runs. A second
//! `ovs-vswitchd` in the same namespace fails with "creating tap device failed:
//! Device or resource busy" (verified on this machine), so parallel tests, or
//! several engineers' tests, would break each other in the root namespace. Each
//! sandbox therefore runs `ovs-vswitchd` inside its own namespace
//! ([`OvsSandbox::netns`]), which also makes cleanup total: deleting the
//! namespace destroys the taps and every veth end that was left in it.
//! `ovsdb-server` and the control sockets are plain unix sockets in the run dir,
//! reachable from any namespace.
//!
//! Everything here shells out to `ip`, `ethtool` (through
//! `measurelab-hostnet`, the workspace's one host networking helper) and the
//! OVS tools, and needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use measurelab_hostnet as hostnet;

pub mod cargo;
pub mod pg;

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);
const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(5);

static SANDBOX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run `cmd` and return its stdout without the trailing newline; a non-zero
/// exit becomes an error that shows the command line and its stderr.
fn run_command(mut cmd: Command) -> Result<String> {
    Ok(hostnet::run(&mut cmd)?.trim_end().to_string())
}

fn check_ifname(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN {
        bail!(
            "{field} {name:?}: interface names must be 1..={MAX_IFNAME_LEN} bytes, got {}",
            name.len()
        );
    }
    if name.contains(['/', ' ', ':']) {
        bail!("{field} {name:?}: interface names must not contain '/', ' ' or ':'");
    }
    Ok(())
}

/// A named network namespace. Created with `ip netns add`; dropping it kills any
/// process still inside (they were started by the test that owns the namespace)
/// and deletes it, which also destroys the veth ends it holds.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create namespace `name` with its loopback up. A stale namespace of the same
    /// name (left by a crashed run) is removed first, so tests are idempotent.
    pub fn new(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name.len() > 64 {
            bail!("netns name {name:?} must be 1..=64 bytes without '/'");
        }
        if hostnet::netns_exists(name) {
            delete_netns(name);
        }
        hostnet::netns_ensure(name)?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        hostnet::command_in(Some(&self.name), program)
    }

    /// Run `args[0]` with the remaining arguments inside the namespace; fails on a
    /// non-zero exit and returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("Netns::run needs at least a program name"))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_command(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

fn delete_netns(name: &str) {
    // A namespace is only freed once no process holds it; `ip netns del` alone
    // would leave a leaked iperf or collector running in a nameless namespace.
    for pid in hostnet::netns_pids(name) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = hostnet::netns_delete(name);
}

/// A private Open vSwitch: `ovsdb-server` with its own database and
/// `ovs-vswitchd` in its own network namespace, both children of this process.
/// Dropping the sandbox stops both daemons, deletes the namespace (and with it
/// the datapath taps and veth ends) and removes the run dir.
pub struct OvsSandbox {
    tag: String,
    // Declared before `dir` so the namespace goes before the directory.
    netns: Netns,
    dir: tempfile::TempDir,
    ovsdb_server: Mutex<Option<Child>>,
    vswitchd: Mutex<Option<Child>>,
}

impl std::fmt::Debug for OvsSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvsSandbox")
            .field("tag", &self.tag)
            .field("dir", &self.dir.path())
            .field("netns", &self.netns.name())
            .finish()
    }
}

impl OvsSandbox {
    /// Start a sandbox. `tag` makes names readable in `ps` and `ip netns`; the
    /// process id and a counter are appended so parallel tests never collide.
    pub fn start(tag: &str) -> Result<Self> {
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("sandbox tag {tag:?} must be non-empty ASCII letters, digits or '-'");
        }
        let serial = SANDBOX_COUNTER.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{tag}-{}-{serial}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("mlab-ovs-{unique}-"))
            .tempdir()
            .context("cannot create the sandbox run dir")?;
        let socket = dir.path().join("db.sock");
        if socket.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
            bail!(
                "sandbox socket path {} is longer than {MAX_UNIX_SOCKET_PATH} bytes; use a shorter tag",
                socket.display()
            );
        }
        let netns = Netns::new(&format!("mlab-sw-{unique}"))?;
        let sandbox = OvsSandbox {
            tag: tag.to_string(),
            netns,
            dir,
            ovsdb_server: Mutex::new(None),
            vswitchd: Mutex::new(None),
        };
        sandbox.boot()?;
        Ok(sandbox)
    }

    fn boot(&self) -> Result<()> {
        let dir = self.dir.path();
        let db = dir.join("conf.db");
        let mut create = Command::new("ovsdb-tool");
        create.arg("create").arg(&db).arg(VSWITCH_SCHEMA);
        run_command(create)?;

        let mut server = Command::new("ovsdb-server");
        self.ovs_env(&mut server);
        server
            .arg(&db)
            .arg(format!("--remote=punix:{}", self.socket_path().display()))
            .arg(format!(
                "--pidfile={}",
                dir.join("ovsdb-server.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovsdb-server.log").display()
            ))
            .arg(format!("--unixctl={}", self.server_ctl().display()));
        let child = spawn_quiet(server, "ovsdb-server")?;
        *lock(&self.ovsdb_server) = Some(child);
        self.wait_for_socket(&self.socket_path(), &self.ovsdb_server, "ovsdb-server")?;

        let mut init = Command::new("ovs-vsctl");
        init.arg(format!("--db={}", self.db_target()))
            .args(["--no-wait", "init"]);
        run_command(init)?;

        // `ip netns exec` execs the program, so the child's pid is vswitchd's own.
        let mut vswitchd = self.netns.command("ovs-vswitchd");
        self.ovs_env(&mut vswitchd);
        vswitchd
            .arg(self.db_target())
            .arg(format!(
                "--pidfile={}",
                dir.join("ovs-vswitchd.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovs-vswitchd.log").display()
            ))
            .arg(format!("--unixctl={}", self.vswitchd_ctl().display()));
        let child = spawn_quiet(vswitchd, "ovs-vswitchd")?;
        *lock(&self.vswitchd) = Some(child);
        self.wait_for_socket(&self.vswitchd_ctl(), &self.vswitchd, "ovs-vswitchd")?;

        // A vsctl write without --no-wait returns once vswitchd has applied it,
        // so the sandbox is fully up when start() returns.
        self.vsctl(&[
            "set",
            "Open_vSwitch",
            ".",
            &format!("external_ids:measurelab-sandbox={}", self.tag),
        ])
        .context("ovs-vswitchd did not pick up the database")?;
        Ok(())
    }

    fn ovs_env(&self, cmd: &mut Command) {
        let dir = self.dir.path();
        cmd.env("OVS_RUNDIR", dir)
            .env("OVS_LOGDIR", dir)
            .env("OVS_DBDIR", dir)
            .env("OVS_SYSCONFDIR", dir);
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    fn server_ctl(&self) -> PathBuf {
        self.dir.path().join("ovsdb-server.ctl")
    }

    fn vswitchd_ctl(&self) -> PathBuf {
        self.dir.path().join("ovs-vswitchd.ctl")
    }

    fn wait_for_socket(&self, path: &Path, child: &Mutex<Option<Child>>, what: &str) -> Result<()> {
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        while !path.exists() {
            if let Some(child) = lock(child).as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "{what} exited early ({status}); log tail:\n{}",
                        self.log_tail(what)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} did not create {} within {DAEMON_START_TIMEOUT:?}; log tail:\n{}",
                    path.display(),
                    self.log_tail(what)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn log_tail(&self, daemon: &str) -> String {
        let log =
            fs::read_to_string(self.dir.path().join(format!("{daemon}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The OVSDB remote of this sandbox, e.g. `unix:/tmp/mlab-ovs-x/db.sock`.
    pub fn db_target(&self) -> String {
        format!("unix:{}", self.socket_path().display())
    }

    /// The sandbox's run dir (database, logs, pid files, control sockets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The namespace `ovs-vswitchd` runs in. Bridge-side veth ends live here, and
    /// so must anything that talks to the datapath over IP (e.g. an sFlow
    /// collector on this namespace's loopback).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Run `ovs-vsctl` against this sandbox (test setup and inspection only;
    /// product code talks OVSDB). Waits until ovs-vswitchd applied the change.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ovs-vsctl");
        self.ovs_env(&mut cmd);
        cmd.arg(format!("--db={}", self.db_target()))
            .arg("--timeout=30")
            .args(args);
        run_command(cmd)
    }

    /// Run `ovs-ofctl` against this sandbox; a bridge name resolves to its
    /// management socket in the run dir.
    pub fn ofctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ovs-ofctl");
        self.ovs_env(&mut cmd);
        cmd.args(args);
        run_command(cmd)
    }

    /// Run `ovs-appctl` against this sandbox's ovs-vswitchd.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ovs-appctl");
        self.ovs_env(&mut cmd);
        cmd.arg("-t").arg(self.vswitchd_ctl()).args(args);
        run_command(cmd)
    }

    /// Add bridge `name` with the userspace datapath (idempotent).
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        check_ifname("bridge name", name)?;
        self.vsctl(&[
            "--may-exist",
            "add-br",
            name,
            "--",
            "set",
            "Bridge",
            name,
            "datapath_type=netdev",
        ])?;
        Ok(())
    }

    /// Create a veth pair with both ends in the switch namespace, both up, e.g.
    /// to link two bridges of this sandbox. Nothing is added to a bridge.
    pub fn veth_pair(&self, a: &str, b: &str) -> Result<()> {
        check_ifname("veth end", a)?;
        check_ifname("veth end", b)?;
        let switch = Some(self.netns.name());
        hostnet::veth_add(switch, a, b, None)?;
        hostnet::ip_in(self.netns.name(), &["link", "set", a, "up"])?;
        hostnet::ip_in(self.netns.name(), &["link", "set", b, "up"])?;
        Ok(())
    }

    /// Stop `ovs-vswitchd` now (as drop does: `exit --cleanup`, then a kill
    /// if it hangs), keeping `ovsdb-server` and the namespace, so a test can
    /// check what the switch leaves behind. Idempotent.
    pub fn stop_switch(&self) {
        self.stop_daemon(&self.vswitchd, &self.vswitchd_ctl(), &["exit", "--cleanup"]);
    }

    fn stop_daemon(&self, child: &Mutex<Option<Child>>, ctl: &Path, exit_args: &[&str]) {
        let Some(mut child) = lock(child).take() else {
            return;
        };
        // A clean exit first: vswitchd then releases its datapath properly.
        let mut exit = Command::new("ovs-appctl");
        self.ovs_env(&mut exit);
        let _ = exit
            .arg("-t")
            .arg(ctl)
            .arg("--timeout=3")
            .args(exit_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for OvsSandbox {
    fn drop(&mut self) {
        // `--cleanup` makes vswitchd delete its datapath and the persistent
        // `ovs-netdev` and bridge taps; a plain exit leaves them in the
        // namespace (harmless here only because the namespace goes next,
        // but not for a vswitchd in a namespace that outlives it).
        self.stop_switch();
        self.stop_daemon(&self.ovsdb_server, &self.server_ctl(), &["exit"]);
        // `netns` and `dir` drop next, in declaration order.
    }
}

fn lock(child: &Mutex<Option<Child>>) -> std::sync::MutexGuard<'_, Option<Child>> {
    // A poisoned lock only means another test thread panicked; the Child is intact.
    child
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn_quiet(mut cmd: Command, what: &str) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {what}"))
}

/// Plug namespace `ns` into `bridge` through a veth pair.
///
/// `host_if` stays in the sandbox's switch namespace ([`OvsSandbox::netns`]) and
/// is added to `bridge`, as an access port of `vlan` if given. `guest_if` moves
/// into `ns`, gets `cidr` (e.g. `10.200.1.1/24`), is brought up, and has tx
/// checksum offload turned off: with it on, UDP leaves the veth with a partial
/// checksum that the userspace datapath forwards unfixed, and receivers drop it.
pub fn attach_veth(
    ovs: &OvsSandbox,
    bridge: &str,
    host_if: &str,
    ns: &Netns,
    guest_if: &str,
    cidr: &str,
    vlan: Option<u16>,
) -> Result<()> {
    if let Some(tag) = vlan {
        if !(1..=4094).contains(&tag) {
            bail!("vlan {tag}: a VLAN tag must be in 1..=4094");
        }
    }
    plug_veth(ovs, host_if, ns, guest_if, cidr)?;
    let tag_arg = vlan.map(|tag| format!("tag={tag}"));
    let mut args = vec!["--may-exist", "add-port", bridge, host_if];
    if let Some(tag_arg) = &tag_arg {
        args.push(tag_arg);
    }
    ovs.vsctl(&args)?;
    Ok(())
}

/// Like [`attach_veth`] but without adding `host_if` to any bridge: for tests
/// whose code under test configures OVS itself (e.g. the agent's OVSDB driver).
/// `host_if` is up in the switch namespace, ready to become a port.
pub fn plug_veth(
    ovs: &OvsSandbox,
    host_if: &str,
    ns: &Netns,
    guest_if: &str,
    cidr: &str,
) -> Result<()> {
    check_ifname("host_if", host_if)?;
    check_ifname("guest_if", guest_if)?;
    let switch = ovs.netns().name();
    hostnet::veth_add(Some(switch), host_if, guest_if, Some(ns.name()))?;
    hostnet::ip_in(switch, &["link", "set", host_if, "up"])?;
    hostnet::ip_in(ns.name(), &["addr", "add", cidr, "dev", guest_if])?;
    hostnet::ip_in(ns.name(), &["link", "set", guest_if, "up"])?;
    hostnet::tx_offload_off(Some(ns.name()), guest_if)?;
    Ok(())
}

/// Runs `promtool check metrics` (Debian package `prometheus`,
/// scripts/packages.txt) on a classic-format exposition; `Err` carries
/// promtool's complaints.
pub fn promtool_check(exposition: &str) -> Result<()> {
    use std::io::Write;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus, scripts/packages.txt)")?;
    promtool
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(exposition.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    if !checked.status.success() {
        bail!(
            "promtool: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    Ok(())
}

/// The operators' Grafana dashboard (`docs/grafana/measurelab-controller.json`).
pub const GRAFANA_DASHBOARD: &str =
    include_str!("../../../docs/grafana/measurelab-controller.json");

/// The `measurelab_*` series [`GRAFANA_DASHBOARD`]'s panels query, each once, so a test
/// can check each against the `/metrics` that serves it (a renamed metric would leave a
/// panel silently empty): `measurelab_agent_*` against a node agent's, the rest against
/// the controller's.
pub fn dashboard_series() -> Result<std::collections::BTreeSet<String>> {
    let dashboard: serde_json::Value =
        serde_json::from_str(GRAFANA_DASHBOARD).context("the dashboard JSON")?;
    let mut queried = std::collections::BTreeSet::new();
    let panels = dashboard["panels"].as_array().context("dashboard panels")?;
    for panel in panels {
        let targets = panel["targets"].as_array().context("panel targets")?;
        for target in targets {
            let expr = target["expr"].as_str().context("target expr")?;
            for (start, _) in expr.match_indices("measurelab_") {
                queried.insert(
                    expr[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
    }
    Ok(queried)
}
