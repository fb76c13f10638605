//! The service host against real OVS, real namespaces and real multicast
//! (needs root and openvswitch-switch):
//!
//! - the service network: the agent's OVSDB driver puts an internal port on
//!   the bridge at the service VLAN, with the address and the multicast
//!   route, repairs it, and refuses a foreign port of that name;
//! - the task runner: three "nodes" (namespaces on one OVS bridge, service
//!   VLAN) serve in-process points; the first node orchestrates a once task
//!   and a periodic task against a fake controller, results carry real
//!   counts, a run killed midway runs again, a once task is never posted
//!   twice across a restart, and a result whose delivery failed before a
//!   restart is re-posted with the same run_id.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use measurelab_agent::reconcile::{ControlPlane, ReconcileError};
use measurelab_agent::service_host::{
    ensure_service_network, run_tasks, ServiceHostConfig, ServiceHostError, TaskRunnerConfig,
};
use measurelab_api::node_v1::{
    DesiredState, ProgramBlob, ServicePeer, ServiceTask, StatusAck, StatusReport,
};
use measurelab_api::result::SenderReport;
use measurelab_mcast::auth::{ControlKey, KeyRing};
use measurelab_mcast::protocol::{ControlRequest, ControlResponse, ReceiveRequest, SendRequest};
use measurelab_testbed::{attach_veth, Netns, OvsSandbox};
use serde_json::{json, Value};
use tokio::sync::watch;

const SERVICE_VLAN: u16 = 4000;
const CONTROL_PORT: u16 = 7090;

/// Runs `f` on a fresh thread that has entered namespace `ns` (sockets,
/// spawned threads and child processes inherit it).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| path.clone())?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn service_network_is_created_repaired_and_never_taken_over() -> Result<()> {
    let ovs = OvsSandbox::start("svcnet")?;
    ovs.add_bridge("br-int")?;
    let target = ovs.db_target();
    let ns = ovs.netns().name().to_string();
    let mut config = ServiceHostConfig::new(Ipv4Addr::new(10, 253, 9, 11), 24);
    config.interface = "svc-t0".into();
    let ensure = {
        let target = target.clone();
        let ns = ns.clone();
        move |config: ServiceHostConfig| {
            let target = target.clone();
            in_netns(&ns, move || {
                runtime().block_on(ensure_service_network(
                    &config,
                    Some(&target),
                    "br-int",
                    "node-a",
                ))
            })
        }
    };
    ensure(config.clone())??;
    assert_eq!(ovs.vsctl(&["get", "Port", "svc-t0", "tag"])?, "4000");
    assert_eq!(
        ovs.vsctl(&["get", "Port", "svc-t0", "external_ids:measurelab-role"])?,
        "service"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "svc-t0", "type"])?,
        "internal"
    );
    let addresses = ovs
        .netns()
        .run(&["ip", "-o", "-4", "addr", "show", "dev", "svc-t0"])?;
    assert!(addresses.contains("10.253.9.11/24"), "{addresses}");
    let route = ovs.netns().run(&["ip", "route", "show", "224.0.0.0/4"])?;
    assert!(route.contains("dev svc-t0"), "{route}");

    // Level-triggered: a changed tag and a removed address come back.
    ovs.vsctl(&["set", "Port", "svc-t0", "tag=7"])?;
    ovs.netns()
        .run(&["ip", "addr", "del", "10.253.9.11/24", "dev", "svc-t0"])?;
    ensure(config.clone())??;
    assert_eq!(ovs.vsctl(&["get", "Port", "svc-t0", "tag"])?, "4000");
    let addresses = ovs
        .netns()
        .run(&["ip", "-o", "-4", "addr", "show", "dev", "svc-t0"])?;
    assert!(addresses.contains("10.253.9.11/24"), "{addresses}");

    // Someone else's port of that name is left alone.
    ovs.vsctl(&[
        "add-port",
        "br-int",
        "svc-f0",
        "--",
        "set",
        "Interface",
        "svc-f0",
        "type=internal",
    ])?;
    config.interface = "svc-f0".into();
    match ensure(config.clone())? {
        Err(ServiceHostError::Conflict { port }) => assert_eq!(port, "svc-f0"),
        other => bail!("expected a conflict, got {other:?}"),
    }
    assert_eq!(ovs.vsctl(&["get", "Port", "svc-f0", "tag"])?, "[]");

    // No bridge yet: a retryable "bridge missing", nothing created.
    config.interface = "svc-t1".into();
    let missing = {
        let target = target.clone();
        in_netns(&ns, move || {
            runtime().block_on(ensure_service_network(
                &config,
                Some(&target),
                "br-none",
                "node-a",
            ))
        })?
    };
    assert!(
        matches!(missing, Err(ServiceHostError::BridgeMissing { .. })),
        "{missing:?}"
    );
    Ok(())
}

