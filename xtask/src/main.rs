//! `cargo run -p xtask -- <task>`: project tooling kept in Rust.
//!
//! - `docs [--check]`: build the provider, ask Terraform for its schema
//!   (`terraform providers schema -json`) and render `docs/` in the
//!   tfplugindocs layout (tfplugindocs is a Go tool that cannot be installed
//!   here). Attribute text comes from the schema descriptions; extra prose from
//!   `templates/`. `--check` fails if `docs/` is stale (for CI).
//! - `openapi [--check]`: write `controller/openapi.json` from the types
//!   (`--check` fails if it is stale).
//! - `acc [cargo test args]`: build `measurelab`, the guest agent and the provider, then run the
//!   acceptance tests with `TF_ACC=1`.
//! - `result-schema [--check]`: write `docs/result-schema.json` from the result
//!   document's types; `--check` fails if it is stale.
//! - `plugin-startup [RUNS] [--release]`: time from spawning the provider to its
//!   go-plugin handshake line on stdout, with and without the mTLS client
//!   certificate Terraform passes (`PLUGIN_CLIENT_CERT`), and print figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

mod compat;
mod modcycles;
mod openapi;
mod result_schema;

#[path = "../../cli/src/tfrc.rs"]
#[allow(dead_code)]
mod tfrc;

const PROVIDER_NAME: &str = "measurelab";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("docs") => docs(args.iter().any(|a| a == "--check")),
        Some("openapi") => openapi::openapi(&workspace_root(), args.iter().any(|a| a == "--check")),
        Some("acc") => acc(&args[1..]),
        Some("plugin-startup") => plugin_startup(&args[1..]),
        Some("compat") => compat::run(&workspace_root()),
        Some("modcycles") => modcycles::modcycles(&workspace_root()),
        Some("result-schema") => {
            result_schema::run(&workspace_root(), args.iter().any(|a| a == "--check"))
        }
        _ => bail!(
            "usage: cargo run -p xtask -- docs [--check] | openapi [--check] | acc [cargo test args] | plugin-startup [RUNS] [--release] | result-schema [--check] | modcycles | compat"
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = measurelab_testbed::cargo::command()
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn acc(extra: &[String]) -> anyhow::Result<()> {
    cargo(&[
        "build",
        "-p",
        "measurelab",
        "-p",
        "measurelab-guest",
        "-p",
        "terraform-provider-measurelab",
    ])?;
    let status = measurelab_testbed::cargo::command()
        .args(["test", "-p", "measurelab-acceptance"])
        .args(extra)
        .env("TF_ACC", "1")
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        bail!("acceptance tests failed");
    }
    Ok(())
}

/// Spawn the provider `runs` times and time spawn -> handshake line.
fn plugin_startup(args: &[String]) -> anyhow::Result<()> {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    let release = args.iter().any(|a| a == "--release");
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(20);
    let profile = if release { "release" } else { "debug" };
    let mut build = vec!["build", "-p", "terraform-provider-measurelab"];
    if release {
        build.push("--release");
    }
    cargo(&build)?;
    let binary = target_dir()
        .join(profile)
        .join("terraform-provider-measurelab");

    // Terraform always runs plugins with AutoMTLS: it passes its client
    // certificate, and the plugin generates its own key pair and certificate
    // before it can print the handshake. Measure with and without that step.
    let scratch = tempfile::Builder::new()
        .prefix("xtask-startup-")
        .tempdir()?;
    let (cert, key) = (
        scratch.path().join("client.pem"),
        scratch.path().join("client.key"),
    );
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl to make a client certificate")?;
    anyhow::ensure!(
        status.success(),
        "openssl failed to make a client certificate"
    );
    let client_cert = std::fs::read_to_string(&cert)?;

    println!("plugin start-up (spawn -> handshake line), {profile} build, {runs} runs each");
    for (mode, cert) in [
        ("no client cert", None),
        ("AutoMTLS (as terraform)", Some(&client_cert)),
    ] {
        let mut samples = Vec::with_capacity(runs);
        let mut handshake = String::new();
        for _ in 0..runs {
            let mut command = Command::new(&binary);
            command
                .env(
                    "TF_PLUGIN_MAGIC_COOKIE",
                    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
                )
                .env("PLUGIN_PROTOCOL_VERSIONS", "6")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            match cert {
                Some(pem) => command.env("PLUGIN_CLIENT_CERT", pem),
                None => command.env_remove("PLUGIN_CLIENT_CERT"),
            };
            let started = Instant::now();
            let mut child = command
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            let stdout = child.stdout.take().context("no stdout")?;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line)?;
            let elapsed = started.elapsed();
            child.kill()?;
            child.wait()?;
            anyhow::ensure!(
                line.starts_with("1|6|tcp|"),
                "unexpected handshake line {line:?}"
            );
            handshake = line;
            samples.push(elapsed);
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
        let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        println!(
            "  {mode:<24} min {:7.2} ms  median {:7.2} ms  mean {:7.2} ms  p95 {:7.2} ms  max {:7.2} ms",
            ms(samples[0]),
            ms(pick(0.5)),
            mean,
            ms(pick(0.95)),
            ms(samples[samples.len() - 1])
        );
        let shown: String = handshake.trim().chars().take(40).collect();
        println!("  {:<24} handshake: {shown}...", "");
    }
    Ok(())
}

