//! `cargo` run from inside a test (or an xtask): the binaries a test needs
//! that its own package does not build.
//!
//! Cargo gives a test, and a program run with `cargo run`, the variables of
//! the package being built (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …). A
//! nested `cargo build` that inherits them hands them to build scripts that
//! watch them (`ring`'s does, with `rerun-if-env-changed`): ring is built
//! again, and everything above it (rustls, tonic, reqwest, the workspace),
//! and the next top-level build, without them, builds all of it back. CI
//! lost minutes in every phase after the first nested build to that.

use std::ffi::OsStr;
use std::process::Command;

/// `$CARGO` (cargo itself when unset) with the package variables removed.
pub fn command() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if is_package_variable(&name) {
            command.env_remove(name);
        }
    }
    command
}

/// The variables cargo sets for one package's targets (the Cargo book,
/// "Environment variables Cargo sets for crates"), not the configuration
/// ones such as `CARGO_PROFILE_*` or `CARGO_TARGET_DIR`, which the nested
/// build must keep to build what the outer one built.
fn is_package_variable(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"];
    const NAMES: [&str; 5] = [
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_variables_go_and_configuration_stays() {
        for gone in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_EXE_measurelab",
            "CARGO_CRATE_NAME",
            "OUT_DIR",
        ] {
            assert!(is_package_variable(OsStr::new(gone)), "{gone}");
        }
        for kept in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_DEV_DEBUG",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!is_package_variable(OsStr::new(kept)), "{kept}");
        }
    }

    /// This test runs under cargo, so it has the package's variables: the
    /// command it gets must not pass them on.
    #[test]
    fn the_command_removes_what_this_test_was_given() {
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = command();
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_os_string())
            .collect();
        assert!(removed.iter().any(|name| name == "CARGO_MANIFEST_DIR"));
        assert!(removed.iter().any(|name| name == "CARGO_PKG_NAME"));
    }
}
