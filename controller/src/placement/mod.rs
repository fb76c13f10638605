//! Placement: where a platform or VM lands and whether it fits.
//!
//! VLAN tags and /24 subnets for platforms, addresses and MACs for VMs, and
//! the node checks (backend, free memory) a VM must pass. Everything here is
//! pure: the store reads what is in use inside the request's transaction and
//! hands it over, so an allocation and the row that takes it commit together.

pub(crate) mod overcommit;
pub(crate) mod quota;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use measurelab_api::http::{Capabilities, Resources, VmBackend};
use rand::Rng;

use crate::store::error::StoreError;

const MIB: u64 = 1024 * 1024;
/// Random MACs tried before giving up: with 2^24 addresses and a few
/// thousand VMs a collision is rare, 64 in a row means the pool is full.
const MAC_TRIES: usize = 64;

/// Where VLAN tags and platform subnets come from.
#[derive(Debug, Clone)]
pub(crate) struct Pools {
    pub vlans: RangeInclusive<u16>,
    /// Network address and prefix length; split into /24s.
    pub subnets: (Ipv4Addr, u8),
    /// Where gateways' tunnel networks come from; split into /24s too.
    pub tunnels: (Ipv4Addr, u8),
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            vlans: 100..=3999,
            subnets: (Ipv4Addr::new(10, 201, 0, 0), 16),
            // CGNAT space: unlikely to clash with a researcher's own networks.
            tunnels: (Ipv4Addr::new(100, 96, 0, 0), 12),
        }
    }
}

/// The lowest VLAN tag of the pool no platform uses.
pub(crate) fn vlan(pools: &Pools, used: &HashSet<u16>) -> Result<u16, StoreError> {
    let pool = pools.vlans.clone();
    let (first, last) = (*pool.start(), *pool.end());
    pool.into_iter().find(|tag| !used.contains(tag)).ok_or_else(|| {
        StoreError::PoolExhausted(format!(
            "every VLAN tag of the pool {first}-{last} is in use by a platform; delete a platform or widen the controller's VLAN pool"
        ))
    })
}

/// The /24s of the subnet pool, in order.
pub(crate) fn pool_subnets(pools: &Pools) -> impl Iterator<Item = String> {
    split_24s(pools.subnets)
}

fn split_24s((network, prefix): (Ipv4Addr, u8)) -> impl Iterator<Item = String> {
    let base = u32::from(network) & (u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    let count: u32 = 1 << (24 - prefix.min(24));
    (0..count).map(move |i| format!("{}/24", Ipv4Addr::from(base + (i << 8))))
}

/// The first /24 of the pool no platform uses.
pub(crate) fn subnet(pools: &Pools, used: &HashSet<String>) -> Result<String, StoreError> {
    let (network, prefix) = pools.subnets;
    pool_subnets(pools)
        .find(|s| !used.contains(s))
        .ok_or_else(|| {
            StoreError::PoolExhausted(format!(
                "every /24 of the subnet pool {network}/{prefix} is in use by a platform; delete a platform or widen the controller's subnet pool"
            ))
        })
}

/// The first /24 of the tunnel pool no gateway uses.
pub(crate) fn tunnel_network(pools: &Pools, used: &HashSet<String>) -> Result<String, StoreError> {
    let (network, prefix) = pools.tunnels;
    split_24s(pools.tunnels)
        .find(|s| !used.contains(s))
        .ok_or_else(|| {
            StoreError::PoolExhausted(format!(
                "every /24 of the tunnel pool {network}/{prefix} is in use by a platform gateway; remove a gateway or widen the controller's tunnel pool"
            ))
        })
}

/// `a.b.c.d/len` as address and prefix length.
pub(crate) fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((address, prefix))
}

/// The first free VM address of a platform's subnet.
pub(crate) fn address(
    platform_name: &str,
    subnet: &str,
    used: &HashSet<String>,
) -> Result<String, StoreError> {
    let (network, prefix) = parse_cidr(subnet)
        .ok_or_else(|| StoreError::Corrupt(format!("platforms.subnet {subnet:?}")))?;
    let base = u32::from(network);
    let size: u32 = 1 << (32 - u32::from(prefix.clamp(8, 30)));
    // .0 is the network, .1 is left for a gateway, the last is broadcast.
    (2..size - 1)
        .map(|host| Ipv4Addr::from(base + host).to_string())
        .find(|a| !used.contains(a))
        .ok_or_else(|| {
            StoreError::PoolExhausted(format!(
                "every address of platform {platform_name}'s subnet {subnet} is in use"
            ))
        })
}

