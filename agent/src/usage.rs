//! The paper's "information module": resource use sampled from /proc and
//! statvfs. Parsing is separated from reading so it can be tested on fixed
//! text.

use std::path::Path;

use measurelab_api::node_v1::ResourceUsage;

/// Errors while sampling resource use.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A /proc file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("cannot parse {path}: {reason}")]
    Parse {
        /// File that failed.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// statvfs of the state directory failed.
    #[error("statvfs {path}: {source}")]
    Statvfs {
        /// Path given to statvfs.
        path: String,
        /// Errno.
        source: nix::Error,
    },
}

/// Cumulative CPU jiffies from the aggregate `cpu` line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    /// Jiffies spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All jiffies.
    pub total: u64,
}

/// A /proc/stat sample: aggregate times plus the number of per-CPU lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSample {
    /// Aggregate times.
    pub times: CpuTimes,
    /// Number of `cpuN` lines.
    pub cpu_count: u32,
}

/// Parse /proc/stat text.
pub fn parse_proc_stat(text: &str) -> Result<CpuSample, UsageError> {
    let parse_err = |reason: String| UsageError::Parse {
        path: "/proc/stat".into(),
        reason,
    };
    let mut times = None;
    let mut cpu_count = 0u32;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(label) = fields.next() else { continue };
        if label == "cpu" {
            let values: Vec<u64> = fields
                .map(|f| f.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|e| parse_err(format!("cpu line has a non-numeric field: {e}")))?;
            // user nice system idle iowait irq softirq steal [guest guest_nice]:
            // guest time is already counted in user/nice, so it is left out of
            // the total to avoid counting it twice.
            if values.len() < 4 {
                return Err(parse_err(format!(
                    "cpu line has {} fields, expected at least 4",
                    values.len()
                )));
            }
            let counted = &values[..values.len().min(8)];
            let total: u64 = counted.iter().sum();
            let idle = values[3] + values.get(4).copied().unwrap_or(0);
            times = Some(CpuTimes {
                busy: total.saturating_sub(idle),
                total,
            });
        } else if label.len() > 3
            && label.starts_with("cpu")
            && label[3..].bytes().all(|b| b.is_ascii_digit())
        {
            cpu_count += 1;
        }
    }
    let times = times.ok_or_else(|| parse_err("no aggregate cpu line".into()))?;
    Ok(CpuSample { times, cpu_count })
}

/// CPU use in percent between two samples; 0 when no time passed.
pub fn cpu_percent(previous: CpuTimes, current: CpuTimes) -> f64 {
    let total = current.total.saturating_sub(previous.total);
    if total == 0 {
        return 0.0;
    }
    let busy = current.busy.saturating_sub(previous.busy);
    (busy as f64 * 100.0 / total as f64).clamp(0.0, 100.0)
}

/// Memory totals in bytes: (total, used), where used = MemTotal - MemAvailable.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64), UsageError> {
    let field = |name: &str| -> Result<u64, UsageError> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| UsageError::Parse {
                path: "/proc/meminfo".into(),
                reason: format!("no {name} line"),
            })?;
        let value = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| UsageError::Parse {
                path: "/proc/meminfo".into(),
                reason: format!("{name} has no numeric value"),
            })?;
        // /proc/meminfo reports kB (KiB).
        Ok(value * 1024)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    Ok((total, total.saturating_sub(available)))
}

/// Bytes received and sent on all interfaces except loopback: (rx, tx).
pub fn parse_net_dev(text: &str) -> Result<(u64, u64), UsageError> {
    let mut rx = 0u64;
    let mut tx = 0u64;
    // The first two lines are headers.
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let values: Vec<&str> = counters.split_whitespace().collect();
        let get = |i: usize| -> Result<u64, UsageError> {
            values
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| UsageError::Parse {
                    path: "/proc/net/dev".into(),
                    reason: format!("interface {} has no counter #{i}", name.trim()),
                })
        };
        rx = rx.saturating_add(get(0)?);
        tx = tx.saturating_add(get(8)?);
    }
    Ok((rx, tx))
}

fn read(path: &str) -> Result<String, UsageError> {
    std::fs::read_to_string(path).map_err(|source| UsageError::Read {
        path: path.into(),
        source,
    })
}