/// A controller that lists fixed service tasks and records posted results.
#[derive(Default)]
struct FakeController {
    tasks: Mutex<Vec<ServiceTask>>,
    posted: Mutex<Vec<(String, Value)>>,
    /// Post attempts to refuse (Unavailable) before accepting.
    refuse_posts: Mutex<u32>,
    attempts: Mutex<u32>,
}

impl FakeController {
    fn posted(&self) -> Vec<(String, Value)> {
        self.posted.lock().unwrap().clone()
    }
}

#[async_trait]
impl ControlPlane for FakeController {
    async fn desired_state(&self) -> Result<DesiredState, ReconcileError> {
        Ok(DesiredState {
            generation: 1,
            service_tasks: self.tasks.lock().unwrap().clone(),
            ..Default::default()
        })
    }
    async fn report_status(&self, _: StatusReport) -> Result<StatusAck, ReconcileError> {
        Ok(StatusAck::default())
    }
    async fn fetch_program(&self, _: &str) -> Result<ProgramBlob, ReconcileError> {
        Err(ReconcileError::NotRegistered)
    }
    async fn post_result(
        &self,
        vm_id: &str,
        task_id: &str,
        document_json: String,
    ) -> Result<String, ReconcileError> {
        assert_eq!(vm_id, "", "a service host posts with an empty vm_id");
        *self.attempts.lock().unwrap() += 1;
        {
            let mut refuse = self.refuse_posts.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(ReconcileError::Controller {
                    call: "PostResult",
                    status: Box::new(tonic::Status::unavailable("controller restarting")),
                });
            }
        }
        let document: Value = serde_json::from_str(&document_json).unwrap();
        let mut posted = self.posted.lock().unwrap();
        posted.push((task_id.to_string(), document));
        Ok(format!("result-{}", posted.len()))
    }
    async fn poll_tasks(&self, _: &str) -> Result<Vec<String>, ReconcileError> {
        Ok(Vec::new())
    }
}

/// Three nodes on one bridge, service VLAN, each serving a point.
struct Nodes {
    // Points before namespaces: they stop before their namespace goes.
    points: Vec<measurelab_mcast::service::PointHandle>,
    /// The keys all three points accept: the runner under test keeps it current, as
    /// each node's runner keeps its own point's.
    keys: Arc<KeyRing>,
    namespaces: Vec<Netns>,
    peers: Vec<ServicePeer>,
    _ovs: OvsSandbox,
}

fn three_nodes(tag: &str) -> Result<Nodes> {
    let ovs = OvsSandbox::start(tag)?;
    ovs.add_bridge("br-int")?;
    let pid = std::process::id() % 100_000;
    let mut namespaces = Vec::new();
    let mut points = Vec::new();
    let mut peers = Vec::new();
    let keys = Arc::new(KeyRing::default());
    for k in 1..=3u8 {
        let ns = Netns::new(&format!("svc-{tag}-{pid}-n{k}"))?;
        let address = Ipv4Addr::new(10, 253, 0, 10 + k);
        attach_veth(
            &ovs,
            "br-int",
            &format!("s{pid}{tag}{k}")
                .chars()
                .take(15)
                .collect::<String>(),
            &ns,
            "svc0",
            &format!("{address}/24"),
            Some(SERVICE_VLAN),
        )?;
        ns.run(&["ip", "route", "add", "224.0.0.0/4", "dev", "svc0"])?;
        let name = format!("n{k}");
        let listen = std::net::SocketAddr::from((address, CONTROL_PORT));
        let ring = Arc::clone(&keys);
        let point = in_netns(ns.name(), move || {
            measurelab_mcast::service::spawn_point(listen, &name, address, Some(ring))
        })??;
        peers.push(ServicePeer {
            node: format!("n{k}"),
            endpoint: listen.to_string(),
            control_protocol_version: None,
        });
        points.push(point);
        namespaces.push(ns);
    }
    Ok(Nodes {
        points,
        keys,
        namespaces,
        peers,
        _ovs: ovs,
    })
}

fn service_task(id: &str, spec: Value, peers: &[ServicePeer]) -> ServiceTask {
    ServiceTask {
        task_id: id.into(),
        spec_json: spec.to_string(),
        peers: peers.to_vec(),
        control_key: Some(ControlKey::generate_hex()),
    }
}

