//! The version-skew policy of docs/version-skew.md: a controller serves
//! agents, guest agents, providers and CLIs of its own minor version and of
//! the one before. This module only judges; the node API refuses what is
//! too old, the HTTP API warns, and the metrics count.

use std::fmt;
use std::str::FromStr;

/// A release version `MAJOR.MINOR.PATCH`. A pre-release or build suffix
/// (`0.5.0-rc.1`, `0.5.0+abc`) is accepted and dropped: the policy judges
/// minors, and a release candidate of 0.5 is a 0.5 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Incompatible changes.
    pub major: u64,
    /// Features; the policy's unit.
    pub minor: u64,
    /// Fixes; interchangeable within a minor.
    pub patch: u64,
}

/// Why a string is not a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a version MAJOR.MINOR.PATCH: {reason}")]
pub struct VersionError {
    text: String,
    reason: &'static str,
}

impl Version {
    /// This build's version.
    pub fn this_build() -> Version {
        // Cargo refuses a package version that is not semver, so this
        // cannot fail in a build that compiled.
        env!("CARGO_PKG_VERSION")
            .parse()
            .expect("cargo package versions are semver")
    }

    /// The oldest minor a controller of this version serves.
    fn oldest_served(self) -> OldestServed {
        match (self.major, self.minor) {
            (major, minor) if minor > 0 => OldestServed::Minor {
                major,
                minor: minor - 1,
            },
            // The minor before X.0 is the last .y, which the numbers
            // alone do not name: every .y is served rather than a
            // legitimate rolling upgrade refused.
            (major, _) if major > 0 => OldestServed::AnyOf { major: major - 1 },
            _ => OldestServed::Minor { major: 0, minor: 0 },
        }
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| VersionError {
            text: text.chars().take(64).collect(),
            reason,
        };
        let core = text
            .split_once(['-', '+'])
            .map_or(text, |(core, _suffix)| core);
        let mut parts = core.split('.');
        let mut number = |name| -> Result<u64, VersionError> {
            let part = parts.next().ok_or_else(|| bad(name))?;
            // Semver forbids leading zeros and signs; `u64::from_str`
            // would take `+1`.
            if part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_digit())
                || (part.len() > 1 && part.starts_with('0'))
            {
                return Err(bad(name));
            }
            part.parse().map_err(|_| bad(name))
        };
        let version = Version {
            major: number("MAJOR is missing or not a number")?,
            minor: number("MINOR is missing or not a number")?,
            patch: number("PATCH is missing or not a number")?,
        };
        if parts.next().is_some() {
            return Err(bad("more than three numbers"));
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest clients a controller serves, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldestServed {
    /// `MAJOR.MINOR` and later.
    Minor {
        /// Major version.
        major: u64,
        /// Minor version.
        minor: u64,
    },
    /// Every minor of `MAJOR` and later (under an `X.0` controller).
    AnyOf {
        /// Major version.
        major: u64,
    },
}

impl OldestServed {
    fn admits(self, client: Version) -> bool {
        match self {
            OldestServed::Minor { major, minor } => (client.major, client.minor) >= (major, minor),
            OldestServed::AnyOf { major } => client.major >= major,
        }
    }
}

impl fmt::Display for OldestServed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OldestServed::Minor { major, minor } => write!(f, "{major}.{minor}"),
            OldestServed::AnyOf { major } => write!(f, "{major}.x"),
        }
    }
}

/// Where a client's version stands against its controller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skew {
    /// The controller's minor or the one before: served.
    Supported(Version),
    /// Newer than the controller. Served, but the policy does not support
    /// it: controllers are upgraded first.
    Newer(Version),
    /// Older than the oldest minor the controller serves.
    Older {
        /// The client's version.
        client: Version,
        /// What the client must be upgraded to at least.
        oldest: OldestServed,
    },
    /// Not `MAJOR.MINOR.PATCH` (a development build, a test's "t"): the
    /// controller cannot judge it, so it serves it and says so.
    Unknown,
}

