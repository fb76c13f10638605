//! `measurelab deployment outputs` and `measurelab deployment fetch`: a
//! deployment's declared output files, listed per VM and downloaded
//! through the controller (which reads them over the guest channel).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use measurelab_api::http::OUTPUT_SHA256_HEADER;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::api_conn::{runtime, Connection};
use crate::landing::{self, HashingWriter};

#[derive(Debug, Args)]
pub struct DeploymentArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: DeploymentCommand,
}

#[derive(Debug, Subcommand)]
enum DeploymentCommand {
    /// List the deployment's output files in each VM: index, VM, size,
    /// modification time, SHA-256 and path (`-` for a file not written yet).
    Outputs {
        /// Deployment id.
        deployment: String,
    },
    /// Download one output file. It is checked against the size and
    /// SHA-256 the controller announced and lands in a temporary file that
    /// is renamed only when it arrived intact.
    Fetch {
        /// Deployment id.
        deployment: String,
        /// The output: its index, its full path, or its file name.
        output: String,
        /// The VM (`PLATFORM/VM` or id); needed when the deployment runs
        /// on more than one.
        #[arg(long)]
        vm: Option<String>,
        /// Where to write it (a directory keeps the file name). Default:
        /// the file name in the current directory.
        #[arg(short = 'o', long = "output")]
        to: Option<PathBuf>,
    },
}

pub fn main(args: DeploymentArgs) -> anyhow::Result<()> {
    let client = args.connection.client()?;
    runtime()?.block_on(async move {
        match args.command {
            DeploymentCommand::Outputs { deployment } => {
                let listing = client.deployment_outputs(&deployment).await?;
                for vm in &listing.vms {
                    if let Some(error) = &vm.error {
                        println!("-\t{}\t(unavailable: {error})", vm.vm);
                    }
                    for file in &vm.files {
                        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                        let state = match (&file.error, file.present) {
                            (Some(error), _) => format!("(error: {error})"),
                            (None, false) => "(absent)".into(),
                            (None, true) => String::new(),
                        };
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}{}",
                            file.index,
                            vm.vm,
                            or_dash(file.size_bytes.map(|s| s.to_string())),
                            or_dash(file.modified_at.clone()),
                            or_dash(file.sha256.clone()),
                            file.path,
                            if state.is_empty() {
                                state
                            } else {
                                format!(" {state}")
                            }
                        );
                    }
                }
                Ok(())
            }
            DeploymentCommand::Fetch {
                deployment,
                output,
                vm,
                to,
            } => fetch(&client, &deployment, &output, vm.as_deref(), to).await,
        }
    })
}

async fn fetch(
    client: &measurelab_api::client::Client,
    deployment: &str,
    output: &str,
    vm: Option<&str>,
    to: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut response = client.download_output(deployment, output, vm).await?;
    let announced_sha = response
        .headers()
        .get(OUTPUT_SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("the controller sent no checksum with the file")?;
    let announced_size = response
        .content_length()
        .context("the controller sent no length with the file")?;
    // The controller names the file (the output may be given by index).
    let named = response
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("filename=\""))
        .and_then(|(_, rest)| rest.split('"').next())
        .filter(|name| !name.is_empty() && !name.contains('/') && *name != "..")
        .map(str::to_string);
    let name = named.unwrap_or_else(|| output.rsplit('/').next().unwrap_or(output).to_string());
    let target = landing::target(&to.unwrap_or_else(|| PathBuf::from(".")), &name)?;
    let (temp, temp_path, file) = landing::create_beside(&target).await?;
    let mut sink = HashingWriter::new(file);
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the download broke off (the file may have changed while it was sent)")?
    {
        sink.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", temp_path.display()))?;
    }
    let sha256 = hex::encode(sink.hasher.clone().finalize());
    if sink.written != announced_size || sha256 != announced_sha {
        bail!(
            "the download does not add up: announced {announced_size} bytes with sha256 {announced_sha}, {} bytes arrived with sha256 {sha256}",
            sink.written
        );
    }
    sink.inner
        .sync_all()
        .await
        .with_context(|| format!("cannot sync {}", temp_path.display()))?;
    tokio::fs::rename(&temp_path, &target)
        .await
        .with_context(|| format!("cannot rename onto {}", target.display()))?;
    temp.keep();
    eprintln!(
        "fetched {} bytes to {} (sha256 {sha256})",
        sink.written,
        target.display()
    );
    Ok(())
}
