//! OVSDB's typed values (RFC 7047 5.1): atoms, sets and maps, with their JSON
//! wire forms. A column holding one atom is also a set of one, which is why
//! [`Datum::as_set`] accepts both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::error::OvsdbError;

/// One OVSDB atom.
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    /// `integer`
    Integer(i64),
    /// `real`
    Real(f64),
    /// `boolean`
    Boolean(bool),
    /// `string`
    String(String),
    /// `["uuid", "..."]`: a committed row.
    Uuid(String),
    /// `["named-uuid", "..."]`: a row inserted earlier in the same transaction.
    NamedUuid(String),
}

impl Atom {
    /// The wire form.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// Parse an atom from its wire form.
    pub fn from_json(value: &Value) -> Result<Self, OvsdbError> {
        match value {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n.as_f64().map(Atom::Real).ok_or_else(|| bad("atom", value)),
            },
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some("uuid"), Some(u)) => Ok(Atom::Uuid(u.to_string())),
                (Some("named-uuid"), Some(n)) => Ok(Atom::NamedUuid(n.to_string())),
                _ => Err(bad("atom", value)),
            },
            _ => Err(bad("atom", value)),
        }
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer atom.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The row id, if this is a uuid atom.
    pub fn as_uuid(&self) -> Option<&str> {
        match self {
            Atom::Uuid(u) => Some(u),
            _ => None,
        }
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom::String(s.to_string())
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom::String(s)
    }
}

impl From<i64> for Atom {
    fn from(i: i64) -> Self {
        Atom::Integer(i)
    }
}

impl From<bool> for Atom {
    fn from(b: bool) -> Self {
        Atom::Boolean(b)
    }
}

/// A column value: one atom, a set or a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// A bare atom (how a set of exactly one element is usually sent).
    Atom(Atom),
    /// `["set", [..]]`
    Set(Vec<Atom>),
    /// `["map", [[k, v], ..]]`
    Map(Vec<(Atom, Atom)>),
}

impl Datum {
    /// The wire form.
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Atom(atom) => atom.to_json(),
            Datum::Set(atoms) => {
                json!(["set", atoms.iter().map(Atom::to_json).collect::<Vec<_>>()])
            }
            Datum::Map(pairs) => json!([
                "map",
                pairs
                    .iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Parse a column value from its wire form.
    pub fn from_json(value: &Value) -> Result<Self, OvsdbError> {
        if let Value::Array(pair) = value {
            if pair.len() == 2 {
                match (pair[0].as_str(), &pair[1]) {
                    (Some("set"), Value::Array(items)) => {
                        return items
                            .iter()
                            .map(Atom::from_json)
                            .collect::<Result<_, _>>()
                            .map(Datum::Set);
                    }
                    (Some("map"), Value::Array(items)) => {
                        return items
                            .iter()
                            .map(|item| match item {
                                Value::Array(kv) if kv.len() == 2 => {
                                    Ok((Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?))
                                }
                                _ => Err(bad("map entry", item)),
                            })
                            .collect::<Result<_, _>>()
                            .map(Datum::Map);
                    }
                    _ => {}
                }
            }
        }
        Atom::from_json(value).map(Datum::Atom)
    }

    /// The elements, treating a bare atom as a set of one.
    pub fn as_set(&self) -> Result<Vec<Atom>, OvsdbError> {
        match self {
            Datum::Atom(atom) => Ok(vec![atom.clone()]),
            Datum::Set(atoms) => Ok(atoms.clone()),
            Datum::Map(_) => Err(OvsdbError::Value {
                what: "set".to_string(),
                reason: "got a map".to_string(),
            }),
        }
    }

    /// The single element of an optional column (`min: 0, max: 1`), if set.
    pub fn as_optional(&self) -> Result<Option<Atom>, OvsdbError> {
        let mut atoms = self.as_set()?;
        match atoms.len() {
            0 => Ok(None),
            1 => Ok(atoms.pop()),
            n => Err(OvsdbError::Value {
                what: "optional value".to_string(),
                reason: format!("has {n} elements"),
            }),
        }
    }
}

/// `["set", [...]]` of `atoms`.
pub fn set<I, A>(atoms: I) -> Value
where
    I: IntoIterator<Item = A>,
    A: Into<Atom>,
{
    Datum::Set(atoms.into_iter().map(Into::into).collect()).to_json()
}

/// The empty set, which clears an optional column.
pub fn empty_set() -> Value {
    json!(["set", []])
}

/// `["map", [[k, v], ...]]` of string pairs (external_ids, other_config, ...).
pub fn string_map<'a, I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    Datum::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Atom::from(k), Atom::from(v)))
            .collect(),
    )
    .to_json()
}

/// `["uuid", id]`
pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// `["named-uuid", name]`
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// `["set", [["uuid", ..], ..]]` of committed rows.
pub fn uuid_set<'a, I>(ids: I) -> Value
where
    I: IntoIterator<Item = &'a str>,
{
    Datum::Set(
        ids.into_iter()
            .map(|id| Atom::Uuid(id.to_string()))
            .collect(),
    )
    .to_json()
}

