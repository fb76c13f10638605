//! The admin page reads stored result documents in JavaScript, where a field
//! that no longer exists reads as `undefined` and the chart goes blank without
//! an error. Every field the page reads through `d` (the document), `rx` (a
//! receiver) and `m` (its metrics) must be a field of the typed document in
//! `measurelab_api::result`, checked against the JSON Schema derived from it.

use measurelab_api::result::json_schema;
use serde_json::Value;

const PAGE: &str = include_str!("../src/ui/index.html");

/// Dotted field paths the page reads through the JavaScript variable `var`
/// (`m.one_way_delay_us.median` gives `one_way_delay_us.median`).
fn reads_through(page: &str, var: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    let prefix = format!("{var}.");
    let mut paths = Vec::new();
    for (at, _) in page.match_indices(&prefix) {
        if page[..at].ends_with(|c: char| is_ident(c) || c == '.') {
            continue;
        }
        let rest = &page[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(is_ident(c) || c == '.'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches('.');
        if !path.is_empty() && !paths.iter().any(|p| p == path) {
            paths.push(path.to_string());
        }
    }
    paths
}

/// The object schema a property leads to, following `$ref` and the
/// `anyOf: [{$ref}, {type: null}]` of an optional field.
fn object_of<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/$defs/");
        return object_of(root, &root["$defs"][name]);
    }
    if let Some(options) = schema["anyOf"].as_array() {
        if let Some(inner) = options.iter().find(|o| o["type"] != "null") {
            return object_of(root, inner);
        }
    }
    schema
}

fn resolves(root: &Value, start: &Value, path: &str) -> bool {
    let mut schema = object_of(root, start);
    for field in path.split('.') {
        match schema["properties"].get(field) {
            Some(next) => schema = object_of(root, next),
            None => return false,
        }
    }
    true
}

#[test]
fn the_page_reads_only_fields_the_result_document_has() {
    let root = json_schema();
    let receiver = &root["$defs"]["ReceiverResult"];
    let metrics = &root["$defs"]["ReceiverMetrics"];
    for (var, schema, expected) in [
        ("d", &root, "started_at"),
        ("rx", receiver, "point"),
        ("m", metrics, "one_way_delay_us.median"),
    ] {
        let paths = reads_through(PAGE, var);
        // Guards against the page renaming its variables, which would make
        // this test check nothing.
        assert!(
            paths.iter().any(|p| p == expected),
            "the page no longer reads {var}.{expected}: {paths:?}"
        );
        for path in &paths {
            assert!(
                resolves(&root, schema, path),
                "the admin page reads {var}.{path}, which the result document does not have"
            );
        }
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let root = json_schema();
    let metrics = &root["$defs"]["ReceiverMetrics"];
    let page = "const m = rx.metrics; m.jitter_us; m.one_way_delay_us.medain;";
    let paths = reads_through(page, "m");
    assert_eq!(paths, ["jitter_us", "one_way_delay_us.medain"]);
    assert!(resolves(&root, metrics, &paths[0]));
    assert!(!resolves(&root, metrics, &paths[1]));
}
