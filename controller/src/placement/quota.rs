//! Tenant quotas: whether a request's growth fits what the tenant may use.
//!
//! Pure: the store sums the tenant's use inside the request's transaction and
//! hands it over with the request's delta, so the check and the row that
//! takes the quota commit together and two racing creates cannot both slip
//! under a limit.

use measurelab_api::http::{Quota, TenantUsage};

/// One limit of a [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    Platforms,
    Vms,
    Vcpus,
    MemoryMib,
    BandwidthKbps,
    ProgramBytes,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::Platforms,
        Limit::Vms,
        Limit::Vcpus,
        Limit::MemoryMib,
        Limit::BandwidthKbps,
        Limit::ProgramBytes,
    ];

    /// The quota field, as the API names it.
    pub fn quota_field(self) -> &'static str {
        match self {
            Limit::Platforms => "max_platforms",
            Limit::Vms => "max_vms",
            Limit::Vcpus => "max_vcpus",
            Limit::MemoryMib => "max_memory_mib",
            Limit::BandwidthKbps => "max_bandwidth_kbps",
            Limit::ProgramBytes => "max_program_bytes",
        }
    }

    fn of_quota(self, quota: &Quota) -> Option<u64> {
        match self {
            Limit::Platforms => quota.max_platforms,
            Limit::Vms => quota.max_vms,
            Limit::Vcpus => quota.max_vcpus,
            Limit::MemoryMib => quota.max_memory_mib,
            Limit::BandwidthKbps => quota.max_bandwidth_kbps,
            Limit::ProgramBytes => quota.max_program_bytes,
        }
    }

    fn of_usage(self, usage: &TenantUsage) -> u64 {
        match self {
            Limit::Platforms => usage.platforms,
            Limit::Vms => usage.vms,
            Limit::Vcpus => usage.vcpus,
            Limit::MemoryMib => usage.memory_mib,
            Limit::BandwidthKbps => usage.bandwidth_kbps,
            Limit::ProgramBytes => usage.program_bytes,
        }
    }
}

/// Why a request does not fit its tenant's quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaError {
    /// The request would take the tenant's use above a limit.
    #[error("quota {} of tenant {tenant:?} exceeded: {in_use} in use + {requested} requested > {max}", .limit.quota_field())]
    Exceeded {
        tenant: String,
        limit: Limit,
        in_use: u64,
        requested: u64,
        max: u64,
    },
    /// The tenant's bandwidth is limited but the VM's is not: without a
    /// ceiling in both directions its share of the wire cannot be counted.
    #[error("quota max_bandwidth_kbps of tenant {tenant:?} is {max} kbit/s, so every VM needs a qos_policy with ingress_max_kbps and egress_max_kbps; {what}")]
    Unbounded {
        tenant: String,
        max: u64,
        what: String,
    },
}

impl QuotaError {
    pub fn limit(&self) -> Limit {
        match self {
            QuotaError::Exceeded { limit, .. } => *limit,
            QuotaError::Unbounded { .. } => Limit::BandwidthKbps,
        }
    }
}

/// Admit `delta` (what the request adds) on top of `usage` unless it passes
/// a limit. Only growth is checked: a quota lowered below the current use
/// refuses new growth but never a shrink or an unrelated change.
pub(crate) fn admit(
    tenant: &str,
    quota: &Quota,
    usage: &TenantUsage,
    delta: &TenantUsage,
) -> Result<(), QuotaError> {
    for limit in Limit::ALL {
        let requested = limit.of_usage(delta);
        let Some(max) = limit.of_quota(quota) else {
            continue;
        };
        if requested == 0 {
            continue;
        }
        let in_use = limit.of_usage(usage);
        if in_use.saturating_add(requested) > max {
            return Err(QuotaError::Exceeded {
                tenant: tenant.to_string(),
                limit,
                in_use,
                requested,
                max,
            });
        }
    }
    Ok(())
}

/// Refuse a VM without a bandwidth ceiling (`what` says which) while the
/// tenant's bandwidth is limited.
pub(crate) fn require_bounded_bandwidth(
    tenant: &str,
    quota: &Quota,
    what: impl FnOnce() -> String,
) -> Result<(), QuotaError> {
    match quota.max_bandwidth_kbps {
        Some(max) => Err(QuotaError::Unbounded {
            tenant: tenant.to_string(),
            max,
            what: what(),
        }),
        None => Ok(()),
    }
}

