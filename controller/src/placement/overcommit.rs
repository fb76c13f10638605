//! Node capacity with the operator's overcommit ratios: how many vCPUs and
//! how much memory the VMs placed on a node may add up to.
//!
//! Capacity is what the agent reports (CPUs, total memory) times the node's
//! ratio; use is the sum over the VMs the controller has placed there, so a
//! VM counts from the moment it is admitted, not from when its agent reports
//! it running.

use measurelab_api::http::Resources;

use crate::store::error::StoreError;
use crate::validation::FieldError;

const MIB: u64 = 1024 * 1024;

/// vCPUs are time-shared and measurement guests idle between tasks, so a
/// node may promise more vCPUs than it has cores; 16 is the allocation ratio
/// OpenStack Nova shipped as its default for years. Operators who need
/// pinned-core timing fidelity set 1.0.
pub(crate) const DEFAULT_CPU_OVERCOMMIT: f64 = 16.0;
/// Memory cannot be time-shared: an overcommitted host swaps or kills
/// guests, which silently distorts measurements, so the default promises no
/// more than the node has.
pub(crate) const DEFAULT_MEMORY_OVERCOMMIT: f64 = 1.0;
/// Upper bound of either ratio: beyond it a typo (100 for 1.00) is likelier
/// than an intent.
pub(crate) const MAX_OVERCOMMIT: f64 = 64.0;

/// A node's overcommit ratios, as the operator set them (or the defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: DEFAULT_CPU_OVERCOMMIT,
            memory: DEFAULT_MEMORY_OVERCOMMIT,
        }
    }
}

impl Overcommit {
    /// Ratios read from the database, where NULL means "never set": such a
    /// node follows the controller's default.
    pub fn from_stored(cpu: Option<f64>, memory: Option<f64>) -> Self {
        Overcommit {
            cpu: cpu.unwrap_or(DEFAULT_CPU_OVERCOMMIT),
            memory: memory.unwrap_or(DEFAULT_MEMORY_OVERCOMMIT),
        }
    }
}

/// A ratio must be a finite number in 1.0..=MAX_OVERCOMMIT: below 1 would
/// strand capacity the node has, which labels or a smaller node express
/// better.
pub(crate) fn validate_ratio(field: &str, ratio: f64) -> Result<(), FieldError> {
    if !ratio.is_finite() || !(1.0..=MAX_OVERCOMMIT).contains(&ratio) {
        return Err(FieldError::new(
            field,
            format!("{ratio} is out of range 1.0..={MAX_OVERCOMMIT:.1} (1.0 means no overcommit)"),
        ));
    }
    Ok(())
}

/// What is already placed on a node, summed over its VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NodeUse {
    pub vcpus: u64,
    pub memory_mib: u64,
}

/// `capacity × ratio`, rounded down: a fractional vCPU or MiB is not one.
fn scaled(capacity: u64, ratio: f64) -> u64 {
    (capacity as f64 * ratio).floor() as u64
}

/// Refuse `more_vcpus` for `vm` (`platform/name`) unless the node's placed
/// vCPUs plus the request stay within its CPUs times the ratio.
pub(crate) fn check_vcpus(
    vm: &str,
    node_name: &str,
    resources: &Resources,
    overcommit: Overcommit,
    in_use: NodeUse,
    more_vcpus: u64,
) -> Result<(), StoreError> {
    let cpus = u64::from(resources.cpu_count);
    let capacity = scaled(cpus, overcommit.cpu);
    if in_use.vcpus + more_vcpus > capacity {
        return Err(StoreError::invalid(
            "vcpus",
            format!(
                "vm {vm:?}: node {node_name:?} has {} of {capacity} vCPUs ({cpus} cpus × overcommit {:.1}) in use; {more_vcpus} more requested",
                in_use.vcpus, overcommit.cpu
            ),
        ));
    }
    Ok(())
}

