//! Guest usage time series (`vm_usage`): what guests report with their
//! heartbeats, downsampled on write to one row per VM per [`SAMPLE_STEP_SECONDS`]
//! and pruned after the retention window (`crate::retention`).
//!
//! A write is one `INSERT ... ON CONFLICT DO NOTHING` on the table's primary key, so a guest
//! heartbeating every second costs one cheap no-op most of the time. Reads
//! aggregate the stored grid to a coarser `step` and derive network rates
//! from the counters.

use crate::store::sql::{params, Connection};
use measurelab_api::http::VmUsageSample;
use measurelab_api::node_v1::ResourceUsage;
use time::OffsetDateTime;

use super::codec::rfc3339;
use super::error::StoreError;

/// The stored grid: the first sample of each VM in each such step is kept.
pub(crate) const SAMPLE_STEP_SECONDS: i64 = 10;

/// A row of `vm_usage`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredSample {
    pub bucket: i64,
    pub sampled_ms: i64,
    pub cpu_count: u32,
    pub cpu_percent: f64,
    pub memory_total: u64,
    pub memory_used: u64,
    pub disk_total: u64,
    pub disk_used: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

fn db_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Keep `usage`, sampled at `sampled_ms`, unless the VM already has a sample
/// in that step. A guest's numbers are not trusted to be sane (it runs the
/// tenant's code): a CPU figure that is not a number is dropped, one out of
/// 0..=100 is clamped, rather than failing the node's whole report.
pub(crate) fn record(
    conn: &Connection,
    vm_id: &str,
    sampled_ms: i64,
    usage: &ResourceUsage,
) -> Result<bool, StoreError> {
    if !usage.cpu_used_percent.is_finite() || sampled_ms < 0 {
        return Ok(false);
    }
    let bucket = (sampled_ms / 1000) / SAMPLE_STEP_SECONDS * SAMPLE_STEP_SECONDS;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO vm_usage (vm_id, bucket, sampled_ms, cpu_count, cpu_percent,
                memory_total, memory_used, disk_total, disk_used, rx_bytes, tx_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (vm_id, bucket) DO NOTHING",
        )?
        .execute(params![
            vm_id,
            bucket,
            sampled_ms,
            usage.cpu_count,
            usage.cpu_used_percent.clamp(0.0, 100.0),
            db_int(usage.memory_total_bytes),
            db_int(usage.memory_used_bytes),
            db_int(usage.disk_total_bytes),
            db_int(usage.disk_used_bytes),
            db_int(usage.network_rx_bytes),
            db_int(usage.network_tx_bytes),
        ])?;
    Ok(inserted == 1)
}