/// The orchestrator (node n1's runner) in n1's namespace until `stop` fires.
fn start_runner(
    ns: &str,
    state_dir: std::path::PathBuf,
    control: Arc<FakeController>,
    keys: Arc<KeyRing>,
) -> Result<(watch::Sender<bool>, std::thread::JoinHandle<()>)> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let path = format!("/run/netns/{ns}");
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let (_generation_tx, generation_rx) = watch::channel(1u64);
        runtime().block_on(run_tasks(
            TaskRunnerConfig {
                node_name: "n1".into(),
                state_dir,
                clock_sync_bound_us: None,
                keys,
            },
            control,
            generation_rx,
            stop_rx,
        ));
    });
    Ok((stop_tx, handle))
}

/// `Udp: InDatagrams` of `ns`: datagrams its sockets have read.
fn udp_in_datagrams(ns: &Netns) -> Result<u64> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp of {}", ns.name());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .context("no Udp InDatagrams")
}

fn wait_until(what: &str, timeout: Duration, check: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// (point, packets sent to it, received, loss ratio) per receiver.
fn receivers(document: &Value) -> Vec<(String, u64, u64, f64)> {
    document["receivers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["point"].as_str().unwrap_or_default().to_string(),
                r["metrics"]["packets_sent"].as_u64().unwrap_or(0),
                r["metrics"]["packets_received"].as_u64().unwrap_or(0),
                r["metrics"]["loss_ratio"].as_f64().unwrap_or(1.0),
            )
        })
        .collect()
}