/// Refuse `more_mib` for `vm` unless the node's placed memory plus the
/// request stay within its total memory times the ratio.
pub(crate) fn check_memory(
    vm: &str,
    node_name: &str,
    resources: &Resources,
    overcommit: Overcommit,
    in_use: NodeUse,
    more_mib: u64,
) -> Result<(), StoreError> {
    let total_mib = resources.memory_total_bytes / MIB;
    let capacity = scaled(total_mib, overcommit.memory);
    if in_use.memory_mib + more_mib > capacity {
        return Err(StoreError::invalid(
            "memory_mib",
            format!(
                "vm {vm:?}: node {node_name:?} has {} of {capacity} MiB of memory ({total_mib} MiB × overcommit {:.1}) in use; {more_mib} more requested",
                in_use.memory_mib, overcommit.memory
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpus: u32, memory_mib: u64) -> Resources {
        Resources {
            cpu_count: cpus,
            memory_total_bytes: memory_mib * MIB,
            ..Resources::default()
        }
    }

    fn reason(result: Result<(), StoreError>, expected_field: &str) -> String {
        match result {
            Err(StoreError::Invalid { field, reason }) if field == expected_field => reason,
            other => panic!("expected {expected_field} to be refused, got {other:?}"),
        }
    }

    #[test]
    fn vcpus_fit_up_to_cpus_times_ratio_counting_what_is_placed() {
        let ratio = Overcommit {
            cpu: 2.0,
            memory: 1.0,
        };
        let used = NodeUse {
            vcpus: 3,
            memory_mib: 0,
        };
        assert!(check_vcpus("p/v", "n2", &node(2, 1024), ratio, used, 1).is_ok());
        let refused = reason(
            check_vcpus("p/v", "n2", &node(2, 1024), ratio, used, 2),
            "vcpus",
        );
        assert_eq!(
            refused,
            "vm \"p/v\": node \"n2\" has 3 of 4 vCPUs (2 cpus × overcommit 2.0) in use; 2 more requested"
        );
    }

    #[test]
    fn memory_fits_up_to_total_times_ratio_and_fractions_round_down() {
        let ratio = Overcommit {
            cpu: 1.0,
            memory: 1.5,
        };
        // 1001 MiB × 1.5 = 1501.5: 1501 MiB can be promised, not 1502.
        let used = NodeUse {
            vcpus: 0,
            memory_mib: 1000,
        };
        assert!(check_memory("p/v", "n1", &node(1, 1001), ratio, used, 501).is_ok());
        let refused = reason(
            check_memory("p/v", "n1", &node(1, 1001), ratio, used, 502),
            "memory_mib",
        );
        assert!(
            refused.contains("has 1000 of 1501 MiB of memory (1001 MiB × overcommit 1.5) in use; 502 more requested"),
            "{refused}"
        );
    }

    #[test]
    fn a_node_that_reports_no_cpus_admits_no_vcpus() {
        let refused = reason(
            check_vcpus(
                "p/v",
                "n1",
                &node(0, 1024),
                Overcommit::default(),
                NodeUse::default(),
                1,
            ),
            "vcpus",
        );
        assert!(refused.contains("0 of 0 vCPUs"), "{refused}");
    }

    #[test]
    fn ratios_below_one_not_finite_or_huge_are_refused() {
        for ratio in [
            0.99,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            MAX_OVERCOMMIT + 0.5,
        ] {
            let error = validate_ratio("cpu_overcommit", ratio).unwrap_err();
            assert_eq!(error.field, "cpu_overcommit");
            assert!(error.reason.contains("out of range"), "{}", error.reason);
        }
        for ratio in [1.0, 1.25, MAX_OVERCOMMIT] {
            assert!(validate_ratio("memory_overcommit", ratio).is_ok());
        }
    }

    #[test]
    fn unset_ratios_follow_the_defaults() {
        assert_eq!(Overcommit::from_stored(None, None), Overcommit::default());
        assert_eq!(
            Overcommit::from_stored(Some(2.0), None),
            Overcommit {
                cpu: 2.0,
                memory: DEFAULT_MEMORY_OVERCOMMIT
            }
        );
    }
}