/// A random MAC that `taken` says no VM has.
pub(crate) fn mac(
    mut taken: impl FnMut(&str) -> Result<bool, StoreError>,
) -> Result<String, StoreError> {
    let mut rng = rand::thread_rng();
    for _ in 0..MAC_TRIES {
        // 52:54:00 is the locally administered prefix QEMU/libvirt use.
        let mac = format!(
            "52:54:00:{:02x}:{:02x}:{:02x}",
            rng.gen::<u8>(),
            rng.gen::<u8>(),
            rng.gen::<u8>()
        );
        if !taken(&mac)? {
            return Ok(mac);
        }
    }
    Err(StoreError::PoolExhausted(format!(
        "no free MAC address found in 52:54:00:00:00:00/24 after {MAC_TRIES} tries"
    )))
}

/// Whether a node's agent reported the backend.
pub(crate) fn has_backend(capabilities: &Capabilities, backend: VmBackend) -> bool {
    match backend {
        VmBackend::Namespace => capabilities.namespace_backend,
        VmBackend::Libvirt => !capabilities.libvirt_uris.is_empty(),
    }
}

/// Refuse `needed_mib` on a node unless it is free: what the agent reports
/// free minus `reserved_mib`, the memory of VMs the agent has not started yet
/// (not in its report yet).
pub(crate) fn check_memory_fits(
    node_name: &str,
    resources: &Resources,
    reserved_mib: u64,
    needed_mib: u64,
) -> Result<(), StoreError> {
    let reported_free = resources
        .memory_total_bytes
        .saturating_sub(resources.memory_used_bytes)
        / MIB;
    let free = reported_free.saturating_sub(reserved_mib);
    if needed_mib > free {
        return Err(StoreError::invalid(
            "memory_mib",
            format!(
                "{needed_mib} MiB is more than node {node_name} has free: {free} MiB ({} MiB total, {} MiB in use, {reserved_mib} MiB reserved by VMs not started yet)",
                resources.memory_total_bytes / MIB,
                resources.memory_used_bytes / MIB,
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_network_gateway_and_broadcast() {
        let none = HashSet::new();
        assert_eq!(address("p", "10.0.0.0/24", &none).unwrap(), "10.0.0.2");
        // A /30 has four addresses: network, gateway, one VM, broadcast.
        let one = HashSet::from(["10.0.0.2".to_string()]);
        assert!(matches!(
            address("p", "10.0.0.0/30", &one),
            Err(StoreError::PoolExhausted(_))
        ));
        assert!(matches!(
            address("p", "not-a-subnet", &none),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn vlans_are_the_lowest_free_tag_of_the_pool() {
        let pools = Pools {
            vlans: 100..=102,
            ..Pools::default()
        };
        assert_eq!(vlan(&pools, &HashSet::from([100, 102])).unwrap(), 101);
        assert!(matches!(
            vlan(&pools, &HashSet::from([100, 101, 102])),
            Err(StoreError::PoolExhausted(_))
        ));
    }

    #[test]
    fn memory_fits_only_within_what_is_free_and_not_reserved() {
        let resources = Resources {
            memory_total_bytes: 4096 * MIB,
            memory_used_bytes: 1024 * MIB,
            ..Resources::default()
        };
        // 3072 MiB reported free, 1024 MiB promised to VMs not started yet.
        assert!(check_memory_fits("n1", &resources, 1024, 2048).is_ok());
        match check_memory_fits("n1", &resources, 1024, 2049) {
            Err(StoreError::Invalid { field, reason }) => {
                assert_eq!(field, "memory_mib");
                assert!(reason.contains("2048 MiB"), "{reason}");
            }
            other => panic!("expected memory_mib to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_mac_taken_is_not_handed_out_and_a_full_pool_is_an_error() {
        let mut rejected: Option<String> = None;
        let given = mac(|candidate| {
            let first_try = rejected.is_none();
            rejected.get_or_insert_with(|| candidate.to_string());
            Ok(first_try)
        })
        .unwrap();
        assert!(given.starts_with("52:54:00:"), "{given}");
        assert_ne!(Some(given), rejected);
        assert!(matches!(
            mac(|_| Ok(true)),
            Err(StoreError::PoolExhausted(_))
        ));
    }

    #[test]
    fn tunnel_networks_are_the_first_free_24_of_the_tunnel_pool() {
        let pools = Pools {
            tunnels: ("100.96.0.0".parse().unwrap(), 23),
            ..Pools::default()
        };
        assert_eq!(
            tunnel_network(&pools, &HashSet::from(["100.96.0.0/24".to_string()])).unwrap(),
            "100.96.1.0/24"
        );
        let full = HashSet::from(["100.96.0.0/24".to_string(), "100.96.1.0/24".to_string()]);
        assert!(matches!(
            tunnel_network(&pools, &full),
            Err(StoreError::PoolExhausted(m)) if m.contains("tunnel pool 100.96.0.0/23")
        ));
    }

    #[test]
    fn subnet_pool_splits_into_24s() {
        let pools = Pools {
            vlans: 100..=101,
            subnets: ("10.201.0.0".parse().unwrap(), 22),
            ..Pools::default()
        };
        let subnets: Vec<String> = pool_subnets(&pools).collect();
        assert_eq!(
            subnets,
            vec![
                "10.201.0.0/24",
                "10.201.1.0/24",
                "10.201.2.0/24",
                "10.201.3.0/24"
            ]
        );
        let single = Pools {
            vlans: 1..=1,
            subnets: ("192.168.7.0".parse().unwrap(), 24),
            ..Pools::default()
        };
        assert_eq!(
            pool_subnets(&single).collect::<Vec<_>>(),
            vec!["192.168.7.0/24"]
        );
    }

    /// Properties of the allocators over random pools and random use: what
    /// comes back is in the pool, free, the lowest free one, never a
    /// reserved address, and an exhausted pool is the only way to an error.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn a_vlan_is_the_lowest_free_tag_or_the_pool_is_full(
                start in 1u16..4000,
                len in 0u16..64,
                used in proptest::collection::hash_set(1u16..4100, 0..80),
            ) {
                let end = start.saturating_add(len).min(4094);
                let pools = Pools { vlans: start..=end, ..Pools::default() };
                match vlan(&pools, &used) {
                    Ok(tag) => {
                        prop_assert!(pools.vlans.contains(&tag));
                        prop_assert!(!used.contains(&tag));
                        prop_assert!((start..tag).all(|lower| used.contains(&lower)));
                    }
                    Err(StoreError::PoolExhausted(_)) => {
                        prop_assert!((start..=end).all(|t| used.contains(&t)));
                    }
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn subnets_are_distinct_slash_24s_inside_the_pool(
                network in any::<u32>(),
                prefix in 16u8..=24,
                taken in proptest::collection::vec(any::<bool>(), 256),
            ) {
                let mask = u32::MAX << (32 - u32::from(prefix));
                let base = network & mask;
                let pools = Pools { subnets: (Ipv4Addr::from(base), prefix), ..Pools::default() };
                let all: Vec<String> = pool_subnets(&pools).collect();
                prop_assert_eq!(all.len(), 1usize << (24 - prefix));
                let distinct: HashSet<&String> = all.iter().collect();
                prop_assert_eq!(distinct.len(), all.len());
                for s in &all {
                    let (net, len) = parse_cidr(s).expect("a CIDR");
                    prop_assert_eq!(len, 24);
                    prop_assert_eq!(u32::from(net) & 0xff, 0);
                    prop_assert_eq!(u32::from(net) & mask, base, "{} leaves the pool", s);
                }
                let used: HashSet<String> = all
                    .iter()
                    .zip(taken.iter().cycle())
                    .filter(|(_, t)| **t)
                    .map(|(s, _)| s.clone())
                    .collect();
                match subnet(&pools, &used) {
                    Ok(s) => {
                        prop_assert!(!used.contains(&s));
                        let first_free = all.iter().find(|c| !used.contains(*c));
                        prop_assert_eq!(Some(&s), first_free);
                    }
                    Err(StoreError::PoolExhausted(_)) => prop_assert_eq!(used.len(), all.len()),
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn addresses_fill_a_subnet_without_reserved_or_repeated_ones(
                network in any::<u32>(),
                prefix in 24u8..=30,
                picks in 0usize..300,
            ) {
                let mask = u32::MAX << (32 - u32::from(prefix));
                let net = network & mask;
                let subnet = format!("{}/{prefix}", Ipv4Addr::from(net));
                let size = 1u32 << (32 - u32::from(prefix));
                let mut used = HashSet::new();
                for _ in 0..picks {
                    match address("p", &subnet, &used) {
                        Ok(a) => {
                            let host = u32::from(a.parse::<Ipv4Addr>().expect("an address"));
                            prop_assert_eq!(host & mask, net, "{} outside {}", a, subnet);
                            let offset = host - net;
                            prop_assert!(offset >= 2 && offset < size - 1,
                                "{} is the network, the gateway or the broadcast of {}", a, subnet);
                            prop_assert!(used.insert(a));
                        }
                        Err(StoreError::PoolExhausted(_)) => {
                            prop_assert_eq!(used.len() as u32, size - 3);
                            break;
                        }
                        Err(other) => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
            }
        }
    }
}
