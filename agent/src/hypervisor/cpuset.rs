//! CPU sets of namespace guests: which host CPUs a guest with N vCPUs may
//! run on. `cpu.max` alone caps the guest's CPU time but leaves every host
//! CPU visible, so `nproc` and thread pools inside the guest would size
//! themselves for the host; a cpuset of N CPUs makes the guest see N.

use uuid::Uuid;

/// Parses a kernel CPU list (`0-3,8,10-11`) into CPU numbers, ascending.
/// `None` if the text is not a CPU list.
pub(crate) fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (u32, u32) = (first.parse().ok()?, last.parse().ok()?);
                if first > last {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// The CPUs of `available` a guest with `vcpus` vCPUs gets: `vcpus` of
/// them (all when there are fewer), consecutive in `available` order and
/// starting at an offset taken from the VM id, so single-vCPU guests spread
/// over the host instead of all sharing its first CPU. Stable for one id.
pub(crate) fn guest_cpus(available: &[u32], vcpus: u32, id: Uuid) -> Vec<u32> {
    if available.is_empty() {
        return Vec::new();
    }
    let count = (vcpus as usize).clamp(1, available.len());
    let start = (id.as_u128() % available.len() as u128) as usize;
    let mut cpus: Vec<u32> = (0..count)
        .map(|i| available[(start + i) % available.len()])
        .collect();
    cpus.sort_unstable();
    cpus
}

/// Renders CPU numbers as a kernel CPU list (`0,2,3`).
pub(crate) fn format_cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(
            parse_cpu_list("0-2,8,10-11"),
            Some(vec![0, 1, 2, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
    }

    #[test]
    fn guests_get_as_many_cpus_as_vcpus_and_spread_by_id() {
        let host = [0, 1, 2, 3];
        let first = guest_cpus(&host, 1, Uuid::from_u128(0));
        let second = guest_cpus(&host, 1, Uuid::from_u128(1));
        assert_eq!((first.clone(), second), (vec![0], vec![1]));
        assert_eq!(guest_cpus(&host, 2, Uuid::from_u128(3)), vec![0, 3]);
        assert_eq!(guest_cpus(&host, 8, Uuid::from_u128(5)), vec![0, 1, 2, 3]);
        assert_eq!(guest_cpus(&[], 2, Uuid::from_u128(5)), Vec::<u32>::new());
        assert_eq!(format_cpu_list(&[0, 3]), "0,3");
    }
}