/// Samples resource use; remembers the previous CPU sample so each call
/// reports use since the last one.
#[derive(Debug, Default)]
pub struct UsageSampler {
    previous_cpu: Option<CpuTimes>,
}

impl UsageSampler {
    /// A sampler with no history; its first CPU figure covers time since boot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take a sample. `state_dir` is the filesystem reported as disk.
    pub fn sample(&mut self, state_dir: &Path) -> Result<ResourceUsage, UsageError> {
        let cpu = parse_proc_stat(&read("/proc/stat")?)?;
        let previous = self.previous_cpu.unwrap_or_default();
        let cpu_used_percent = cpu_percent(previous, cpu.times);
        self.previous_cpu = Some(cpu.times);
        let (memory_total_bytes, memory_used_bytes) = parse_meminfo(&read("/proc/meminfo")?)?;
        let (network_rx_bytes, network_tx_bytes) = parse_net_dev(&read("/proc/net/dev")?)?;
        let fs = nix::sys::statvfs::statvfs(state_dir).map_err(|source| UsageError::Statvfs {
            path: state_dir.display().to_string(),
            source,
        })?;
        let fragment = fs.fragment_size() as u64;
        let disk_total_bytes = fs.blocks() as u64 * fragment;
        let disk_used_bytes =
            (fs.blocks() as u64).saturating_sub(fs.blocks_free() as u64) * fragment;
        Ok(ResourceUsage {
            cpu_count: cpu.cpu_count,
            cpu_used_percent,
            memory_total_bytes,
            memory_used_bytes,
            disk_total_bytes,
            disk_used_bytes,
            network_rx_bytes,
            network_tx_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 0 7 0\n\
cpu0 50 2 25 400 10 1 1 0 3 0\n\
cpu1 50 3 25 400 10 2 1 0 4 0\n\
intr 12345 0 0\n\
ctxt 999\n";

    #[test]
    fn proc_stat_counts_cpus_and_excludes_idle_and_guest() {
        let sample = parse_proc_stat(STAT).unwrap();
        assert_eq!(sample.cpu_count, 2);
        // total = 100+5+50+800+20+3+2+0 (guest excluded) = 980; idle+iowait = 820.
        assert_eq!(
            sample.times,
            CpuTimes {
                busy: 160,
                total: 980
            }
        );
    }

    #[test]
    fn proc_stat_without_cpu_line_is_an_error() {
        let err = parse_proc_stat("intr 1\n").unwrap_err();
        assert!(err.to_string().contains("no aggregate cpu line"), "{err}");
        let err = parse_proc_stat("cpu 1 x 3 4\n").unwrap_err();
        assert!(err.to_string().contains("non-numeric"), "{err}");
    }

    #[test]
    fn cpu_percent_is_the_busy_share_of_the_delta() {
        let a = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 150,
            total: 1200,
        };
        assert!((cpu_percent(a, b) - 25.0).abs() < 1e-9);
        assert_eq!(cpu_percent(b, b), 0.0);
        // A counter that went backwards (should not happen) never gives junk.
        assert_eq!(cpu_percent(b, a), 0.0);
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(parse_meminfo(text).unwrap(), (1000 * 1024, 600 * 1024));
        let err = parse_meminfo("MemTotal: 1000 kB\n").unwrap_err();
        assert!(err.to_string().contains("MemAvailable"), "{err}");
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0\n  \
eth0: 1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0\n\
mgmt0:  300       3    0    0    0     0          0         0      400       4    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text).unwrap(), (1300, 2400));
        let err = parse_net_dev("h\nh\neth0: 1 2 3\n").unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn sampler_reads_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = UsageSampler::new();
        let first = sampler.sample(dir.path()).unwrap();
        assert!(first.cpu_count >= 1);
        assert!(first.memory_total_bytes > first.memory_used_bytes);
        assert!(first.disk_total_bytes >= first.disk_used_bytes && first.disk_total_bytes > 0);
        let second = sampler.sample(dir.path()).unwrap();
        assert!((0.0..=100.0).contains(&second.cpu_used_percent));
    }
}
