//! `measurelab-wg NAME [--netns NS] [--ready-file PATH]`: runs one userspace
//! WireGuard device until SIGTERM. Started detached by the node agent (a
//! platform gateway) and by `measurelab tunnel up`; configured by them over
//! the device's UAPI socket.

use std::path::PathBuf;
use std::process::ExitCode;

use measurelab_wireguard::device::{self, RunOptions};

const USAGE: &str = "usage: measurelab-wg NAME [--netns NS] [--ready-file PATH]";

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("measurelab-wg: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match device::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("measurelab-wg: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<RunOptions, String> {
    let mut options = RunOptions {
        name: String::new(),
        netns: None,
        ready_file: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--netns" => options.netns = Some(value("--netns")?),
            "--ready-file" => options.ready_file = Some(PathBuf::from(value("--ready-file")?)),
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            name if options.name.is_empty() => options.name = name.to_string(),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    if options.name.is_empty() || options.name.len() > 15 {
        return Err("NAME (1 to 15 bytes) is required".into());
    }
    Ok(options)
}
