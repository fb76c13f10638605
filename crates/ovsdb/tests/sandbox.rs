//! The client against a real ovsdb-server (private sandbox). Needs root and
//! openvswitch-switch.

use anyhow::Result;
use measurelab_ovsdb::ops::{self, WaitUntil};
use measurelab_ovsdb::value::{self, parse_string_map, parse_uuid_set};
use measurelab_ovsdb::{MonitorCache, OvsdbClient, OvsdbError};
use measurelab_testbed::OvsSandbox;
use serde_json::json;

const DB: &str = "Open_vSwitch";

/// Insert bridge `name` and link it from the root row, as ovs-vsctl add-br does.
fn add_bridge_ops(name: &str) -> Vec<serde_json::Value> {
    let iface = value::fresh_uuid_name("iface");
    let port = value::fresh_uuid_name("port");
    let bridge = value::fresh_uuid_name("bridge");
    vec![
        ops::insert(
            "Interface",
            json!({"name": name, "type": "internal"}),
            Some(&iface),
        ),
        ops::insert(
            "Port",
            json!({"name": name, "interfaces": value::named_uuid(&iface)}),
            Some(&port),
        ),
        ops::insert(
            "Bridge",
            json!({"name": name, "ports": value::named_uuid(&port), "datapath_type": "netdev",
                   "external_ids": value::string_map([("owner", "ovsdb-test")])}),
            Some(&bridge),
        ),
        ops::mutate(
            "Open_vSwitch",
            vec![],
            vec![ops::mutation_insert(
                "bridges",
                json!(["set", [value::named_uuid(&bridge)]]),
            )],
        ),
    ]
}

#[tokio::test]
async fn transact_inserts_and_selects_through_named_uuids() -> Result<()> {
    let ovs = OvsSandbox::start("ovsdb-tx")?;
    let client = OvsdbClient::connect(&ovs.db_target()).await?;
    assert!(client.list_dbs().await?.contains(&DB.to_string()));
    let schema = client.get_schema(DB).await?;
    assert!(schema.tables.contains_key("QoS"));

    let results = client.transact(DB, add_bridge_ops("br-ovsdbtx")).await?;
    let bridge_uuid = ops::inserted_uuid(&results[2])?;
    // ovs-vswitchd saw a consistent bridge: it is listed by the real CLI.
    assert_eq!(ovs.vsctl(&["list-br"])?, "br-ovsdbtx");

    let results = client
        .transact(
            DB,
            vec![ops::select(
                "Bridge",
                vec![ops::uuid_is(&bridge_uuid)],
                Some(&["name", "ports", "external_ids"]),
            )],
        )
        .await?;
    let rows = ops::selected_rows(&results[0])?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], json!("br-ovsdbtx"));
    assert_eq!(parse_uuid_set(&rows[0]["ports"])?.len(), 1);
    assert_eq!(
        parse_string_map(&rows[0]["external_ids"])?["owner"],
        "ovsdb-test"
    );
    Ok(())
}

#[tokio::test]
async fn failing_ops_and_commits_are_surfaced_and_nothing_is_applied() -> Result<()> {
    let ovs = OvsSandbox::start("ovsdb-err")?;
    let client = OvsdbClient::connect(&ovs.db_target()).await?;

    // Op #1 is a wait that does not hold: the insert at #0 must not commit.
    let err = client
        .transact(
            DB,
            vec![
                ops::insert("Bridge", json!({"name": "br-never"}), None),
                ops::wait(
                    "Bridge",
                    vec![ops::eq("name", json!("br-never"))],
                    &["name"],
                    WaitUntil::Equal,
                    vec![],
                    Some(0),
                ),
            ],
        )
        .await
        .unwrap_err();
    match &err {
        OvsdbError::Operation {
            index: 1,
            op,
            error,
            ..
        } => {
            assert_eq!(
                (op.as_str(), error.as_str()),
                ("wait", "timed out"),
                "{err}"
            );
        }
        other => panic!("expected op #1 error, got {other}"),
    }
    assert!(err.is_retryable());

    // A bad column is an op error at its own index, with the server's details.
    let err = client
        .transact(
            DB,
            vec![
                ops::comment("ok"),
                ops::update("Bridge", vec![], json!({"no_such_column": 1})),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OvsdbError::Operation { index: 1, op, details: Some(d), .. } if op == "update" && d.contains("no_such_column")),
        "{err}"
    );

    // A dangling reference passes every op but fails the commit.
    let err = client
        .transact(
            DB,
            vec![ops::insert(
                "Bridge",
                json!({"name": "br-dangling", "ports": value::uuid("5a0c4a5e-0000-4000-8000-000000000001")}),
                None,
            ),
            ops::mutate("Open_vSwitch", vec![], vec![ops::mutation_insert("bridges", json!(["set", []]))])],
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, OvsdbError::Commit { .. }), "{err}");

    let err = client.transact("No_Such_Db", vec![]).await.unwrap_err();
    assert!(
        matches!(&err, OvsdbError::Rpc { method, error, .. } if method == "transact" && error == "unknown database"),
        "{err}"
    );
    assert_eq!(
        ovs.vsctl(&["list-br"])?,
        "",
        "a failed transaction left a bridge behind"
    );
    Ok(())
}