/// Build the provider and return `terraform providers schema -json` for it.
fn provider_schema() -> anyhow::Result<Value> {
    cargo(&["build", "-p", "terraform-provider-measurelab"])?;
    let bin_dir = target_dir().join("debug");
    let scratch = tempfile::Builder::new().prefix("xtask-docs-").tempdir()?;
    let tfrc = tfrc::write_tfrc(scratch.path(), &bin_dir)?;
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("main.tf"),
        format!(
            "terraform {{\n  required_providers {{\n    measurelab = {{\n      source = \"{}\"\n    }}\n  }}\n}}\n",
            tfrc::PROVIDER_SOURCE
        ),
    )?;
    let terraform = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let output = Command::new("terraform")
            .args(args)
            .current_dir(&work)
            .env("TF_CLI_CONFIG_FILE", &tfrc)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .output()
            .with_context(|| format!("running terraform {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "terraform {} failed:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    };
    terraform(&["init", "-input=false", "-no-color"])?;
    let json = terraform(&["providers", "schema", "-json"])?;
    let all: Value = serde_json::from_slice(&json)?;
    all["provider_schemas"]
        .as_object()
        .and_then(|schemas| schemas.get(tfrc::PROVIDER_SOURCE))
        .cloned()
        .context("terraform returned no schema for the provider")
}

fn docs(check: bool) -> anyhow::Result<()> {
    let schema = provider_schema()?;
    let root = workspace_root();
    let pages = render_all(&schema, &root)?;
    let mut stale = Vec::new();
    for (relative, content) in &pages {
        let path = root.join(relative);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != *content {
            stale.push(relative.clone());
            if !check {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, content)?;
            }
        }
    }
    if check && !stale.is_empty() {
        bail!(
            "docs are stale: {}; run `cargo run -p xtask -- docs`",
            stale.join(", ")
        );
    }
    for relative in &stale {
        println!("wrote {relative}");
    }
    println!("{} pages, {} changed", pages.len(), stale.len());
    Ok(())
}

/// Every page, keyed by its path relative to the workspace root.
fn render_all(schema: &Value, root: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let mut pages = BTreeMap::new();
    let provider_block = &schema["provider"]["block"];
    pages.insert(
        "docs/index.md".to_string(),
        render_page(&PageInput {
            title: format!("{PROVIDER_NAME} Provider"),
            page_title: format!("{PROVIDER_NAME} Provider"),
            block: provider_block,
            example: read_optional(&root.join("examples/provider/provider.tf"))?,
            import: None,
            template: read_optional(&root.join("templates/index.md.tmpl"))?,
        }),
    );
    for (kind, dir, label, example_file) in [
        ("resource_schemas", "resources", "Resource", "resource.tf"),
        (
            "data_source_schemas",
            "data-sources",
            "Data Source",
            "data-source.tf",
        ),
    ] {
        for (type_name, type_schema) in schema[kind].as_object().into_iter().flatten() {
            let short = type_name
                .strip_prefix(&format!("{PROVIDER_NAME}_"))
                .unwrap_or(type_name);
            let example_dir = root.join("examples").join(dir).join(type_name);
            pages.insert(
                format!("docs/{dir}/{short}.md"),
                render_page(&PageInput {
                    title: format!("{type_name} ({label})"),
                    page_title: format!("{type_name} {label} - terraform-provider-{PROVIDER_NAME}"),
                    block: &type_schema["block"],
                    example: read_optional(&example_dir.join(example_file))?,
                    import: read_optional(&example_dir.join("import.sh"))?,
                    template: read_optional(
                        &root
                            .join("templates")
                            .join(dir)
                            .join(format!("{short}.md.tmpl")),
                    )?,
                }),
            );
        }
    }
    Ok(pages)
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

struct PageInput<'a> {
    title: String,
    page_title: String,
    block: &'a Value,
    example: Option<String>,
    import: Option<String>,
    template: Option<String>,
}

