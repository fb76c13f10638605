//! The MSCS's point list: the static `--point` entries and the points that registered
//! themselves (`POST /points`, repeated as a heartbeat), with their liveness.
//!
//! A registered point is *active* while its last heartbeat is younger than the deadline
//! and *missing* after that, until it is heard again. Missing points stay listed (the
//! results name them as missing) but leave the rotation: no run uses them as source or
//! receiver. Static points have no heartbeat unless they also register, so they count as
//! active, as before registration existed.
//!
//! Everything here is pure bookkeeping over plain values: the engine owns the clock, the
//! lock and the state file.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::runner::PointEndpoint;
use crate::protocol::{Registration, PROTOCOL_VERSION};

/// Most points one MSCS keeps (static and registered): each costs a control connection
/// per run and an entry in every result.
pub const MAX_POINTS: usize = 256;
/// Largest registration body accepted, bytes; a valid one is under 200.
pub const MAX_REGISTRATION_BYTES: usize = 4096;
/// Longest point name, characters.
pub const MAX_POINT_NAME_CHARS: usize = 64;

/// A point that registered, as persisted with the MSCS's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredPoint {
    /// The point's name.
    pub name: String,
    /// Its data-plane address.
    pub data_addr: Ipv4Addr,
    /// Its control listener.
    pub control_addr: SocketAddr,
    /// Protocol version it registered with.
    pub protocol_version: u32,
    /// RFC 3339 time of its first registration.
    pub registered_at: String,
    /// Its last registration or heartbeat, ms since the Unix epoch.
    pub last_heartbeat_unix_ms: u64,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistrationError {
    /// A field is unusable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The point speaks another control protocol version.
    #[error(
        "protocol_version: point {name:?} speaks control protocol version {point}, this MSCS \
         speaks version {mscs}; run the same measurelab release on both"
    )]
    VersionMismatch {
        /// The point's name.
        name: String,
        /// The point's version.
        point: u32,
        /// Ours.
        mscs: u32,
    },
    /// Another point holds the name.
    #[error("name: {name:?} {reason}")]
    Conflict {
        /// The contested name.
        name: String,
        /// Who holds it.
        reason: String,
    },
    /// The point list is full of active points.
    #[error("the MSCS already has {max} points, none of them missing")]
    Full {
        /// [`MAX_POINTS`].
        max: usize,
    },
    /// The MSCS was started without registration.
    #[error("this MSCS takes no registrations (start it with --point-deadline-seconds)")]
    Disabled,
    /// The state file could not be written; nothing was changed.
    #[error("cannot persist the registration: {0}")]
    Persist(String),
}

impl RegistrationError {
    /// The JSON field at fault, if one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RegistrationError::Invalid { field, .. } => Some(field),
            RegistrationError::VersionMismatch { .. } => Some("protocol_version"),
            RegistrationError::Conflict { .. } => Some("name"),
            RegistrationError::Full { .. }
            | RegistrationError::Disabled
            | RegistrationError::Persist(_) => None,
        }
    }
}

/// What a registration changed, so the engine knows whether to persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationChange {
    /// A point not listed before.
    Added,
    /// A listed point with a new address or version (e.g. restarted elsewhere).
    Updated,
    /// Nothing but the heartbeat time.
    Heartbeat,
}

fn check(registration: &Registration) -> Result<(), RegistrationError> {
    let invalid = |field, reason: String| Err(RegistrationError::Invalid { field, reason });
    let name = &registration.name;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_POINT_NAME_CHARS {
        return invalid(
            "name",
            format!("must be 1 to {MAX_POINT_NAME_CHARS} characters, not {chars}"),
        );
    }
    // Names go into results, CSV cells and Terraform attributes.
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return invalid(
            "name",
            format!("{name:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"),
        );
    }
    if registration.protocol_version != PROTOCOL_VERSION {
        return Err(RegistrationError::VersionMismatch {
            name: name.clone(),
            point: registration.protocol_version,
            mscs: PROTOCOL_VERSION,
        });
    }
    let control = registration.control_addr;
    if control.ip().is_unspecified() || control.port() == 0 {
        return invalid(
            "control_addr",
            format!("{control} is not an address the MSCS can connect to"),
        );
    }
    if registration.data_addr.is_unspecified() || registration.data_addr.is_multicast() {
        return invalid(
            "data_addr",
            format!(
                "{} is not a unicast interface address",
                registration.data_addr
            ),
        );
    }
    Ok(())
}