static NAMED_UUID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh `uuid-name` for an insert, unique in this process. RFC 7047 requires
/// `[a-zA-Z_][a-zA-Z0-9_]*`, so `prefix` is sanitised to that alphabet.
pub fn fresh_uuid_name(prefix: &str) -> String {
    let clean: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let n = NAMED_UUID_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("row_{clean}_{n}")
}

/// Decode a string-to-string map column (e.g. `external_ids`).
pub fn parse_string_map(value: &Value) -> Result<BTreeMap<String, String>, OvsdbError> {
    match Datum::from_json(value)? {
        Datum::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Atom::String(k), Atom::String(v)) => Ok((k, v)),
                (k, v) => Err(OvsdbError::Value {
                    what: "string map".to_string(),
                    reason: format!("entry {k:?} => {v:?} is not string to string"),
                }),
            })
            .collect(),
        _ => Err(bad("string map", value)),
    }
}

/// Decode a set-of-uuid column (or a single uuid) into row ids.
pub fn parse_uuid_set(value: &Value) -> Result<Vec<String>, OvsdbError> {
    Datum::from_json(value)?
        .as_set()?
        .into_iter()
        .map(|atom| match atom {
            Atom::Uuid(u) => Ok(u),
            other => Err(OvsdbError::Value {
                what: "uuid set".to_string(),
                reason: format!("element {other:?} is not a uuid"),
            }),
        })
        .collect()
}

fn bad(what: &str, value: &Value) -> OvsdbError {
    OvsdbError::Value {
        what: what.to_string(),
        reason: format!("unexpected JSON {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_wire_forms() {
        // Columns as ovsdb-server 3.1 returns them in a select on Port.
        let wire_forms = [
            json!(["set", []]),
            json!(10),
            json!(["map", [["measurelab-owner", "node-1"]]]),
            json!(["uuid", "2f3e8e1c-6d0b-4b53-9d0b-1f0b8f3c7a10"]),
            json!([
                "set",
                [
                    ["uuid", "2f3e8e1c-6d0b-4b53-9d0b-1f0b8f3c7a10"],
                    ["uuid", "5a0c4a5e-0000-4000-8000-000000000001"]
                ]
            ]),
            json!(true),
            json!(1.5),
        ];
        for value in wire_forms {
            assert_eq!(Datum::from_json(&value).unwrap().to_json(), value);
        }
    }

    #[test]
    fn decodes_a_recorded_select_row() {
        // Recorded: select of Port p1 (tag=10, owner-tagged) from ovsdb-server 3.1.
        let row: Value = serde_json::from_str(
            r#"{"external_ids":["map",[["measurelab-owner","node-1"]]],"interfaces":["uuid","7ae376c3-fa5d-4612-92e6-22547bcae37d"],"name":"p1","qos":["set",[]],"tag":10}"#,
        )
        .unwrap();
        assert_eq!(
            parse_string_map(&row["external_ids"]).unwrap()["measurelab-owner"],
            "node-1"
        );
        assert_eq!(
            parse_uuid_set(&row["interfaces"]).unwrap(),
            vec!["7ae376c3-fa5d-4612-92e6-22547bcae37d"]
        );
        assert_eq!(
            Datum::from_json(&row["qos"])
                .unwrap()
                .as_optional()
                .unwrap(),
            None
        );
        assert_eq!(
            Datum::from_json(&row["tag"])
                .unwrap()
                .as_optional()
                .unwrap(),
            Some(Atom::Integer(10))
        );
    }

    #[test]
    fn optional_columns_and_sets() {
        assert_eq!(
            Datum::from_json(&json!(["set", []]))
                .unwrap()
                .as_optional()
                .unwrap(),
            None
        );
        assert_eq!(
            Datum::from_json(&json!(20)).unwrap().as_optional().unwrap(),
            Some(Atom::Integer(20))
        );
        assert!(Datum::from_json(&json!(["set", [1, 2]]))
            .unwrap()
            .as_optional()
            .is_err());
        let ids = parse_uuid_set(&json!(["set", [["uuid", "a"], ["uuid", "b"]]])).unwrap();
        assert_eq!(ids, vec!["a", "b"]);
        assert_eq!(parse_uuid_set(&json!(["uuid", "a"])).unwrap(), vec!["a"]);
        assert!(parse_uuid_set(&json!(["set", ["x"]])).is_err());
    }

    #[test]
    fn builders_produce_wire_forms() {
        assert_eq!(string_map([("k", "v")]), json!(["map", [["k", "v"]]]));
        assert_eq!(set(["a", "b"]), json!(["set", ["a", "b"]]));
        assert_eq!(named_uuid("p1"), json!(["named-uuid", "p1"]));
        assert_eq!(uuid_set(["u"]), json!(["set", [["uuid", "u"]]]));
        let name = fresh_uuid_name("port vm-1");
        assert!(name.starts_with("row_port_vm_1_"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let map = parse_string_map(&json!(["map", [["a", "1"], ["b", "2"]]])).unwrap();
        assert_eq!(map.get("b").map(String::as_str), Some("2"));
        assert!(parse_string_map(&json!(["map", [["a", 1]]])).is_err());
        assert!(Atom::from_json(&json!(["bogus", "x"])).is_err());
    }
}