fn render_page(input: &PageInput) -> String {
    let description = input.block["description"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    let example = input
        .example
        .as_ref()
        .map(|text| {
            format!(
                "## Example Usage\n\n```terraform\n{}\n```\n",
                text.trim_end()
            )
        })
        .unwrap_or_default();
    let import = input
        .import
        .as_ref()
        .map(|text| {
            format!(
                "## Import\n\nImport is supported using the following syntax:\n\n```shell\n{}\n```\n",
                text.trim_end()
            )
        })
        .unwrap_or_default();
    let schema = render_schema(input.block);
    let body = match &input.template {
        Some(template) => template
            .replace("{{ .Title }}", &input.title)
            .replace("{{ .Description }}", &description)
            .replace("{{ .Example }}", example.trim_end())
            .replace("{{ .Schema }}", schema.trim_end())
            .replace("{{ .Import }}", import.trim_end()),
        None => {
            let mut body = format!("# {}\n\n{description}\n\n", input.title);
            for part in [&example, &schema, &import] {
                if !part.is_empty() {
                    body.push_str(part);
                    body.push('\n');
                }
            }
            body
        }
    };
    let front_description = description
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "---\n# Generated by `cargo run -p xtask -- docs` from the provider schema; edit the schema \
         descriptions or templates/, not this file.\npage_title: \"{}\"\nsubcategory: \"\"\ndescription: |-\n{front_description}\n---\n\n{}\n",
        input.page_title,
        body.trim_end()
    )
}

/// Terraform type JSON (`"string"`, `["list","string"]`, `["object",{..}]`) as tfplugindocs words it.
fn type_words(ty: &Value) -> String {
    match ty {
        Value::String(name) => match name.as_str() {
            "string" => "String".into(),
            "number" => "Number".into(),
            "bool" => "Boolean".into(),
            "dynamic" => "Dynamic".into(),
            other => other.to_string(),
        },
        Value::Array(parts) => match (parts.first().and_then(Value::as_str), parts.get(1)) {
            (Some("list"), Some(inner)) => format!("List of {}", type_words(inner)),
            (Some("set"), Some(inner)) => format!("Set of {}", type_words(inner)),
            (Some("map"), Some(inner)) => format!("Map of {}", type_words(inner)),
            (Some("object"), _) => "Object".into(),
            (Some("tuple"), _) => "Tuple".into(),
            _ => ty.to_string(),
        },
        _ => ty.to_string(),
    }
}