#[test]
fn once_and_periodic_tasks_run_over_three_nodes_and_survive_restarts() -> Result<()> {
    let nodes = three_nodes("run")?;
    let state = tempfile::tempdir()?;
    let control = Arc::new(FakeController::default());
    let once = json!({"id": "once-1", "name": "quick", "mode": "service_host",
        "nodes": ["n1", "n2", "n3"], "schedule": "once", "duration_seconds": 2,
        "rate_pps": 200, "packet_size_bytes": 200, "group": "239.10.0.1", "port": 6100,
        "ttl": 4, "ssm": false, "receivers": [], "status": "running"});
    control
        .tasks
        .lock()
        .unwrap()
        .push(service_task("once-1", once, &nodes.peers));
    let n1 = nodes.namespaces[0].name().to_string();

    // Killed in the middle of the run (2 s of sending), once its probes
    // reach n2 by the kernel's count (a quarter second's worth): nothing is
    // posted, and since the task is still open the next agent runs it again.
    let n2_before = udp_in_datagrams(&nodes.namespaces[1])?;
    let (stop, runner) = start_runner(
        &n1,
        state.path().to_path_buf(),
        control.clone(),
        nodes.keys.clone(),
    )?;
    wait_until("the run's probes at n2", Duration::from_secs(30), || {
        udp_in_datagrams(&nodes.namespaces[1]).is_ok_and(|now| now >= n2_before + 50)
    })?;
    stop.send(true)?;
    runner.join().unwrap();
    assert!(control.posted().is_empty(), "{:#?}", control.posted());
    let (stop, runner) = start_runner(
        &n1,
        state.path().to_path_buf(),
        control.clone(),
        nodes.keys.clone(),
    )?;
    wait_until("the once result", Duration::from_secs(30), || {
        !control.posted().is_empty()
    })?;
    // A restart while the controller still lists the task (its next desired
    // state has not arrived yet): the once task must not run again.
    stop.send(true)?;
    runner.join().unwrap();
    // Nothing observable marks a run that was rightly not started, so this is a
    // window: one run's length (2 s) and a second for its delivery, in which a
    // re-run would have posted a second result.
    let (stop, runner) = start_runner(
        &n1,
        state.path().to_path_buf(),
        control.clone(),
        nodes.keys.clone(),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    stop.send(true)?;
    runner.join().unwrap();

    let posted = control.posted();
    assert_eq!(posted.len(), 1, "posted twice: {posted:#?}");
    let (task_id, document) = &posted[0];
    assert_eq!(task_id, "once-1");
    assert_eq!(document["task_id"], "once-1");
    assert_eq!(document["kind"], "task");
    assert_eq!(document["status"], "ok", "{document:#}");
    assert_eq!(document["source_point"], "n1");
    let sender = sender_report(document);
    assert_eq!(document["config"]["duration_seconds"], 2.0);
    let got = receivers(document);
    assert_eq!(
        got.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["n2", "n3"]
    );
    for (point, to_point, received, loss) in &got {
        // 2 s at 200 pps. Probes of the aborted run's session are not
        // counted here.
        assert_clean(point, *to_point, &sender, *received, *loss, 400);
    }

    // Periodic, the source rotating; the first delivery fails (controller
    // unavailable) and the agent restarts before retrying: the same run_id
    // arrives afterwards, exactly once.
    let periodic = json!({"id": "per-1", "name": "every", "mode": "service_host",
        "nodes": ["n1", "n2", "n3"], "schedule": "periodic", "interval_seconds": 3,
        "duration_seconds": 1, "rate_pps": 300, "packet_size_bytes": 100,
        "group": "239.10.0.2", "port": 6102, "ttl": 4, "ssm": false, "receivers": [],
        "status": "running"});
    {
        let mut tasks = control.tasks.lock().unwrap();
        tasks.clear();
        tasks.push(service_task("per-1", periodic, &nodes.peers));
    }
    *control.refuse_posts.lock().unwrap() = 1_000;
    *control.attempts.lock().unwrap() = 0;
    control.posted.lock().unwrap().clear();
    let (stop, runner) = start_runner(
        &n1,
        state.path().to_path_buf(),
        control.clone(),
        nodes.keys.clone(),
    )?;
    wait_until("a refused delivery", Duration::from_secs(30), || {
        *control.attempts.lock().unwrap() > 1
    })?;
    stop.send(true)?;
    runner.join().unwrap();
    let stored: Value = serde_json::from_slice(&std::fs::read(state.path().join("per-1.json"))?)?;
    let pending_run = stored["unposted"]["run_id"]
        .as_str()
        .context("the undelivered document is on disk")?
        .to_string();
    // The once task left the desired state, so its state file is gone.
    assert!(!state.path().join("once-1.json").exists());

    *control.refuse_posts.lock().unwrap() = 0;
    let (stop, runner) = start_runner(
        &n1,
        state.path().to_path_buf(),
        control.clone(),
        nodes.keys.clone(),
    )?;
    wait_until("three periodic results", Duration::from_secs(40), || {
        control.posted().len() >= 3
    })?;
    stop.send(true)?;
    runner.join().unwrap();

    let posted = control.posted();
    let run_ids: Vec<&str> = posted
        .iter()
        .filter_map(|(_, d)| d["run_id"].as_str())
        .collect();
    assert_eq!(run_ids[0], pending_run, "the stored result goes first");
    let mut unique = run_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        run_ids.len(),
        "a run posted twice: {run_ids:?}"
    );
    let sources: Vec<&str> = posted
        .iter()
        .filter_map(|(_, d)| d["source_point"].as_str())
        .collect();
    // Round robin: n1 (stored run), then n2, n3 after the restart.
    assert_eq!(&sources[..3], ["n1", "n2", "n3"], "{sources:?}");
    for (_, document) in &posted {
        assert_eq!(document["kind"], "periodic");
        let sender = sender_report(document);
        for (point, sent, received, loss) in receivers(document) {
            assert_clean(&point, sent, &sender, received, loss, 300);
        }
    }
    // Every send and receive carried the task's key: the keyed points refused none.
    for point in &nodes.points {
        let counters = point.counters();
        assert_eq!(
            counters.refused_unauthenticated.load(Ordering::Relaxed),
            0,
            "{}",
            point.name()
        );
        assert!(
            counters.sends_started.load(Ordering::Relaxed) > 0,
            "{}",
            point.name()
        );
    }
    drop(nodes);
    Ok(())
}

/// A clean path: the point got what the source sent (`sent`, its count of
/// the source's probes), give or take 1 %; and the source ran for the whole
/// run by its own report: sent, failed and skipped slots (a loaded machine
/// stalls the sender, which skips slots instead of bursting) make the
/// nominal count, to within one slot.
fn assert_clean(
    point: &str,
    sent: u64,
    sender: &SenderReport,
    received: u64,
    loss: f64,
    nominal: u64,
) {
    assert_eq!(sent, sender.packets_sent, "{point}: {sender:?}");
    let accounted = sender.slots_accounted();
    assert!(
        accounted.is_some_and(|slots| slots.abs_diff(nominal) <= 1),
        "{point}: {accounted:?} slots of {nominal}: {sender:?}"
    );
    assert!(
        received as f64 >= 0.99 * sent as f64,
        "{point} received {received} of {sent}"
    );
    assert!(loss <= 0.01, "{point} loss {loss}");
}

/// The source's own report in a result document.
fn sender_report(document: &Value) -> SenderReport {
    serde_json::from_value(document["source"]["report"].clone())
        .unwrap_or_else(|e| panic!("source.report: {e}: {document:#}"))
}