#[tokio::test]
async fn monitor_cache_follows_changes_made_by_others() -> Result<()> {
    let ovs = OvsSandbox::start("ovsdb-mon")?;
    let client = OvsdbClient::connect(&ovs.db_target()).await?;
    let mut cache =
        MonitorCache::start(&client, DB, &[("Bridge", &["name", "external_ids"])]).await?;
    assert!(cache.table("Bridge").is_empty());

    let before = cache.seqno();
    ovs.add_bridge("br-ovsdbmon")?;
    while !cache
        .table("Bridge")
        .values()
        .any(|row| row["name"] == json!("br-ovsdbmon"))
    {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            cache.wait_newer_than(before),
        )
        .await??;
    }
    // Requests keep working on the same session while updates stream in.
    client.transact(DB, add_bridge_ops("br-ovsdbmon2")).await?;
    ovs.vsctl(&["del-br", "br-ovsdbmon"])?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let names: Vec<_> = cache
            .table("Bridge")
            .values()
            .map(|row| row["name"].clone())
            .collect();
        if names == vec![json!("br-ovsdbmon2")] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache stuck at {names:?}"
        );
        let seen = cache.seqno();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            cache.wait_newer_than(seen),
        )
        .await;
    }
    Ok(())
}

#[tokio::test]
async fn a_vanished_server_fails_requests_instead_of_hanging() -> Result<()> {
    let ovs = OvsSandbox::start("ovsdb-gone")?;
    let client = OvsdbClient::connect(&ovs.db_target()).await?;
    client.echo().await?;
    let target = ovs.db_target();
    drop(ovs);
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), client.list_dbs())
        .await?
        .unwrap_err();
    assert!(matches!(err, OvsdbError::Disconnected(_)), "{err}");
    let err = OvsdbClient::connect(&target).await.unwrap_err();
    assert!(matches!(err, OvsdbError::Connect { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn tcp_session_survives_the_servers_idle_probes() -> Result<()> {
    let ovs = OvsSandbox::start("ovsdb-tcp")?;
    // A free loopback port for an extra TCP remote on the sandbox's server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let status = std::process::Command::new("ovs-appctl")
        .arg("-t")
        .arg(ovs.dir().join("ovsdb-server.ctl"))
        .args(["ovsdb-server/add-remote", &format!("ptcp:{port}:127.0.0.1")])
        .status()?;
    assert!(status.success());
    let target = format!("tcp:127.0.0.1:{port}");
    let client = loop {
        match OvsdbClient::connect(&target).await {
            Ok(client) => break client,
            Err(OvsdbError::Connect { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(other) => return Err(other.into()),
        }
    };
    assert!(client.list_dbs().await?.contains(&DB.to_string()));
    // ovsdb-server probes an idle TCP session after 5 s and drops it if the
    // probe is not answered within another 5 s.
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert!(!client.is_closed(), "the server dropped the idle session");
    assert!(client.list_dbs().await?.contains(&DB.to_string()));
    Ok(())
}