fn is_live(point: &RegisteredPoint, now_ms: u64, deadline_ms: u64) -> bool {
    now_ms.saturating_sub(point.last_heartbeat_unix_ms) <= deadline_ms
}

/// Takes in one registration (or heartbeat) at `now_ms`.
///
/// A name held by a live point at another control address is refused: two processes
/// claiming one name would flip the rotation between them. A missing point's name is
/// free: that is a point restarted elsewhere.
pub fn register(
    registered: &mut Vec<RegisteredPoint>,
    static_points: &[PointEndpoint],
    registration: &Registration,
    now_ms: u64,
    now_rfc3339: &str,
    deadline_ms: u64,
) -> Result<RegistrationChange, RegistrationError> {
    check(registration)?;
    if let Some(fixed) = static_points.iter().find(|p| p.name == registration.name) {
        if fixed.control != registration.control_addr {
            return Err(RegistrationError::Conflict {
                name: registration.name.clone(),
                reason: format!("is a --point at {}", fixed.control),
            });
        }
    }
    if let Some(known) = registered.iter_mut().find(|p| p.name == registration.name) {
        let moved = known.control_addr != registration.control_addr
            || known.data_addr != registration.data_addr
            || known.protocol_version != registration.protocol_version;
        if moved && is_live(known, now_ms, deadline_ms) {
            return Err(RegistrationError::Conflict {
                name: registration.name.clone(),
                reason: format!(
                    "is registered by a live point at {}; it must miss its deadline before \
                     another point takes the name",
                    known.control_addr
                ),
            });
        }
        known.control_addr = registration.control_addr;
        known.data_addr = registration.data_addr;
        known.protocol_version = registration.protocol_version;
        known.last_heartbeat_unix_ms = now_ms;
        return Ok(if moved {
            RegistrationChange::Updated
        } else {
            RegistrationChange::Heartbeat
        });
    }
    let listed = static_points.len()
        + registered
            .iter()
            .filter(|p| !static_points.iter().any(|s| s.name == p.name))
            .count();
    if listed >= MAX_POINTS {
        // Make room by forgetting the point missing the longest, never a live one.
        let oldest_missing = registered
            .iter()
            .enumerate()
            .filter(|(_, p)| !is_live(p, now_ms, deadline_ms))
            .min_by_key(|(_, p)| p.last_heartbeat_unix_ms)
            .map(|(index, _)| index);
        match oldest_missing {
            Some(index) => {
                registered.remove(index);
            }
            None => return Err(RegistrationError::Full { max: MAX_POINTS }),
        }
    }
    registered.push(RegisteredPoint {
        name: registration.name.clone(),
        data_addr: registration.data_addr,
        control_addr: registration.control_addr,
        protocol_version: registration.protocol_version,
        registered_at: now_rfc3339.to_string(),
        last_heartbeat_unix_ms: now_ms,
    });
    Ok(RegistrationChange::Added)
}

/// Liveness of a listed point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointState {
    /// In the rotation.
    Active,
    /// Missed its heartbeat deadline: out of the rotation until heard again.
    Missing,
}

/// How the MSCS learned of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointOrigin {
    /// A `--point` flag (or `MEASURELAB_POINTS`).
    Static,
    /// It registered.
    Registered,
}

/// One point of the list, as `GET /points` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointStatus {
    /// Name.
    pub name: String,
    /// Control listener.
    pub control_addr: SocketAddr,
    /// Data-plane address, once the point registered.
    pub data_addr: Option<Ipv4Addr>,
    /// Static or registered.
    pub origin: PointOrigin,
    /// Active or missing.
    pub state: PointState,
    /// Last heartbeat, ms since the Unix epoch; none for a static point that never
    /// registered.
    pub last_heartbeat_unix_ms: Option<u64>,
    /// Protocol version it registered with.
    pub protocol_version: Option<u32>,
}