/// The bandwidth a VM counts with, from its QoS policy's ceilings: both
/// directions share the wire. `None`: a direction has no ceiling.
pub(crate) fn vm_bandwidth_kbps(
    ingress_max_kbps: u64,
    egress_max_kbps: Option<u64>,
) -> Option<u64> {
    egress_max_kbps.map(|egress| ingress_max_kbps.saturating_add(egress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(set: impl Fn(&mut TenantUsage)) -> TenantUsage {
        let mut usage = TenantUsage::default();
        set(&mut usage);
        usage
    }

    /// Every limit: at the limit is admitted, one more is refused with the
    /// quota, the use, the request and the limit in the message.
    #[test]
    fn every_limit_admits_up_to_its_maximum_and_names_itself_when_exceeded() {
        type Setter = fn(&mut TenantUsage, u64);
        let cases: [(Limit, Setter, Quota); 6] = [
            (
                Limit::Platforms,
                |u, v| u.platforms = v,
                Quota {
                    max_platforms: Some(8),
                    ..Quota::default()
                },
            ),
            (
                Limit::Vms,
                |u, v| u.vms = v,
                Quota {
                    max_vms: Some(8),
                    ..Quota::default()
                },
            ),
            (
                Limit::Vcpus,
                |u, v| u.vcpus = v,
                Quota {
                    max_vcpus: Some(8),
                    ..Quota::default()
                },
            ),
            (
                Limit::MemoryMib,
                |u, v| u.memory_mib = v,
                Quota {
                    max_memory_mib: Some(8),
                    ..Quota::default()
                },
            ),
            (
                Limit::BandwidthKbps,
                |u, v| u.bandwidth_kbps = v,
                Quota {
                    max_bandwidth_kbps: Some(8),
                    ..Quota::default()
                },
            ),
            (
                Limit::ProgramBytes,
                |u, v| u.program_bytes = v,
                Quota {
                    max_program_bytes: Some(8),
                    ..Quota::default()
                },
            ),
        ];
        for (limit, set, quota) in cases {
            let in_use = usage(|u| set(u, 6));
            assert_eq!(
                admit("t1", &quota, &in_use, &usage(|u| set(u, 2))),
                Ok(()),
                "{limit:?}"
            );
            let error = admit("t1", &quota, &in_use, &usage(|u| set(u, 4))).unwrap_err();
            assert_eq!(error.limit(), limit);
            assert_eq!(
                error.to_string(),
                format!(
                    "quota {} of tenant \"t1\" exceeded: 6 in use + 4 requested > 8",
                    limit.quota_field()
                )
            );
            // The same request without that limit is admitted.
            assert_eq!(
                admit("t1", &Quota::default(), &in_use, &usage(|u| set(u, 4))),
                Ok(()),
                "{limit:?}"
            );
        }
    }

    #[test]
    fn a_quota_lowered_below_the_use_refuses_growth_only() {
        let quota = Quota {
            max_vcpus: Some(4),
            max_vms: Some(10),
            ..Quota::default()
        };
        let in_use = usage(|u| {
            u.vcpus = 6;
            u.vms = 3
        });
        // A memory-only or shrinking change adds no vCPUs.
        assert_eq!(
            admit("t1", &quota, &in_use, &usage(|u| u.memory_mib = 512)),
            Ok(())
        );
        assert!(matches!(
            admit(
                "t1",
                &quota,
                &in_use,
                &usage(|u| {
                    u.vms = 1;
                    u.vcpus = 1
                })
            ),
            Err(QuotaError::Exceeded {
                limit: Limit::Vcpus,
                in_use: 6,
                requested: 1,
                max: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_huge_request_does_not_wrap_around() {
        let quota = Quota {
            max_program_bytes: Some(u64::MAX - 1),
            ..Quota::default()
        };
        let in_use = usage(|u| u.program_bytes = 2);
        assert!(admit(
            "t1",
            &quota,
            &in_use,
            &usage(|u| u.program_bytes = u64::MAX)
        )
        .is_err());
    }

    #[test]
    fn unbounded_bandwidth_is_refused_only_under_a_bandwidth_quota() {
        let limited = Quota {
            max_bandwidth_kbps: Some(1000),
            ..Quota::default()
        };
        let error =
            require_bounded_bandwidth("t1", &limited, || "VM \"p/v\" has none".into()).unwrap_err();
        assert_eq!(error.limit(), Limit::BandwidthKbps);
        let text = error.to_string();
        assert!(
            text.contains("max_bandwidth_kbps of tenant \"t1\" is 1000 kbit/s"),
            "{text}"
        );
        assert!(text.contains("VM \"p/v\" has none"), "{text}");
        assert!(require_bounded_bandwidth("t1", &Quota::default(), String::new).is_ok());
    }

    #[test]
    fn a_vm_counts_both_directions_of_its_policy() {
        assert_eq!(vm_bandwidth_kbps(1000, Some(500)), Some(1500));
        assert_eq!(vm_bandwidth_kbps(1000, None), None);
    }
}