/// One line-JSON control conversation with a point, from the test thread.
struct Control {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Control {
    fn open(addr: &str) -> Result<Self> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: std::io::BufReader::new(stream),
        })
    }

    fn request(&mut self, request: &ControlRequest) -> Result<ControlResponse> {
        use std::io::{BufRead, Write};
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            bail!("the point closed the connection instead of answering");
        }
        Ok(serde_json::from_str(&answer)?)
    }
}

#[test]
fn an_unauthenticated_send_is_refused_and_no_probe_arrives() -> Result<()> {
    let nodes = three_nodes("auth")?;
    let task = ControlKey::from_hex("task-b", &ControlKey::generate_hex())?;
    let other = ControlKey::from_hex("task-a", &ControlKey::generate_hex())?;
    nodes.keys.replace([task.clone()]);
    let group = Ipv4Addr::new(239, 10, 0, 9);
    let port = 6109;
    let receive = ControlRequest::Receive(ReceiveRequest {
        session_id: 9,
        group,
        port,
        ssm_source: None,
        max_duration_seconds: 60.0,
    });
    let send = ControlRequest::Send(SendRequest {
        session_id: 9,
        group,
        port,
        rate_pps: 1_000.0,
        packet_size_bytes: 100,
        duration_seconds: 0.5,
        ttl: 4,
    });
    let refused = |answer: ControlResponse, reason: &str| match answer {
        ControlResponse::Error { message } => {
            assert!(message.contains(reason), "{message}");
        }
        other => panic!("expected a refusal ({reason}), got {other:?}"),
    };
    let n1 = nodes.points[0].counters();
    let (source_addr, listener_addr) = (
        nodes.peers[0].endpoint.clone(),
        nodes.peers[2].endpoint.clone(),
    );
    // The service network is reachable from the nodes' namespaces only.
    in_netns(nodes.namespaces[0].name(), move || -> Result<()> {
        // n3 listens with the task's key, so every probe n1 sends reaches a socket there.
        let mut listener = Control::open(&listener_addr)?;
        assert!(matches!(
            listener.request(&task.sign(&receive)?)?,
            ControlResponse::Ready { .. }
        ));
        let mut source = Control::open(&source_addr)?;
        // No proof, then another task's key claiming this task.
        refused(source.request(&send)?, "needs a key proof");
        let mut stolen = match other.sign(&send)? {
            ControlRequest::Signed(signed) => signed,
            _ => unreachable!(),
        };
        stolen.task = "task-b".into();
        refused(
            source.request(&ControlRequest::Signed(stolen))?,
            "does not match",
        );
        // Nothing was sent: n1 started no sender and n3's receiver counted nothing.
        assert_eq!(n1.sends_started.load(Ordering::Relaxed), 0);
        assert_eq!(n1.refused_unauthenticated.load(Ordering::Relaxed), 2);
        let report = match listener.request(&ControlRequest::Stop {
            packets_sent: Some(0),
            drain_seconds: Some(0.5),
        })? {
            ControlResponse::ReceiverReport(report) => report,
            other => bail!("expected a receiver report, got {other:?}"),
        };
        assert_eq!(report.metrics.packets_received, 0, "{report:?}");
        assert_eq!(report.foreign_session_packets + report.malformed_packets, 0);

        // The right key works: the same send, signed, reaches n3.
        let mut listener = Control::open(&listener_addr)?;
        assert!(matches!(
            listener.request(&task.sign(&receive)?)?,
            ControlResponse::Ready { .. }
        ));
        let sender = match source.request(&task.sign(&send)?)? {
            ControlResponse::SenderReport(report) => report,
            other => bail!("expected a sender report, got {other:?}"),
        };
        let sent = sender.packets_sent;
        assert!(sent > 0);
        let report = match listener.request(&ControlRequest::Stop {
            packets_sent: Some(sent),
            drain_seconds: Some(0.5),
        })? {
            ControlResponse::ReceiverReport(report) => report,
            other => bail!("expected a receiver report, got {other:?}"),
        };
        assert_clean(
            "n3",
            sent,
            &sender,
            report.metrics.packets_received,
            report.metrics.loss_ratio.unwrap_or(1.0),
            500,
        );
        assert_eq!(n1.sends_started.load(Ordering::Relaxed), 1);
        assert_eq!(n1.refused_unauthenticated.load(Ordering::Relaxed), 2);
        Ok(())
    })??;
    drop(nodes);
    Ok(())
}
