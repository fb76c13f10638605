//! `openapi [--check]`: write the controller's OpenAPI document, derived from
//! the HTTP body types (`controller/src/openapi.rs`), to
//! `controller/openapi.json`. `--check` fails instead when the committed copy
//! differs, so a changed type cannot ship with a stale document.

use std::path::Path;

use anyhow::{bail, Context};

const DOCUMENT: &str = "controller/openapi.json";

pub fn openapi(root: &Path, check: bool) -> anyhow::Result<()> {
    let derived = format!("{}\n", measurelab_controller::openapi::json());
    let path = root.join(DOCUMENT);
    let committed = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    if committed == derived {
        println!("{DOCUMENT} is up to date");
        return Ok(());
    }
    if check {
        bail!("{DOCUMENT} is stale; run `cargo run -p xtask -- openapi`");
    }
    std::fs::write(&path, derived).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {DOCUMENT}");
    Ok(())
}
