//! Shared lab for the real-packet tests: a private userspace OVS bridge, one network
//! namespace per measurement point (running `mcast-point serve`) and one for the MSCS.
//! Everything is torn down on drop (processes first, then namespaces, then the switch).

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use measurelab_testbed::{attach_veth, Netns, OvsSandbox};
use nix::sched::{setns, CloneFlags};
use serde_json::Value;

pub const POINT_BIN: &str = env!("CARGO_BIN_EXE_mcast-point");
pub const MSCS_BIN: &str = env!("CARGO_BIN_EXE_mcast-mscs");
pub const CONTROL_PORT: u16 = 7400;
pub const MSCS_PORT: u16 = 7300;
pub const PROBE_PORT: u16 = 50001;

pub struct Point {
    pub name: String,
    pub ns: Netns,
    pub addr: String,
    /// Switch-side interface name (the OVS port).
    pub port_if: String,
    pub serve: Option<Child>,
}

pub struct Lab {
    pub tag: String,
    pub bridge: String,
    pub subnet: u8,
    /// Points are started with `--mscs` (registration) and the MSCS without `--point`.
    pub registering: bool,
    /// Control key (id, hex secret) the MSCS and points are started with, as a
    /// platform's programs get it in their env; `None`: unkeyed.
    pub key: Option<(String, String)>,
    // Declaration order is drop order: children (in points/mscs) die before the
    // namespaces they live in, and the switch goes last.
    pub mscs: Option<Child>,
    pub points: Vec<Point>,
    pub mscs_ns: Netns,
    pub state_dir: tempfile::TempDir,
    pub ovs: OvsSandbox,
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        kill(&mut self.mscs);
        for point in &mut self.points {
            kill(&mut point.serve);
        }
    }
}

impl Lab {
    /// `tag`: 2-4 lowercase chars unique per test (goes into interface names).
    pub fn new(tag: &str, subnet: u8, points: usize) -> Result<Self> {
        Self::build(tag, subnet, points, false, None)
    }

    /// Like [`Lab::new`], with the points (and later the MSCS) started with control key
    /// `key` (id, hex secret) in their env, as a platform's programs are.
    pub fn keyed(tag: &str, subnet: u8, points: usize, key: (String, String)) -> Result<Self> {
        Self::build(tag, subnet, points, false, Some(key))
    }

    /// Like [`Lab::new`], with points that register with the MSCS instead of being
    /// listed on its command line.
    pub fn registering(tag: &str, subnet: u8, points: usize) -> Result<Self> {
        Self::build(tag, subnet, points, true, None)
    }

    fn build(
        tag: &str,
        subnet: u8,
        points: usize,
        registering: bool,
        key: Option<(String, String)>,
    ) -> Result<Self> {
        let pid = std::process::id();
        let ovs = OvsSandbox::start(&format!("mc-{tag}"))?;
        let bridge = format!("brmc{tag}");
        ovs.add_bridge(&bridge)?;
        let mscs_ns = Netns::new(&format!("mc-{tag}-mscs-{pid}"))?;
        attach_veth(
            &ovs,
            &bridge,
            &format!("mc{tag}m"),
            &mscs_ns,
            "eth0",
            &format!("10.200.{subnet}.2/24"),
            None,
        )?;
        let mut lab = Lab {
            tag: tag.to_string(),
            bridge,
            subnet,
            registering,
            key,
            mscs: None,
            points: Vec::new(),
            mscs_ns,
            state_dir: tempfile::tempdir()?,
            ovs,
        };
        for index in 1..=points {
            let name = format!("p{index}");
            let ns = Netns::new(&format!("mc-{tag}-{name}-{pid}"))?;
            let addr = format!("10.200.{subnet}.{}", 10 + index);
            let port_if = format!("mc{tag}{index}");
            attach_veth(
                &lab.ovs,
                &lab.bridge,
                &port_if,
                &ns,
                "eth0",
                &format!("{addr}/24"),
                None,
            )?;
            // Without a route for 224/4 a multicast send has no interface to leave by.
            ns.run(&["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            lab.points.push(Point {
                name,
                ns,
                addr,
                port_if,
                serve: None,
            });
        }
        for index in 0..points {
            lab.start_point(index)?;
        }
        Ok(lab)
    }

