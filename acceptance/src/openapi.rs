//! Checks JSON bodies against the controller's OpenAPI document (the subset
//! of JSON Schema it uses: `$ref`, `type`, `required`, `properties`,
//! `additionalProperties`, `items`, `enum`, `nullable`). Used to prove that
//! what the provider sends and expects is what the controller publishes.

use serde_json::Value;

/// Every way `value` breaks `schema`, as `path: reason` lines (empty = valid).
pub fn violations(document: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check(document, schema, value, "$", &mut found, 0);
    found
}

/// The schema of a named component (`#/components/schemas/NAME`).
pub fn component<'a>(document: &'a Value, name: &str) -> &'a Value {
    &document["components"]["schemas"][name]
}

fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            document.pointer(pointer).unwrap_or(&Value::Null)
        }
        None => schema,
    }
}

fn check(
    document: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    found: &mut Vec<String>,
    depth: usize,
) {
    if depth > 32 {
        found.push(format!("{path}: schema nesting too deep"));
        return;
    }
    let schema = resolve(document, schema);
    if schema.is_null() {
        found.push(format!("{path}: unresolvable schema reference"));
        return;
    }
    if value.is_null() {
        if !schema["nullable"].as_bool().unwrap_or(false) {
            found.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            found.push(format!("{path}: {value} not in {allowed:?}"));
        }
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        found.push(format!("{path}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let Some(object) = value.as_object() {
        for required in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                found.push(format!("{path}: missing required property {required:?}"));
            }
        }
        for (key, item) in object {
            let item_path = format!("{path}.{key}");
            match schema["properties"].get(key) {
                Some(property) => check(document, property, item, &item_path, found, depth + 1),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => {
                        found.push(format!("{item_path}: property not in the schema"))
                    }
                    extra if extra.is_object() => {
                        check(document, extra, item, &item_path, found, depth + 1)
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            check(
                document,
                items,
                item,
                &format!("{path}[{index}]"),
                found,
                depth + 1,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document() -> Value {
        json!({"components": {"schemas": {
            "Status": {"type": "string", "enum": ["online", "offline"]},
            "Thing": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "status"],
                "properties": {
                    "name": {"type": "string"},
                    "status": {"$ref": "#/components/schemas/Status"},
                    "seen": {"type": "string", "nullable": true},
                    "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                    "count": {"type": "integer"}
                }
            }
        }}})
    }

    #[test]
    fn accepts_a_conforming_body() {
        let doc = document();
        let body =
            json!({"name": "n1", "status": "online", "seen": null, "tags": {"a": "b"}, "count": 3});
        assert!(violations(&doc, component(&doc, "Thing"), &body).is_empty());
    }

    #[test]
    fn names_every_violation() {
        let doc = document();
        let body =
            json!({"status": "up", "extra": 1, "tags": {"a": 2}, "count": 1.5, "seen": null});
        let found = violations(&doc, component(&doc, "Thing"), &body);
        assert!(
            found
                .iter()
                .any(|v| v.contains("missing required property \"name\"")),
            "{found:?}"
        );
        assert!(found.iter().any(|v| v.contains("$.status")), "{found:?}");
        assert!(
            found
                .iter()
                .any(|v| v.contains("$.extra: property not in the schema")),
            "{found:?}"
        );
        assert!(found.iter().any(|v| v.contains("$.tags.a")), "{found:?}");
        assert!(found.iter().any(|v| v.contains("$.count")), "{found:?}");
    }
}
