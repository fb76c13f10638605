//! `result-schema [--check]`: write `docs/result-schema.json`, the JSON Schema
//! of the result document, from its types (`measurelab_api::result`), or with
//! `--check` fail when the committed file differs from what the types give.

use std::path::Path;

use anyhow::{bail, Context};

/// Where the schema is published, relative to the workspace root.
pub const PUBLISHED: &str = "docs/result-schema.json";

/// The file's text: pretty JSON with a final newline, so diffs stay readable.
pub fn render() -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(&measurelab_api::result::json_schema())?;
    text.push('\n');
    Ok(text)
}

/// Write the schema under `root`, or check that the committed one is current.
pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let path = root.join(PUBLISHED);
    let generated = render()?;
    if check {
        let committed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if committed != generated {
            bail!(
                "{PUBLISHED} is stale: the result document's types changed; run `cargo run -p xtask -- result-schema` and commit it"
            );
        }
        println!("{PUBLISHED} is current");
        return Ok(());
    }
    std::fs::write(&path, generated).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {PUBLISHED}");
    Ok(())
}