/// Samples of `vm_id` whose step starts in `[since, until)` (Unix seconds),
/// oldest first.
pub(crate) fn samples(
    conn: &Connection,
    vm_id: &str,
    since: i64,
    until: i64,
) -> Result<Vec<StoredSample>, StoreError> {
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(conn
        .prepare_cached(
            "SELECT bucket, sampled_ms, cpu_count, cpu_percent, memory_total, memory_used,
                    disk_total, disk_used, rx_bytes, tx_bytes
             FROM vm_usage WHERE vm_id = ?1 AND bucket >= ?2 AND bucket < ?3
             ORDER BY bucket",
        )?
        .query_map(params![vm_id, since, until], |r| {
            Ok(StoredSample {
                bucket: r.get(0)?,
                sampled_ms: r.get(1)?,
                cpu_count: r.get(2)?,
                cpu_percent: r.get(3)?,
                memory_total: unsigned(r.get(4)?),
                memory_used: unsigned(r.get(5)?),
                disk_total: unsigned(r.get(6)?),
                disk_used: unsigned(r.get(7)?),
                rx_bytes: unsigned(r.get(8)?),
                tx_bytes: unsigned(r.get(9)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
}

/// Remove every sample whose step started before `cutoff` (Unix seconds).
/// Delete up to `limit` samples of steps that started before `cutoff`
/// (Unix seconds), oldest first; returns how many went.
pub(crate) fn prune(conn: &Connection, cutoff: i64, limit: usize) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM vm_usage WHERE (vm_id, bucket) IN
                 (SELECT vm_id, bucket FROM vm_usage WHERE bucket < ?1 ORDER BY bucket LIMIT ?2)",
        )?
        .execute(crate::store::sql::params![cutoff, limit as i64])?)
}

/// Every sample of a VM (the VM is gone).
pub(crate) fn forget(conn: &Connection, vm_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM vm_usage WHERE vm_id = ?1")?
        .execute([vm_id])?;
    Ok(())
}

/// `rows` (oldest first) on a grid of `step` seconds: per step the mean CPU
/// and the last memory, disk and counters. Rates compare a step's counters
/// with the previous step's; they are absent for the first step and after a
/// counter went backwards (the guest restarted).
pub(crate) fn downsample(rows: &[StoredSample], step: i64) -> Vec<VmUsageSample> {
    let step = step.max(SAMPLE_STEP_SECONDS);
    let mut out: Vec<VmUsageSample> = Vec::new();
    let mut previous: Option<&StoredSample> = None;
    let mut start = 0;
    while start < rows.len() {
        let slot = rows[start].bucket.div_euclid(step);
        let end = rows[start..]
            .iter()
            .position(|r| r.bucket.div_euclid(step) != slot)
            .map_or(rows.len(), |n| start + n);
        let group = &rows[start..end];
        let last = &group[group.len() - 1];
        let cpu = group.iter().map(|r| r.cpu_percent).sum::<f64>() / group.len() as f64;
        let rate = |now: u64, then: u64, seconds: f64| {
            (now >= then && seconds > 0.0).then(|| (now - then) as f64 / seconds)
        };
        let (rx_rate, tx_rate) = match previous {
            Some(p) => {
                let seconds = (last.sampled_ms - p.sampled_ms) as f64 / 1000.0;
                (
                    rate(last.rx_bytes, p.rx_bytes, seconds),
                    rate(last.tx_bytes, p.tx_bytes, seconds),
                )
            }
            None => (None, None),
        };
        let time = OffsetDateTime::from_unix_timestamp(slot * step)
            .map(rfc3339)
            .unwrap_or_default();
        out.push(VmUsageSample {
            time,
            cpu_count: last.cpu_count,
            cpu_used_percent: cpu,
            memory_total_bytes: last.memory_total,
            memory_used_bytes: last.memory_used,
            disk_total_bytes: last.disk_total,
            disk_used_bytes: last.disk_used,
            network_rx_bytes: last.rx_bytes,
            network_tx_bytes: last.tx_bytes,
            network_rx_bytes_per_second: rx_rate,
            network_tx_bytes_per_second: tx_rate,
        });
        previous = Some(last);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::database::Location;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Location::for_test(dir.path()).open_primary().unwrap();
        (dir, conn)
    }

    fn usage(cpu: f64, rx: u64) -> ResourceUsage {
        ResourceUsage {
            cpu_count: 2,
            cpu_used_percent: cpu,
            memory_total_bytes: 64 << 20,
            memory_used_bytes: 10 << 20,
            network_rx_bytes: rx,
            network_tx_bytes: rx / 2,
            ..Default::default()
        }
    }

    fn buckets(conn: &Connection, vm: &str) -> Vec<i64> {
        samples(conn, vm, 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.bucket)
            .collect()
    }

    #[test]
    fn one_row_per_vm_per_step() {
        let (_dir, conn) = database();
        let t0 = 1_800_000_000_000; // ms, on a 10 s boundary
        assert!(record(&conn, "vm1", t0, &usage(10.0, 0)).unwrap());
        assert!(!record(&conn, "vm1", t0 + 1_000, &usage(20.0, 0)).unwrap());
        assert!(!record(&conn, "vm1", t0 + 9_999, &usage(30.0, 0)).unwrap());
        assert!(record(&conn, "vm1", t0 + 10_000, &usage(40.0, 0)).unwrap());
        assert!(record(&conn, "vm2", t0 + 1_000, &usage(50.0, 0)).unwrap());
        assert_eq!(buckets(&conn, "vm1"), vec![1_800_000_000, 1_800_000_010]);
        let kept = samples(&conn, "vm1", 0, i64::MAX).unwrap();
        assert_eq!(kept[0].cpu_percent, 10.0, "the first sample of a step wins");
        assert_eq!(buckets(&conn, "vm2"), vec![1_800_000_000]);
    }

    #[test]
    fn insane_cpu_figures_are_dropped_or_clamped() {
        let (_dir, conn) = database();
        assert!(!record(&conn, "vm1", 1_000_000, &usage(f64::NAN, 0)).unwrap());
        assert!(record(&conn, "vm1", 1_000_000, &usage(250.0, 0)).unwrap());
        assert_eq!(
            samples(&conn, "vm1", 0, i64::MAX).unwrap()[0].cpu_percent,
            100.0
        );
    }

    #[test]
    fn prune_removes_only_rows_older_than_the_cutoff() {
        let (_dir, conn) = database();
        let day = 86_400;
        let now = 1_800_000_000;
        for (vm, age) in [
            ("vm1", 2 * day),
            ("vm1", day + 10),
            ("vm1", 60),
            ("vm2", day + 1),
        ] {
            record(&conn, vm, (now - age) * 1000, &usage(1.0, 0)).unwrap();
        }
        record(&conn, "vm2", now * 1000, &usage(1.0, 0)).unwrap();
        let cutoff = now - day;
        assert_eq!(prune(&conn, cutoff, 2).unwrap(), 2, "at most the limit");
        assert_eq!(prune(&conn, cutoff, 100).unwrap(), 1);
        assert_eq!(buckets(&conn, "vm1"), vec![now - 60]);
        assert_eq!(buckets(&conn, "vm2"), vec![now]);
        assert_eq!(prune(&conn, cutoff, 100).unwrap(), 0);
    }

    #[test]
    fn forget_drops_one_vm() {
        let (_dir, conn) = database();
        record(&conn, "vm1", 1_000_000, &usage(1.0, 0)).unwrap();
        record(&conn, "vm2", 1_000_000, &usage(1.0, 0)).unwrap();
        forget(&conn, "vm1").unwrap();
        assert!(buckets(&conn, "vm1").is_empty());
        assert_eq!(buckets(&conn, "vm2").len(), 1);
    }

    fn stored(bucket: i64, cpu: f64, rx: u64) -> StoredSample {
        StoredSample {
            bucket,
            sampled_ms: bucket * 1000,
            cpu_count: 1,
            cpu_percent: cpu,
            memory_total: 100,
            memory_used: bucket as u64,
            disk_total: 0,
            disk_used: 0,
            rx_bytes: rx,
            tx_bytes: 0,
        }
    }

    #[test]
    fn downsampling_averages_cpu_keeps_the_last_gauge_and_derives_rates() {
        let rows = [
            stored(0, 10.0, 0),
            stored(10, 30.0, 1_000),
            stored(20, 50.0, 3_000),
            stored(30, 70.0, 9_000),
            stored(40, 0.0, 100), // counter reset: the guest restarted
        ];
        let same = downsample(&rows, 10);
        assert_eq!(same.len(), 5);
        assert_eq!(same[0].network_rx_bytes_per_second, None);
        assert_eq!(same[1].network_rx_bytes_per_second, Some(100.0));
        assert_eq!(same[3].network_rx_bytes_per_second, Some(600.0));
        assert_eq!(same[4].network_rx_bytes_per_second, None);

        let coarse = downsample(&rows, 20);
        assert_eq!(coarse.len(), 3);
        assert_eq!(coarse[0].time, "1970-01-01T00:00:00Z");
        assert_eq!(coarse[0].cpu_used_percent, 20.0);
        assert_eq!(coarse[0].memory_used_bytes, 10);
        assert_eq!(coarse[1].cpu_used_percent, 60.0);
        // (9000 - 1000) bytes between the last samples of the two steps, 20 s apart.
        assert_eq!(coarse[1].network_rx_bytes_per_second, Some(400.0));
        assert_eq!(coarse[2].network_rx_bytes_per_second, None);
    }

    #[test]
    fn a_step_finer_than_the_grid_is_the_grid() {
        let rows = [stored(0, 10.0, 0), stored(10, 30.0, 10)];
        assert_eq!(downsample(&rows, 1).len(), 2);
    }
}
