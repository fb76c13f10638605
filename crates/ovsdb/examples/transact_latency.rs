//! Prints OVSDB round-trip figures against a private sandbox (needs root and
//! openvswitch-switch): `cargo run -p measurelab-ovsdb --example transact_latency [N]`.
//! Timing lives here, not in tests, because the build machine is shared and noisy.

use std::time::{Duration, Instant};

use anyhow::Result;
use measurelab_ovsdb::ops;
use measurelab_ovsdb::value;
use measurelab_ovsdb::{MonitorCache, OvsdbClient};
use measurelab_testbed::OvsSandbox;
use serde_json::json;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<34} n={:<5} p50={:>8.3} ms  p95={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.95).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let ovs = OvsSandbox::start("bench")?;
    let client = OvsdbClient::connect(&ovs.db_target()).await?;

    let mut selects = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client
            .transact(
                "Open_vSwitch",
                vec![ops::select(
                    "Open_vSwitch",
                    vec![],
                    Some(&["datapath_types"]),
                )],
            )
            .await?;
        selects.push(start.elapsed());
    }
    summary("select Open_vSwitch", selects);

    // Insert then delete a QoS row (a root table, so no bridge is involved and
    // ovs-vswitchd has nothing to apply).
    let mut writes = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let ids = value::string_map([("bench", "1")]);
        let result = client
            .transact(
                "Open_vSwitch",
                vec![ops::insert(
                    "QoS",
                    json!({"type": "linux-htb", "external_ids": ids}),
                    None,
                )],
            )
            .await?;
        let uuid = ops::inserted_uuid(&result[0])?;
        client
            .transact(
                "Open_vSwitch",
                vec![ops::delete("QoS", vec![ops::uuid_is(&uuid)])],
            )
            .await?;
        writes.push(start.elapsed());
    }
    summary("insert+delete QoS (2 transacts)", writes);

    // How long until a monitor cache on a second connection sees a write.
    let watcher = OvsdbClient::connect(&ovs.db_target()).await?;
    let mut cache =
        MonitorCache::start(&watcher, "Open_vSwitch", &[("QoS", &["external_ids"])]).await?;
    let mut visible = Vec::with_capacity(n);
    for _ in 0..n {
        let before = cache.seqno();
        let start = Instant::now();
        let result = client
            .transact(
                "Open_vSwitch",
                vec![ops::insert("QoS", json!({"type": "linux-htb"}), None)],
            )
            .await?;
        cache.wait_newer_than(before).await?;
        visible.push(start.elapsed());
        let uuid = ops::inserted_uuid(&result[0])?;
        let before = cache.seqno();
        client
            .transact(
                "Open_vSwitch",
                vec![ops::delete("QoS", vec![ops::uuid_is(&uuid)])],
            )
            .await?;
        cache.wait_newer_than(before).await?;
    }
    summary("write visible in another's cache", visible);
    Ok(())
}