/// The object attributes behind a type, if any (`object` or a collection of objects).
fn object_fields(ty: &Value) -> Option<&serde_json::Map<String, Value>> {
    let parts = ty.as_array()?;
    match parts.first()?.as_str()? {
        "object" => parts.get(1)?.as_object(),
        "list" | "set" | "map" => object_fields(parts.get(1)?),
        _ => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn render_schema(block: &Value) -> String {
    let mut out = String::from("<!-- schema generated by xtask docs -->\n## Schema\n");
    let mut nested = Vec::new();
    render_block(block, "", &mut out, &mut nested, 3);
    for section in nested {
        out.push('\n');
        out.push_str(&section);
    }
    out
}

/// Render the attribute groups of `block`; nested sections are appended to `nested`.
fn render_block(
    block: &Value,
    prefix: &str,
    out: &mut String,
    nested: &mut Vec<String>,
    level: usize,
) {
    let mut groups: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    let attributes = block["attributes"].as_object().cloned().unwrap_or_default();
    for (name, attr) in &attributes {
        let flag = |key: &str| attr[key].as_bool().unwrap_or(false);
        let group = if flag("required") {
            0
        } else if flag("optional") {
            1
        } else {
            2
        };
        let mut words = type_words(&attr["type"]);
        if flag("sensitive") {
            words.push_str(", Sensitive");
        }
        let description = one_line(attr["description"].as_str().unwrap_or_default());
        let mut line = format!("- `{name}` ({words})");
        if !description.is_empty() {
            line.push(' ');
            line.push_str(&description);
        }
        if let Some(fields) = object_fields(&attr["type"]) {
            let anchor = format!("nestedatt--{prefix}{name}");
            line.push_str(&format!(" (see [below for nested schema](#{anchor}))"));
            let mut section = format!(
                "<a id=\"{anchor}\"></a>\n{} Nested Schema for `{prefix}{name}`\n\nRead-Only:\n\n",
                "#".repeat(level)
            );
            for (field, field_type) in fields {
                section.push_str(&format!("- `{field}` ({})\n", type_words(field_type)));
            }
            nested.push(section);
        }
        groups.entry(group).or_default().push(line);
    }
    for (name, block_type) in block["block_types"].as_object().into_iter().flatten() {
        let min = block_type["min_items"].as_u64().unwrap_or(0);
        let (group, word) = if min > 0 {
            (0, "Required")
        } else {
            (1, "Optional")
        };
        let anchor = format!("nestedblock--{prefix}{name}");
        let description = one_line(
            block_type["block"]["description"]
                .as_str()
                .unwrap_or_default(),
        );
        groups.entry(group).or_default().push(format!(
            "- `{name}` (Block, {word}) {description} (see [below for nested schema](#{anchor}))"
        ));
        let mut section = format!(
            "<a id=\"{anchor}\"></a>\n{} Nested Schema for `{prefix}{name}`\n",
            "#".repeat(level)
        );
        let mut inner_nested = Vec::new();
        let mut inner = String::new();
        render_block(
            &block_type["block"],
            &format!("{prefix}{name}."),
            &mut inner,
            &mut inner_nested,
            level,
        );
        // Inside a nested section the group headings are plain labels, as in tfplugindocs.
        section.push_str(
            &inner
                .replace("\n### Required\n", "\nRequired:\n")
                .replace("\n### Optional\n", "\nOptional:\n")
                .replace("\n### Read-Only\n", "\nRead-Only:\n"),
        );
        nested.push(section);
        nested.extend(inner_nested);
    }
    for (group, mut lines) in groups {
        lines.sort();
        let heading = ["Required", "Optional", "Read-Only"][group as usize];
        out.push_str(&format!("\n### {heading}\n\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_worded_like_tfplugindocs() {
        assert_eq!(type_words(&serde_json::json!("string")), "String");
        assert_eq!(
            type_words(&serde_json::json!(["map", "string"])),
            "Map of String"
        );
        assert_eq!(
            type_words(&serde_json::json!(["list", ["object", {"a": "string"}]])),
            "List of Object"
        );
    }

    #[test]
    fn every_attribute_is_rendered_in_its_group() {
        let block = serde_json::json!({
            "description": "A thing.",
            "attributes": {
                "name": {"type": "string", "required": true, "description": "Its name."},
                "token": {"type": "string", "optional": true, "sensitive": true, "description": "Secret."},
                "caps": {"type": ["object", {"x": "bool"}], "computed": true, "description": "Caps."}
            },
            "block_types": {
                "timeouts": {"nesting_mode": "group", "block": {"attributes": {"create": {"type": "string", "optional": true, "description": "Wait."}}}}
            }
        });
        let text = render_schema(&block);
        let required = text.find("### Required").unwrap_or(usize::MAX);
        let optional = text.find("### Optional").unwrap_or(usize::MAX);
        let read_only = text.find("### Read-Only").unwrap_or(usize::MAX);
        assert!(required < optional && optional < read_only, "{text}");
        assert!(text.contains("- `name` (String) Its name."), "{text}");
        assert!(
            text.contains("- `token` (String, Sensitive) Secret."),
            "{text}"
        );
        assert!(
            text.contains("- `caps` (Object) Caps. (see [below"),
            "{text}"
        );
        assert!(text.contains("- `x` (Boolean)"), "{text}");
        assert!(text.contains("- `timeouts` (Block, Optional)"), "{text}");
        assert!(text.contains("Nested Schema for `timeouts`"), "{text}");
        assert!(text.contains("- `create` (String) Wait."), "{text}");
    }
}
