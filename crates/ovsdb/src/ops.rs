//! Builders for RFC 7047 5.2 transaction operations and their results.
//!
//! Conditions are `[column, function, value]` triples; [`eq`] and [`uuid_is`]
//! cover what a reconciler needs. Following ovs' Python IDL, an optimistic
//! check ("the row still looks like what I read") is a [`wait`] with
//! `timeout: 0` and `until: "=="`, and non-root rows (Port, Interface, QoS) are
//! removed by dropping the reference, letting the server garbage-collect them.

use serde_json::{json, Map, Value};

use crate::error::OvsdbError;
use crate::value::Atom;

/// `[column, "==", value]`
pub fn eq(column: &str, value: Value) -> Value {
    json!([column, "==", value])
}

/// `["_uuid", "==", ["uuid", id]]`
pub fn uuid_is(id: &str) -> Value {
    json!(["_uuid", "==", ["uuid", id]])
}

/// `insert` of `row` into `table`; with `uuid_name`, later ops in the same
/// transaction can reference the row as `["named-uuid", uuid_name]`.
pub fn insert(table: &str, row: Value, uuid_name: Option<&str>) -> Value {
    let mut op = json!({"op": "insert", "table": table, "row": row});
    if let Some(name) = uuid_name {
        op["uuid-name"] = json!(name);
    }
    op
}

/// `select` of `columns` (all if `None`) from rows of `table` matching `conditions`.
pub fn select(table: &str, conditions: Vec<Value>, columns: Option<&[&str]>) -> Value {
    let mut op = json!({"op": "select", "table": table, "where": conditions});
    if let Some(columns) = columns {
        op["columns"] = json!(columns);
    }
    op
}

/// `update` of matching rows with the columns in `row`.
pub fn update(table: &str, conditions: Vec<Value>, row: Value) -> Value {
    json!({"op": "update", "table": table, "where": conditions, "row": row})
}

/// `mutate` of matching rows; each mutation is `[column, mutator, value]`.
pub fn mutate(table: &str, conditions: Vec<Value>, mutations: Vec<Value>) -> Value {
    json!({"op": "mutate", "table": table, "where": conditions, "mutations": mutations})
}

/// `[column, "insert", value]`: add elements to a set or map column.
pub fn mutation_insert(column: &str, value: Value) -> Value {
    json!([column, "insert", value])
}

/// `[column, "delete", value]`: remove elements (or map keys) from a column.
pub fn mutation_delete(column: &str, value: Value) -> Value {
    json!([column, "delete", value])
}

/// `delete` of matching rows (root tables only; see the module doc).
pub fn delete(table: &str, conditions: Vec<Value>) -> Value {
    json!({"op": "delete", "table": table, "where": conditions})
}

/// Which way a `wait` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// Proceed once the selected columns equal `rows`.
    Equal,
    /// Proceed once they differ from `rows`.
    NotEqual,
}

/// `wait` until the `columns` of rows matching `conditions` are (or are not)
/// exactly `rows`. `timeout_ms: Some(0)` makes it an immediate check that fails
/// the transaction with "timed out"; `None` waits indefinitely.
pub fn wait(
    table: &str,
    conditions: Vec<Value>,
    columns: &[&str],
    until: WaitUntil,
    rows: Vec<Value>,
    timeout_ms: Option<u64>,
) -> Value {
    let mut op = json!({
        "op": "wait",
        "table": table,
        "where": conditions,
        "columns": columns,
        "until": match until { WaitUntil::Equal => "==", WaitUntil::NotEqual => "!=" },
        "rows": rows,
    });
    if let Some(timeout) = timeout_ms {
        op["timeout"] = json!(timeout);
    }
    op
}

/// `comment`, recorded in the database log (handy to attribute a change).
pub fn comment(text: &str) -> Value {
    json!({"op": "comment", "comment": text})
}

/// The committed id of an `insert` result.
pub fn inserted_uuid(result: &Value) -> Result<String, OvsdbError> {
    match Atom::from_json(&result["uuid"]) {
        Ok(Atom::Uuid(id)) => Ok(id),
        _ => Err(OvsdbError::Value {
            what: "insert result".to_string(),
            reason: format!("no uuid in {result}"),
        }),
    }
}

/// The rows of a `select` result.
pub fn selected_rows(result: &Value) -> Result<Vec<Map<String, Value>>, OvsdbError> {
    let rows = result["rows"].as_array().ok_or_else(|| OvsdbError::Value {
        what: "select result".to_string(),
        reason: format!("no rows in {result}"),
    })?;
    rows.iter()
        .map(|row| {
            row.as_object().cloned().ok_or_else(|| OvsdbError::Value {
                what: "select row".to_string(),
                reason: format!("not an object: {row}"),
            })
        })
        .collect()
}

/// The `count` of an `update`, `mutate` or `delete` result.
pub fn affected_count(result: &Value) -> Result<u64, OvsdbError> {
    result["count"].as_u64().ok_or_else(|| OvsdbError::Value {
        what: "count".to_string(),
        reason: format!("no count in {result}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_op_matches_the_rfc_shape() {
        let op = wait(
            "Port",
            vec![uuid_is("u1")],
            &["tag"],
            WaitUntil::Equal,
            vec![json!({"tag": 10})],
            Some(0),
        );
        assert_eq!(
            op,
            json!({"op":"wait","table":"Port","where":[["_uuid","==",["uuid","u1"]]],
                   "columns":["tag"],"until":"==","rows":[{"tag":10}],"timeout":0})
        );
    }

    #[test]
    fn results_decode() {
        // Reply shapes as ovsdb-server 3.1 sends them.
        assert_eq!(
            inserted_uuid(&json!({"uuid":["uuid","8c0f2c2a-5f5e-4c37-a8b4-2f8e3f6b7a01"]}))
                .unwrap(),
            "8c0f2c2a-5f5e-4c37-a8b4-2f8e3f6b7a01"
        );
        assert!(inserted_uuid(&json!({})).is_err());
        let rows = selected_rows(&json!({"rows":[{"name":"br0","tag":["set",[]]}]})).unwrap();
        assert_eq!(rows[0]["name"], json!("br0"));
        assert_eq!(affected_count(&json!({"count": 2})).unwrap(), 2);
        let op = insert("Bridge", json!({"name":"br0"}), Some("br"));
        assert_eq!(op["uuid-name"], json!("br"));
        assert!(insert("Bridge", json!({}), None).get("uuid-name").is_none());
    }
}
