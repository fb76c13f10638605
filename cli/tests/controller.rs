//! `measurelab controller` as a process: port 0 via http.addr, SIGTERM as a
//! clean shutdown. Loopback only; no root needed.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_measurelab");

fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn port_zero_is_published_in_http_addr_and_sigterm_stops_cleanly() {
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
        .args(["--heartbeat-interval-seconds", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr_file = data.path().join("http.addr");
    let start = Instant::now();
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            if get(addr.trim(), "/healthz").is_some_and(|r| r.contains(" 200 ")) {
                break addr.trim().to_string();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "controller did not answer on the address in http.addr"
        );
        assert!(child.try_wait().unwrap().is_none(), "controller exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!addr.ends_with(":0"), "{addr}");
    // The public API wants the admin token the controller created.
    let unauthorized = get(&addr, "/v1/nodes").unwrap();
    assert!(unauthorized.contains(" 401 "), "{unauthorized}");
    assert!(data.path().join("admin.token").exists());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "controller ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "exit {exit}: {stderr}");
    assert!(stderr.contains("shutdown requested"), "{stderr}");
}

#[test]
fn unknown_grpc_netns_is_an_error_naming_the_flag() {
    let stderr = controller_refusal(&["--grpc-netns", "no-such-namespace-here"]);
    assert!(stderr.contains("--grpc-netns"), "{stderr}");
}

/// `measurelab controller` on `data`, HTTP on a free loopback port
/// (published in http.addr), gRPC on `grpc_listen`.
fn controller_command(data: &std::path::Path, grpc_listen: &str) -> Command {
    let mut command = Command::new(BIN);
    command.args(["controller", "--data-dir"]).arg(data).args([
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        grpc_listen,
    ]);
    command
}

/// The stderr of a controller that must refuse to start with `flags`.
fn controller_refusal(flags: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = controller_command(data.path(), "127.0.0.1:0")
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{flags:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_address_pools_are_refused_naming_the_flag_and_the_reason() {
    let stderr = controller_refusal(&["--subnet-pool", "10.77.0.1/16"]);
    assert!(stderr.contains("--subnet-pool"), "{stderr}");
    assert!(stderr.contains("host bits are set"), "{stderr}");
    let stderr = controller_refusal(&["--tunnel-pool", "100.96.0.0/25"]);
    assert!(stderr.contains("--tunnel-pool"), "{stderr}");
    assert!(stderr.contains("prefix must be 8 to 24"), "{stderr}");
    let stderr = controller_refusal(&["--vlan-pool", "3000-5000"]);
    assert!(stderr.contains("--vlan-pool"), "{stderr}");
    assert!(stderr.contains("<= 4094"), "{stderr}");
    // Each value is fine alone; together a gateway's tunnel addresses
    // would fall inside platform subnets (default tunnel pool 100.96.0.0/12).
    let stderr = controller_refusal(&["--subnet-pool", "100.100.0.0/16"]);
    assert!(
        stderr.contains("subnet pool 100.100.0.0/16 and tunnel pool 100.96.0.0/12 overlap"),
        "{stderr}"
    );
}

/// The pools an operator sets are the ones platforms draw from: a node
/// registers, a platform gets the only tag and the first /24 of the given
/// pools, and the next platform finds the one-tag pool exhausted.
#[test]
fn platforms_draw_from_the_pools_set_on_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let join_token_file = data.path().join("join-token");
    std::fs::write(&join_token_file, "pools-join-secret").unwrap();
    // The controller publishes only its HTTP address; the gRPC one is picked
    // here (a port the kernel just handed out and nothing else binds).
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let join_token_file = join_token_file.to_str().unwrap();
    let (mut child, http, admin) = start_controller(
        data.path(),
        &grpc.to_string(),
        &[
            "--join-token-file",
            join_token_file,
            "--vlan-pool",
            "3000-3000",
            "--subnet-pool",
            "10.77.0.0/16",
            "--tunnel-pool",
            "100.64.0.0/16",
        ],
        &[],
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use measurelab_api::node_v1::node_service_client::NodeServiceClient;
        let mut node = NodeServiceClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC listener");
        node.register(measurelab_api::node_v1::RegisterRequest {
            join_token: "pools-join-secret".into(),
            name: "n1".into(),
            agent_version: "test-1".into(),
            capabilities: Some(measurelab_api::node_v1::Capabilities {
                namespace_backend: true,
                ..Default::default()
            }),
            management_address: "10.254.0.11".into(),
            ..Default::default()
        })
        .await
        .expect("register n1");
    });
    let client =
        measurelab_api::client::Client::new(&format!("http://{http}"), &admin, None).unwrap();
    let platform = |name: &str| measurelab_api::http::PlatformCreate {
        tenant: None,
        name: name.into(),
        nodes: vec!["n1".into()],
        admins: vec![],
        description: None,
        request_id: None,
        flow_monitoring: None,
        gateway: None,
    };
    let first = runtime
        .block_on(client.create_platform(&platform("pools-a")))
        .expect("first platform");
    assert_eq!(first.vlan_tag, 3000);
    assert_eq!(first.subnet, "10.77.0.0/24");
    let exhausted = runtime
        .block_on(client.create_platform(&platform("pools-b")))
        .expect_err("a second platform has no tag left")
        .to_string();
    assert!(exhausted.contains("3000-3000"), "{exhausted}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_store_neither_sqlite_nor_postgres_is_refused_naming_the_flag() {
    let stderr = controller_refusal(&["--store", "mysql://db.example/measurelab"]);
    assert!(stderr.contains("--store"), "{stderr}");
}

/// A flow root that cannot be created (under a file) stops the start,
/// before any store is opened, with the flag and the reason; so does one
/// taken from MEASURELAB_FLOW_DIR.
#[test]
fn an_unusable_flow_dir_is_refused_naming_the_flag_and_the_reason() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = file.path().join("flows");
    let stderr = controller_refusal(&["--flow-dir", under_a_file.to_str().unwrap()]);
    assert!(stderr.contains("--flow-dir"), "{stderr}");
    assert!(stderr.contains("cannot create it"), "{stderr}");
    let data = tempfile::tempdir().unwrap();
    let out = controller_command(data.path(), "127.0.0.1:0")
        .env("MEASURELAB_FLOW_DIR", "/srv/flows:2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a colon was accepted");
    assert!(
        stderr.contains("--flow-dir /srv/flows:2: must not contain ':'"),
        "{stderr}"
    );
    assert!(
        !data.path().join("controller.db").exists(),
        "the store was opened before the flow root was checked"
    );
}

/// --flow-retention-hours reaches the prune the controller runs at start:
/// with 2 hours, a closed file of 3 hours ago goes (the default week would
/// keep it) and one of this minute stays. 0, from the flag or from
/// MEASURELAB_FLOW_RETENTION_HOURS, is refused naming the flag.
#[test]
fn the_flow_retention_reaches_the_prune_and_zero_is_refused() {
    let stderr = controller_refusal(&["--flow-retention-hours", "0"]);
    assert!(stderr.contains("--flow-retention-hours"), "{stderr}");
    let data = tempfile::tempdir().unwrap();
    let out = controller_command(data.path(), "127.0.0.1:0")
        .env("MEASURELAB_FLOW_RETENTION_HOURS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a retention of 0 hours was accepted");
    assert!(stderr.contains("--flow-retention-hours"), "{stderr}");

    let data = tempfile::tempdir().unwrap();
    let flows = data.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    let named = |at: time::OffsetDateTime| {
        let format = time::macros::format_description!("nfcapd.[year][month][day][hour][minute]");
        flows.join(at.format(format).unwrap())
    };
    let now = time::OffsetDateTime::now_utc();
    let old = named(now - time::Duration::hours(3));
    let recent = named(now);
    for file in [&old, &recent] {
        std::fs::write(file, b"x").unwrap();
    }
    let (mut child, _, _) = start_controller(
        data.path(),
        "127.0.0.1:0",
        &["--flow-retention-hours", "2"],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived a 2-hour retention",
            old.display()
        );
        assert!(child.try_wait().unwrap().is_none(), "controller exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(recent.exists(), "{} was pruned", recent.display());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_upload_cap_of_zero_is_refused_naming_the_flag() {
    let stderr = controller_refusal(&["--max-concurrent-uploads", "0"]);
    assert!(
        stderr.contains("invalid value '0' for '--max-concurrent-uploads"),
        "{stderr}"
    );
    let data = tempfile::tempdir().unwrap();
    let out = controller_command(data.path(), "127.0.0.1:0")
        .env("MEASURELAB_MAX_CONCURRENT_UPLOADS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an upload cap of 0 was accepted");
    assert!(stderr.contains("--max-concurrent-uploads"), "{stderr}");
}

/// FetchProgram answers carry whole programs: a response cap of 0 would
/// refuse every one, and one under 1 KiB every program of any use.
#[test]
fn a_grpc_response_cap_of_zero_is_refused_naming_the_flag() {
    for value in ["0", "1023"] {
        let stderr = controller_refusal(&["--grpc-max-response-message-bytes", value]);
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--grpc-max-response-message-bytes"
            )),
            "{stderr}"
        );
    }
}

/// Rows written into a stopped controller's SQLite database with the
/// sqlite3 shell, behind the API's back.
fn sqlite(data: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(data.join("controller.db"))
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn event_and_result_retention_reach_the_prune_and_zero_is_refused() {
    for flag in ["--retain-events-days", "--retain-results-days"] {
        let stderr = controller_refusal(&[flag, "0"]);
        assert!(stderr.contains(flag), "{stderr}");
    }

    // A controller's schema, then an old and a recent event and result.
    let data = tempfile::tempdir().unwrap();
    let (mut child, _, _) = start_controller(data.path(), "127.0.0.1:0", &[], &[]);
    let _ = child.kill();
    let _ = child.wait();
    let now = time::OffsetDateTime::now_utc();
    let mut seed = String::new();
    for (name, at) in [("old", now - time::Duration::days(3)), ("recent", now)] {
        let text = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        seed.push_str(&format!(
            "INSERT INTO events (time, reason, object_kind, object_id, message)
                 VALUES ('{text}', 'Seeded', 'node', 'n', '{name}');
             INSERT INTO results (id, task_id, task_name, received_at, started_at, started_ms,
                                  document, run_id)
                 VALUES ('{name}', 't', 'seeded', '{text}', '{text}', {ms}, '{{}}', '{name}');"
        ));
    }
    sqlite(data.path(), &seed);

    // Two days each: the three-day-old rows go at start, the recent stay.
    let (mut child, _, _) = start_controller(
        data.path(),
        "127.0.0.1:0",
        &["--retain-events-days", "2", "--retain-results-days", "2"],
        &[],
    );
    let kept = || {
        sqlite(
            data.path(),
            "SELECT message FROM events WHERE reason = 'Seeded'
             UNION ALL SELECT 'result ' || id FROM results ORDER BY 1",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while kept() != "recent\nresult recent\n" {
        assert!(
            Instant::now() < deadline,
            "after a 2-day retention: {:?}",
            kept()
        );
        assert!(child.try_wait().unwrap().is_none(), "controller exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_advertise_url_is_refused_naming_the_flag_and_the_reason() {
    let stderr = controller_refusal(&["--advertise-url", "ftp://ctl-2:7070"]);
    assert!(stderr.contains("--advertise-url"), "{stderr}");
    assert!(stderr.contains("http:// or https://"), "{stderr}");
    let stderr = controller_refusal(&["--advertise-url", "https://ctl-2:7070/v1"]);
    assert!(stderr.contains("no path"), "{stderr}");
    // Without --tls the others would speak TLS to a plaintext listener.
    let stderr = controller_refusal(&["--advertise-url", "https://ctl-2:7070"]);
    assert!(stderr.contains("--advertise-url"), "{stderr}");
    assert!(stderr.contains("must start with http://"), "{stderr}");
}

/// A controller started and answering on `data`'s http.addr with its admin
/// token, given `flags` and `env`.
fn start_controller(
    data: &std::path::Path,
    grpc_listen: &str,
    flags: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, String) {
    let mut child = controller_command(data, grpc_listen)
        .args(flags)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr = std::fs::read_to_string(data.join("http.addr")).unwrap_or_default();
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap_or_default();
        if !token.trim().is_empty()
            && get(addr.trim(), "/healthz").is_some_and(|r| r.contains(" 200 "))
        {
            return (child, addr.trim().to_string(), token.trim().to_string());
        }
        assert!(Instant::now() < deadline, "controller did not come up");
        assert!(child.try_wait().unwrap().is_none(), "controller exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two controllers given one PostgreSQL database (`--store`, and
/// MEASURELAB_STORE for the second) keep their tables there, not in their
/// data dirs, and see each other's writes.
#[test]
fn controllers_on_one_postgres_store_share_its_tables() {
    let db = measurelab_testbed::pg::database().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, a_http, a_admin) =
        start_controller(a_dir.path(), "127.0.0.1:0", &["--store", db.url()], &[]);
    let (mut b, b_http, b_admin) = start_controller(
        b_dir.path(),
        "127.0.0.1:0",
        &[],
        &[("MEASURELAB_STORE", db.url())],
    );
    for dir in [&a_dir, &b_dir] {
        assert!(!dir.path().join("controller.db").exists());
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = |http: &str, admin: &str| {
        measurelab_api::client::Client::new(&format!("http://{http}"), admin, None).unwrap()
    };
    let created = runtime
        .block_on(
            client(&a_http, &a_admin).create_tenant(&measurelab_api::http::TenantCreate {
                name: "shared-store".into(),
                description: None,
                quota: None,
                request_id: None,
            }),
        )
        .expect("tenant created through A");
    let seen = runtime
        .block_on(client(&b_http, &b_admin).list_tenants())
        .expect("tenants listed through B");
    assert!(
        seen.iter().any(|t| t.id == created.id),
        "B does not see A's tenant: {seen:?}"
    );
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