    pub fn start_point(&mut self, index: usize) -> Result<()> {
        // Append: a restarted point's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.point_log_path(index))?;
        let mscs = self.registering.then(|| self.mscs_addr());
        let point = &mut self.points[index];
        let mut command = point.ns.command(POINT_BIN);
        command.args([
            "serve",
            "--listen",
            &format!("{}:{CONTROL_PORT}", point.addr),
            "--name",
            &point.name,
            "--data-addr",
            &point.addr,
        ]);
        if let Some(mscs) = mscs {
            command.args(["--mscs", &mscs]);
        }
        if let Some((id, secret)) = &self.key {
            command
                .env("MEASURELAB_CONTROL_KEY", secret)
                .env("MEASURELAB_CONTROL_KEY_ID", id);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn mcast-point serve")?;
        point.serve = Some(child);
        wait_for_tcp(&point.ns, &format!("{}:{CONTROL_PORT}", point.addr))
    }

    fn point_log_path(&self, index: usize) -> std::path::PathBuf {
        self.state_dir
            .path()
            .join(format!("{}.log", self.points[index].name))
    }

    /// Waits until point `index`'s log (its stderr) contains `needle`.
    pub fn wait_for_point_log(&self, index: usize, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = std::fs::read_to_string(self.point_log_path(index)).unwrap_or_default();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not in {}'s log within {timeout:?}:\n{log}",
                    self.points[index].name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_point(&mut self, index: usize) {
        kill(&mut self.points[index].serve);
    }

    pub fn mscs_addr(&self) -> String {
        format!("10.200.{}.2:{MSCS_PORT}", self.subnet)
    }

    pub fn state_file(&self) -> std::path::PathBuf {
        self.state_dir.path().join("mscs-state.json")
    }

    /// Starts the MSCS with the points in order plus `extra` flags.
    pub fn start_mscs(&mut self, extra: &[&str]) -> Result<()> {
        self.start_mscs_with(extra, false)
    }

    /// Like [`Lab::start_mscs`]; with `points_from_env` the points go through
    /// `MEASURELAB_POINTS` and `--points-from-env` instead of `--point` flags.
    pub fn start_mscs_with(&mut self, extra: &[&str], points_from_env: bool) -> Result<()> {
        let mut command = self.mscs_ns.command(MSCS_BIN);
        command.args([
            "--listen",
            &self.mscs_addr(),
            "--state-file",
            &self.state_file().to_string_lossy(),
            "--port",
            &PROBE_PORT.to_string(),
        ]);
        let points: Vec<String> = self
            .points
            .iter()
            .map(|point| format!("{}={}:{CONTROL_PORT}", point.name, point.addr))
            .collect();
        if self.registering {
            // The points announce themselves.
        } else if points_from_env {
            command
                .arg("--points-from-env")
                .env("MEASURELAB_POINTS", points.join(","));
        } else {
            for point in &points {
                command.args(["--point", point]);
            }
        }
        command.args(extra);
        if let Some((id, secret)) = &self.key {
            command
                .env("MEASURELAB_CONTROL_KEY", secret)
                .env("MEASURELAB_CONTROL_KEY_ID", id);
        }
        // Append: a restarted MSCS's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.path().join("mscs.log"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn mcast-mscs")?;
        self.mscs = Some(child);
        wait_for_tcp(&self.mscs_ns, &self.mscs_addr())
    }

    pub fn sigkill_mscs(&mut self) {
        kill(&mut self.mscs);
    }

    pub fn mscs_log(&self) -> String {
        std::fs::read_to_string(self.state_dir.path().join("mscs.log")).unwrap_or_default()
    }

    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let bearer = self.key.as_ref().map(|(_, secret)| secret.as_str());
        http_with(&self.mscs_ns, method, &self.mscs_addr(), path, body, bearer)
    }

    /// Submits a task and waits until it has finished; returns its result document.
    pub fn run_task(&self, task: &Value, timeout: Duration) -> Result<Value> {
        let (status, record) = self.api("POST", "/tasks", Some(task))?;
        if status != 201 {
            bail!("POST /tasks: {status} {record}");
        }
        let id = record["id"]
            .as_str()
            .ok_or_else(|| anyhow!("no id in {record}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let (_, record) = self.api("GET", &format!("/tasks/{id}"), None)?;
            match record["status"].as_str() {
                Some("succeeded") | Some("failed") => {
                    let seq = record["result_seq"].as_u64().unwrap_or(0);
                    let (_, page) = self.api(
                        "GET",
                        &format!("/results?since={}", seq.saturating_sub(1)),
                        None,
                    )?;
                    let document = page["results"]
                        .as_array()
                        .and_then(|r| r.iter().find(|r| r["seq"].as_u64() == Some(seq)))
                        .map(|r| r["document"].clone())
                        .ok_or_else(|| anyhow!("result {seq} not listed: {page}"))?;
                    return Ok(document);
                }
                _ if Instant::now() > deadline => bail!("task {id} not done: {record}"),
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn results(&self) -> Result<Vec<Value>> {
        let (_, page) = self.api("GET", "/results?since=0&limit=1000", None)?;
        Ok(page["results"].as_array().cloned().unwrap_or_default())
    }

    /// nftables rule in a point's namespace dropping `percent` % of probes at random.
    pub fn inject_loss(&self, index: usize, percent: u32) -> Result<()> {
        self.inject_loss_ports(index, percent, &[PROBE_PORT])
    }

    /// Like [`Lab::inject_loss`] for several UDP destination ports.
    pub fn inject_loss_ports(&self, index: usize, percent: u32, ports: &[u16]) -> Result<()> {
        let ns = &self.points[index].ns;
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let port_set = format!("{{ {} }}", ports.join(", "));
        let percent = percent.to_string();
        let nft = |words: &str, extra: &[&str]| -> Result<String> {
            let mut args: Vec<&str> = words.split(' ').collect();
            args.extend_from_slice(extra);
            ns.run(&args)
        };
        nft("nft add table inet mcloss", &[])?;
        nft(
            "nft add chain inet mcloss input",
            &["{ type filter hook input priority 0 ; }"],
        )?;
        // First rule counts what reaches the receiver, second counts what it drops: the
        // ground truth for exact comparisons.
        nft(
            "nft add rule inet mcloss input udp dport",
            &[&port_set, "counter"],
        )?;
        nft(
            "nft add rule inet mcloss input udp dport",
            &[
                &port_set, "numgen", "random", "mod", "100", "<", &percent, "counter", "drop",
            ],
        )?;
        Ok(())
    }

    /// (packets that reached the input hook, packets the loss rule dropped).
    pub fn loss_counters(&self, index: usize) -> Result<(u64, u64)> {
        let listing = self.points[index]
            .ns
            .run(&["nft", "-j", "list", "chain", "inet", "mcloss", "input"])?;
        let json: Value = serde_json::from_str(&listing)?;
        let counters: Vec<u64> = json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["rule"]["expr"].as_array())
            .filter_map(|exprs| exprs.iter().find_map(|e| e["counter"]["packets"].as_u64()))
            .collect();
        match counters[..] {
            [arrived, dropped] => Ok((arrived, dropped)),
            _ => bail!("expected two counters in {listing}"),
        }
    }

    pub fn ofport(&self, index: usize) -> Result<String> {
        let port = self
            .ovs
            .vsctl(&["get", "Interface", &self.points[index].port_if, "ofport"])?;
        Ok(port.trim().to_string())
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace, so sockets it opens
/// live there; the test's own threads stay in the root namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{}", ns.name());
    thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

pub fn wait_for_tcp(ns: &Netns, addr: &str) -> Result<()> {
    let addr = addr.to_string();
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(&addr) {
                Ok(_) => return Ok(()),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(err) => bail!("{addr} never accepted: {err}"),
            }
        }
    })
}

/// Waits until `ns`'s eth0 is a member of `group` (the kernel lists it once a socket in
/// `ns` joined, ASM or SSM): the readiness signal of a receiver started in the background.
/// The bridge floods multicast (no snooping), so the membership is all a sender waits for.
pub fn wait_for_membership(ns: &Netns, group: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let listing = ns.run(&["ip", "-4", "maddr", "show", "dev", "eth0"])?;
        if listing
            .lines()
            .any(|line| line.split_whitespace().eq(["inet", group]))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not join {group} within {timeout:?}:\n{listing}",
                ns.name()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The kernel's UDP counters of one namespace (`Udp:` in /proc/net/snmp), a count of
/// datagrams that owes nothing to the programs under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams delivered to sockets (counted as a socket reads them).
    pub in_datagrams: u64,
    /// Datagrams handed to IP by sockets.
    pub out_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
}

pub fn udp_counters(ns: &Netns) -> Result<UdpCounters> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp of {}:\n{snmp}", ns.name());
    };
    let counter = |wanted: &str| -> Result<u64> {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == wanted)
            .and_then(|(_, value)| value.parse().ok())
            .ok_or_else(|| anyhow!("no Udp {wanted} in {names:?} / {values:?}"))
    };
    Ok(UdpCounters {
        in_datagrams: counter("InDatagrams")?,
        out_datagrams: counter("OutDatagrams")?,
        rcvbuf_errors: counter("RcvbufErrors")?,
    })
}

