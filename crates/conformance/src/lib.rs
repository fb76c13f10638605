//! Checks JSON bodies against the controller's OpenAPI document
//! (`/v1/openapi.json`, OpenAPI 3.1) with a full JSON Schema 2020-12
//! validator: `minimum`, `maximum`, `format`, `additionalProperties`, `enum`,
//! `$ref` and the rest all count.
//!
//! The controller's conformance tests and the provider's acceptance tests
//! both use it, so a body that passes one passes the other.

use base64::Engine;
use serde_json::{json, Value};

/// Why a body could not be checked at all (as opposed to a body that breaks
/// its schema, which is a list of violations).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The document has no `components/schemas/<name>`.
    #[error("the OpenAPI document has no schema named {0:?}")]
    NoSuchComponent(String),
    /// The component is not a schema the validator can compile.
    #[error("schema {component:?} does not compile: {message}")]
    InvalidSchema {
        /// Component name.
        component: String,
        /// The validator's reason.
        message: String,
    },
}

/// Every way `body` breaks the component schema `component` of `document`, as
/// `$/json/pointer: reason` lines (empty: it conforms).
pub fn violations(
    document: &Value,
    component: &str,
    body: &Value,
) -> Result<Vec<String>, ConformanceError> {
    let components = &document["components"];
    if components["schemas"].get(component).is_none() {
        return Err(ConformanceError::NoSuchComponent(component.to_string()));
    }
    // `#/components/...` references resolve against the root of the schema
    // resource, so the components travel along under the same key.
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{component}"),
        "components": components,
    });
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        // Formats are annotations only in 2020-12 unless asked for.
        .should_validate_formats(true)
        // OpenAPI's `byte`: standard base64.
        .with_format("byte", |text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .is_ok()
        })
        .build(&schema)
        .map_err(|error| ConformanceError::InvalidSchema {
            component: component.to_string(),
            message: error.to_string(),
        })?;
    Ok(validator
        .iter_errors(body)
        .map(|error| format!("${}: {error}", error.instance_path()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small document in the shape utoipa writes (3.1: nullable as a type
    /// list, closed objects).
    fn document() -> Value {
        json!({"openapi": "3.1.0", "components": {"schemas": {
            "Status": {"type": "string", "enum": ["online", "offline"]},
            "Thing": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "status"],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/Status"},
                    "seen": {"type": ["string", "null"], "format": "date-time"},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "count": {"type": "integer", "minimum": 1, "maximum": 64},
                    "group": {"type": "string", "format": "ipv4"},
                    "id": {"type": "string", "format": "uuid"},
                    "content": {"type": "string", "format": "byte"}
                }
            }
        }}})
    }

    fn found(body: Value) -> Vec<String> {
        violations(&document(), "Thing", &body).unwrap()
    }

    #[test]
    fn accepts_a_conforming_body() {
        let body = json!({"name": "n1", "status": "online", "seen": null, "tags": {"a": "b"},
            "count": 64, "group": "239.1.1.1", "id": "6f1c3e0a-8a4b-4a8e-9d55-2b1f0c9e7a10",
            "content": "eA=="});
        assert_eq!(found(body), Vec::<String>::new());
        let body = json!({"name": "n1", "status": "offline", "seen": "2026-01-01T00:00:00Z"});
        assert_eq!(found(body), Vec::<String>::new());
    }

    /// One body per keyword the hand-written checkers ignored, and the
    /// structural ones they did check; each must be named.
    #[test]
    fn names_every_violation() {
        let base = json!({"name": "n1", "status": "online"});
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            found(body)
        };
        let cases = [
            ("count below minimum", with("count", json!(0)), "/count"),
            ("count above maximum", with("count", json!(65)), "/count"),
            ("count not an integer", with("count", json!(1.5)), "/count"),
            (
                "seen not a date-time",
                with("seen", json!("yesterday")),
                "/seen",
            ),
            (
                "group not an IPv4 address",
                with("group", json!("239.1.1")),
                "/group",
            ),
            ("id not a UUID", with("id", json!("n1")), "/id"),
            (
                "content not base64",
                with("content", json!("%%%")),
                "/content",
            ),
            ("unknown property", with("extra", json!(1)), ""),
            (
                "status not in the enum",
                with("status", json!("up")),
                "/status",
            ),
            (
                "tag value not a string",
                with("tags", json!({"a": 2})),
                "/tags/a",
            ),
            (
                "null where not nullable",
                with("name", Value::Null),
                "/name",
            ),
            (
                "required property missing",
                found(json!({"status": "online"})),
                "",
            ),
        ];
        for (what, violations, path) in cases {
            assert_eq!(violations.len(), 1, "{what}: {violations:?}");
            assert!(
                violations[0].starts_with(&format!("${path}: ")),
                "{what}: {violations:?}"
            );
        }
    }

    #[test]
    fn an_unknown_component_is_an_error_not_a_pass() {
        assert!(matches!(
            violations(&document(), "Nope", &json!({})),
            Err(ConformanceError::NoSuchComponent(name)) if name == "Nope"
        ));
    }
}
