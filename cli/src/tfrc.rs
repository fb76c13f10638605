//! Terraform CLI configuration for a lab: lets `terraform init` find the
//! locally built `terraform-provider-measurelab` without a registry.
//!
//! The provider is published into a filesystem mirror inside the lab
//! directory, laid out as Terraform expects
//! (`HOST/NAMESPACE/TYPE/VERSION/linux_amd64/terraform-provider-TYPE_vVERSION`),
//! and the CLI config routes the provider's source address to that mirror and
//! everything else to the registry as usual. A mirror (rather than
//! `dev_overrides`) is used because `terraform init` then works, which modules
//! and `terraform test` need. A rebuilt provider needs `terraform init -upgrade`.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Source address of the provider: `source = "measurelab.local/measurelab/measurelab"`.
/// The host deliberately names no public registry.
pub const PROVIDER_SOURCE: &str = "measurelab.local/measurelab/measurelab";
/// Version published into the mirror: the workspace version, shared by the
/// CLI and the provider.
pub const PROVIDER_VERSION: &str = env!("CARGO_PKG_VERSION");
const PROVIDER_BINARY: &str = "terraform-provider-measurelab";

/// Publish `bin_dir/terraform-provider-measurelab` into a filesystem mirror
/// under `lab_dir/terraform/` and write `lab_dir/terraform/terraform.tfrc`.
/// Returns the path of the config; use it as `TF_CLI_CONFIG_FILE`.
pub fn write_tfrc(lab_dir: &Path, bin_dir: &Path) -> anyhow::Result<PathBuf> {
    let binary = bin_dir.join(PROVIDER_BINARY);
    anyhow::ensure!(
        binary.is_file(),
        "{} does not exist; build it first: cargo build -p terraform-provider-measurelab",
        binary.display()
    );
    let terraform_dir = lab_dir.join("terraform");
    let mirror = terraform_dir.join("providers");
    let platform_dir = mirror
        .join(PROVIDER_SOURCE)
        .join(PROVIDER_VERSION)
        .join(platform());
    std::fs::create_dir_all(&platform_dir)
        .with_context(|| format!("creating {}", platform_dir.display()))?;
    let published = platform_dir.join(format!("{PROVIDER_BINARY}_v{PROVIDER_VERSION}"));
    // Copy (not symlink): Terraform records the binary's hash at init, so the
    // mirror must not change under an initialised working directory.
    let staging = platform_dir.join(format!(".{PROVIDER_BINARY}.tmp"));
    std::fs::copy(&binary, &staging)
        .with_context(|| format!("copying {} to {}", binary.display(), staging.display()))?;
    std::fs::rename(&staging, &published)
        .with_context(|| format!("publishing {}", published.display()))?;

    let config_path = terraform_dir.join("terraform.tfrc");
    let mirror_text = mirror.display().to_string();
    let host = PROVIDER_SOURCE.split('/').next().unwrap_or(PROVIDER_SOURCE);
    let config = format!(
        "# Written by `measurelab lab tfrc`. Use with: export TF_CLI_CONFIG_FILE={config}\n\
         provider_installation {{\n  \
           filesystem_mirror {{\n    \
             path    = {mirror:?}\n    \
             include = [\"{host}/*/*\"]\n  \
           }}\n  \
           direct {{\n    \
             exclude = [\"{host}/*/*\"]\n  \
           }}\n\
         }}\n",
        config = config_path.display(),
        mirror = mirror_text,
    );
    std::fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    Ok(config_path)
}

/// Terraform's name for this platform's directory in a mirror.
fn platform() -> String {
    let os = std::env::consts::OS;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{os}_{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop (no tempfile dependency: this file
    /// is compiled into both the CLI and the acceptance crate).
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tfrc-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn lays_out_the_mirror_as_terraform_expects() -> anyhow::Result<()> {
        let bin = Scratch::new("bin");
        let lab = Scratch::new("lab");
        std::fs::write(bin.0.join(PROVIDER_BINARY), b"#!/bin/sh\n")?;
        let config = write_tfrc(&lab.0, &bin.0)?;
        let expected = lab
            .0
            .join("terraform/providers/measurelab.local/measurelab/measurelab")
            .join(PROVIDER_VERSION)
            .join(platform())
            .join(format!("terraform-provider-measurelab_v{PROVIDER_VERSION}"));
        assert!(expected.is_file(), "{} missing", expected.display());
        let text = std::fs::read_to_string(config)?;
        assert!(text.contains("filesystem_mirror"));
        assert!(text.contains("measurelab.local/*/*"));
        Ok(())
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let empty = Scratch::new("empty");
        let err = write_tfrc(&empty.0, &empty.0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("cargo build -p terraform-provider-measurelab"),
            "{err}"
        );
    }
}