/// Minimal HTTP/1.1 client (Connection: close), run inside `ns`.
pub fn http(
    ns: &Netns,
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    http_with(ns, method, addr, path, body, None)
}

/// [`http`] with `Authorization: Bearer <bearer>` (a keyed MSCS's API).
pub fn http_with(
    ns: &Netns,
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&Value>,
    bearer: Option<&str>,
) -> Result<(u16, Value)> {
    let request_body = body.map(|b| b.to_string()).unwrap_or_default();
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{request_body}",
        request_body.len()
    );
    let addr = addr.to_string();
    let raw = in_netns(ns, move || {
        let mut stream = TcpStream::connect(&addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        Ok(raw)
    })?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))
    };
    Ok((status, value))
}

/// The receiver entry of `point` in a result document.
pub fn receiver<'a>(document: &'a Value, point: &str) -> &'a Value {
    document["receivers"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["point"] == point))
        .unwrap_or(&Value::Null)
}

/// Wilson score interval for `successes` of `n` at z (2.5758 for 99 %).
pub fn wilson_interval(p: f64, n: f64, z: f64) -> (f64, f64) {
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denominator;
    (centre - half, centre + half)
}

/// Accepts one HTTP POST on `listener`, answers 204 and returns the JSON body.
pub fn accept_one_post(listener: &std::net::TcpListener, timeout: Duration) -> Result<Value> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no POST within {timeout:?}");
                }
                thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(err.into()),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let body = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the body was complete");
        }
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow!("POST without content-length: {head}"))?;
            if !head.starts_with("POST ") {
                bail!("expected a POST, got {head}");
            }
            if body.len() >= length {
                break body[..length].to_string();
            }
        }
    };
    stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")?;
    Ok(serde_json::from_str(&body)?)
}