impl PointStatus {
    /// The point as the runner addresses it.
    pub fn endpoint(&self) -> PointEndpoint {
        PointEndpoint {
            name: self.name.clone(),
            control: self.control_addr,
        }
    }
}

/// The whole list in rotation order: static points in flag order, then registered points
/// in order of first registration.
pub fn roster(
    static_points: &[PointEndpoint],
    registered: &[RegisteredPoint],
    now_ms: u64,
    deadline_ms: u64,
) -> Vec<PointStatus> {
    let state_of = |point: &RegisteredPoint| {
        if is_live(point, now_ms, deadline_ms) {
            PointState::Active
        } else {
            PointState::Missing
        }
    };
    let mut list: Vec<PointStatus> = static_points
        .iter()
        .map(|fixed| {
            let heard = registered.iter().find(|p| p.name == fixed.name);
            PointStatus {
                name: fixed.name.clone(),
                control_addr: fixed.control,
                data_addr: heard.map(|p| p.data_addr),
                origin: PointOrigin::Static,
                state: heard.map_or(PointState::Active, state_of),
                last_heartbeat_unix_ms: heard.map(|p| p.last_heartbeat_unix_ms),
                protocol_version: heard.map(|p| p.protocol_version),
            }
        })
        .collect();
    list.extend(
        registered
            .iter()
            .filter(|p| !static_points.iter().any(|s| s.name == p.name))
            .map(|point| PointStatus {
                name: point.name.clone(),
                control_addr: point.control_addr,
                data_addr: Some(point.data_addr),
                origin: PointOrigin::Registered,
                state: state_of(point),
                last_heartbeat_unix_ms: Some(point.last_heartbeat_unix_ms),
                protocol_version: Some(point.protocol_version),
            }),
    );
    list
}

