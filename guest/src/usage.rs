//! Resource use inside the guest, from /proc and statvfs, in the same shape
//! as a node's (`measurelab_api::http::Resources`). Parsers take text so
//! they are tested on fixed input; a file that cannot be read leaves its
//! fields at zero rather than failing the heartbeat.

use std::path::Path;

use measurelab_api::http::Resources;

/// Aggregate CPU jiffies: (busy, total).
pub fn parse_cpu_jiffies(proc_stat: &str) -> Option<(u64, u64, u32)> {
    let mut totals = None;
    let mut cpus = 0u32;
    for line in proc_stat.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
                if values.len() < 4 {
                    return None;
                }
                let total: u64 = values.iter().sum();
                // idle (3) and iowait (4) are not busy time.
                let idle = values[3] + values.get(4).copied().unwrap_or(0);
                totals = Some((total - idle, total));
            }
            Some(label) if label.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    totals.map(|(busy, total)| (busy, total, cpus))
}

/// (total, used) memory in bytes; used = total - MemAvailable.
pub fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total * 1024, total.saturating_sub(available) * 1024))
}

/// (rx, tx) bytes summed over every interface except loopback.
pub fn parse_net_dev(net_dev: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for line in net_dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() >= 9 {
            rx += fields[0];
            tx += fields[8];
        }
    }
    (rx, tx)
}

/// Samples usage; keeps the previous CPU reading for a percentage over the
/// interval between two samples.
#[derive(Debug, Default)]
pub struct UsageSampler {
    previous_cpu: Option<(u64, u64)>,
}

impl UsageSampler {
    /// One sample of the whole guest.
    pub fn sample(&mut self, disk_path: &Path) -> Resources {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut usage = Resources::default();
        if let Some((busy, total, cpus)) = parse_cpu_jiffies(&read("/proc/stat")) {
            usage.cpu_count = cpus;
            if let Some((prev_busy, prev_total)) = self.previous_cpu {
                let d_total = total.saturating_sub(prev_total);
                if d_total > 0 {
                    usage.cpu_used_percent =
                        busy.saturating_sub(prev_busy) as f64 * 100.0 / d_total as f64;
                }
            }
            self.previous_cpu = Some((busy, total));
        }
        if let Some((total, used)) = parse_meminfo(&read("/proc/meminfo")) {
            usage.memory_total_bytes = total;
            usage.memory_used_bytes = used;
        }
        (usage.network_rx_bytes, usage.network_tx_bytes) = parse_net_dev(&read("/proc/net/dev"));
        if let Ok(fs) = nix::sys::statvfs::statvfs(disk_path) {
            let fragment = fs.fragment_size();
            usage.disk_total_bytes = fs.blocks() * fragment;
            usage.disk_used_bytes = fs.blocks().saturating_sub(fs.blocks_free()) * fragment;
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_line_is_parsed() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        assert_eq!(parse_cpu_jiffies(text), Some((150, 1000, 2)));
        assert_eq!(parse_cpu_jiffies("intr 1\n"), None);
    }

    #[test]
    fn meminfo_uses_available() {
        let text = "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     600 kB\n";
        assert_eq!(parse_meminfo(text), Some((1000 * 1024, 400 * 1024)));
    }

    #[test]
    fn net_dev_skips_loopback() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n  eth0: 1200 10 0 0 0 0 0 0 3400 20 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), (1200, 3400));
    }

    #[test]
    fn live_sample_has_memory_and_cpus() {
        let mut sampler = UsageSampler::default();
        let usage = sampler.sample(Path::new("/"));
        assert!(usage.cpu_count >= 1);
        assert!(usage.memory_total_bytes > usage.memory_used_bytes);
    }
}