impl Skew {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Skew::Supported(_) => "supported",
            Skew::Newer(_) => "newer",
            Skew::Older { .. } => "older",
            Skew::Unknown => "unknown",
        }
    }
}

/// Judge a client reporting `client_version` under a controller of version
/// `controller`.
pub fn judge(controller: Version, client_version: &str) -> Skew {
    let Ok(client) = client_version.parse::<Version>() else {
        return Skew::Unknown;
    };
    if (client.major, client.minor) > (controller.major, controller.minor) {
        return Skew::Newer(client);
    }
    let oldest = controller.oldest_served();
    if oldest.admits(client) {
        Skew::Supported(client)
    } else {
        Skew::Older { client, oldest }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn versions_parse_with_suffixes_and_refuse_the_rest() {
        assert_eq!(
            v("0.5.2"),
            Version {
                major: 0,
                minor: 5,
                patch: 2
            }
        );
        assert_eq!(v("0.5.0-rc.1"), v("0.5.0"));
        assert_eq!(v("1.2.3+build.7"), v("1.2.3"));
        assert_eq!(v("1.2.3-beta+exp.sha.5114f85"), v("1.2.3"));
        for bad in [
            "", "t", "v7", "intruder", "test-1", "0.5", "0.5.", "0.5.x", "v0.5.0", "0.05.0",
            "0.5.0.1", "+1.2.3", "1.+2.3", " 0.5.0",
        ] {
            let error = bad.parse::<Version>().unwrap_err();
            assert!(
                error.to_string().contains("MAJOR.MINOR.PATCH"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn this_build_parses_as_the_package_version() {
        assert_eq!(Version::this_build().to_string(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_0_x_controller_serves_its_minor_and_the_one_before() {
        let controller = v("0.5.0");
        assert_eq!(
            judge(controller, "0.3.9"),
            Skew::Older {
                client: v("0.3.9"),
                oldest: OldestServed::Minor { major: 0, minor: 4 }
            }
        );
        assert_eq!(judge(controller, "0.4.0"), Skew::Supported(v("0.4.0")));
        assert_eq!(judge(controller, "0.4.17"), Skew::Supported(v("0.4.17")));
        assert_eq!(judge(controller, "0.5.2"), Skew::Supported(v("0.5.2")));
        assert_eq!(judge(controller, "0.5.0-rc.1"), Skew::Supported(v("0.5.0")));
        assert_eq!(judge(controller, "0.6.0"), Skew::Newer(v("0.6.0")));
        assert_eq!(judge(controller, "1.0.0"), Skew::Newer(v("1.0.0")));
        assert_eq!(judge(controller, "t"), Skew::Unknown);
    }

    #[test]
    fn a_1_x_controller_serves_its_minor_and_the_one_before() {
        let controller = v("1.4.3");
        assert!(matches!(judge(controller, "1.2.9"), Skew::Older { .. }));
        assert!(matches!(judge(controller, "0.9.0"), Skew::Older { .. }));
        assert_eq!(judge(controller, "1.3.0"), Skew::Supported(v("1.3.0")));
        assert_eq!(judge(controller, "1.4.0"), Skew::Supported(v("1.4.0")));
        assert_eq!(judge(controller, "1.5.0"), Skew::Newer(v("1.5.0")));
        assert_eq!(judge(controller, "2.0.0"), Skew::Newer(v("2.0.0")));
    }

    #[test]
    fn a_x_0_controller_serves_every_minor_of_the_major_before() {
        let controller = v("1.0.0");
        assert_eq!(judge(controller, "0.9.4"), Skew::Supported(v("0.9.4")));
        assert_eq!(judge(controller, "0.1.0"), Skew::Supported(v("0.1.0")));
        let two = v("2.0.1");
        assert_eq!(
            judge(two, "0.9.0"),
            Skew::Older {
                client: v("0.9.0"),
                oldest: OldestServed::AnyOf { major: 1 }
            }
        );
        assert_eq!(OldestServed::AnyOf { major: 1 }.to_string(), "1.x");
        // 0.0 has no minor before it.
        assert_eq!(judge(v("0.0.3"), "0.0.1"), Skew::Supported(v("0.0.1")));
    }
}