/// After a restart: points that were live when the state was last written get a fresh
/// deadline from `now_ms`, so a restarted MSCS does not drop live points for the time it
/// was down; points already missing then stay missing.
pub fn resume_after_restart(
    registered: &mut [RegisteredPoint],
    saved_at_ms: u64,
    now_ms: u64,
    deadline_ms: u64,
) {
    for point in registered {
        if is_live(point, saved_at_ms, deadline_ms) {
            point.last_heartbeat_unix_ms = point.last_heartbeat_unix_ms.max(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: u64 = 3_000;

    fn registration(name: &str, port: u16) -> Registration {
        Registration {
            name: name.into(),
            data_addr: "10.0.0.1".parse().unwrap(),
            control_addr: format!("10.0.0.1:{port}").parse().unwrap(),
            protocol_version: PROTOCOL_VERSION,
        }
    }

    fn register_at(
        list: &mut Vec<RegisteredPoint>,
        statics: &[PointEndpoint],
        reg: &Registration,
        now: u64,
    ) -> Result<RegistrationChange, RegistrationError> {
        register(list, statics, reg, now, "2026-01-01T00:00:00Z", DEADLINE)
    }

    #[test]
    fn a_point_is_missing_after_its_deadline_and_active_again_when_heard() {
        let mut list = Vec::new();
        assert_eq!(
            register_at(&mut list, &[], &registration("p1", 7400), 1_000),
            Ok(RegistrationChange::Added)
        );
        let state_at = |list: &[RegisteredPoint], now| roster(&[], list, now, DEADLINE)[0].state;
        assert_eq!(state_at(&list, 1_000 + DEADLINE), PointState::Active);
        assert_eq!(state_at(&list, 1_001 + DEADLINE), PointState::Missing);
        assert_eq!(
            register_at(&mut list, &[], &registration("p1", 7400), 9_000),
            Ok(RegistrationChange::Heartbeat)
        );
        assert_eq!(state_at(&list, 9_000), PointState::Active);
        assert_eq!(list.len(), 1, "a heartbeat does not add an entry");
    }

    #[test]
    fn a_live_name_cannot_be_taken_but_a_missing_one_can() {
        let mut list = Vec::new();
        register_at(&mut list, &[], &registration("p1", 7400), 0).unwrap();
        let err = register_at(&mut list, &[], &registration("p1", 7401), 1_000).unwrap_err();
        assert_eq!(err.field(), Some("name"));
        assert_eq!(
            register_at(&mut list, &[], &registration("p1", 7401), DEADLINE + 1),
            Ok(RegistrationChange::Updated)
        );
        assert_eq!(list[0].control_addr.port(), 7401);

        let fixed = [PointEndpoint {
            name: "s1".into(),
            control: "10.0.0.9:7400".parse().unwrap(),
        }];
        let err = register_at(&mut list, &fixed, &registration("s1", 7400), 0).unwrap_err();
        assert!(err.to_string().contains("--point"), "{err}");
    }

    #[test]
    fn bad_registrations_name_the_field() {
        let mut list = Vec::new();
        let cases = [
            (
                Registration {
                    name: String::new(),
                    ..registration("x", 1)
                },
                "name",
            ),
            (
                Registration {
                    name: "a".repeat(MAX_POINT_NAME_CHARS + 1),
                    ..registration("x", 1)
                },
                "name",
            ),
            (
                Registration {
                    name: "p 1".into(),
                    ..registration("x", 1)
                },
                "name",
            ),
            (
                Registration {
                    protocol_version: PROTOCOL_VERSION + 1,
                    ..registration("x", 1)
                },
                "protocol_version",
            ),
            (
                Registration {
                    control_addr: "0.0.0.0:7400".parse().unwrap(),
                    ..registration("x", 1)
                },
                "control_addr",
            ),
            (
                Registration {
                    data_addr: "239.1.1.1".parse().unwrap(),
                    ..registration("x", 1)
                },
                "data_addr",
            ),
        ];
        for (reg, field) in cases {
            let err = register_at(&mut list, &[], &reg, 0).unwrap_err();
            assert_eq!(err.field(), Some(field), "{reg:?}: {err}");
        }
        assert!(list.is_empty(), "nothing half-applied");
        let mismatch = register_at(
            &mut list,
            &[],
            &Registration {
                protocol_version: 7,
                ..registration("x", 1)
            },
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            mismatch.contains("version 7")
                && mismatch.contains(&format!("version {PROTOCOL_VERSION}")),
            "{mismatch}"
        );
    }

    #[test]
    fn the_list_is_bounded_and_only_missing_points_make_room() {
        let mut list = Vec::new();
        for index in 0..MAX_POINTS {
            register_at(
                &mut list,
                &[],
                &registration(&format!("p{index}"), 7400),
                index as u64,
            )
            .unwrap();
        }
        let late = MAX_POINTS as u64;
        assert_eq!(
            register_at(&mut list, &[], &registration("extra", 7400), late),
            Err(RegistrationError::Full { max: MAX_POINTS })
        );
        // Later, everyone but p1.. is missing: the one missing longest (p0) makes room.
        let now = late + DEADLINE + 1;
        assert_eq!(
            register_at(&mut list, &[], &registration("extra", 7400), now),
            Ok(RegistrationChange::Added)
        );
        assert_eq!(list.len(), MAX_POINTS);
        assert!(!list.iter().any(|p| p.name == "p0"));
    }

    #[test]
    fn a_restart_keeps_live_points_for_a_deadline_and_missing_ones_missing() {
        let mut list = Vec::new();
        register_at(&mut list, &[], &registration("live", 1), 10_000).unwrap();
        register_at(&mut list, &[], &registration("gone", 2), 1_000).unwrap();
        // Saved at 11 s, restarted at 60 s.
        resume_after_restart(&mut list, 11_000, 60_000, DEADLINE);
        let states: Vec<_> = roster(&[], &list, 60_000 + DEADLINE, DEADLINE)
            .into_iter()
            .map(|p| (p.name, p.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("live".to_string(), PointState::Active),
                ("gone".to_string(), PointState::Missing)
            ]
        );
        assert_eq!(
            roster(&[], &list, 60_001 + DEADLINE, DEADLINE)[0].state,
            PointState::Missing
        );
    }
}
