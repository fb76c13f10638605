//! `compat`: the wire contract of this tree against the last release's, so a
//! controller keeps serving agents and providers one minor version back
//! (docs/version-skew.md).
//!
//! - `node.proto` (agent ⟷ controller gRPC), with the rules `buf breaking`
//!   applies at its WIRE level: every message, enum, service and RPC of the
//!   release is still there; a field number keeps its type and cardinality;
//!   a removed field's number is reserved; enum numbers are not reused; RPCs
//!   keep their request, response and streaming shape. Field renames are
//!   allowed (binary protobuf carries numbers, not names).
//! - `openapi.json` (provider/CLI ⟷ controller HTTP): every released path and
//!   method is still served; a request body gains no required property (an
//!   older client would not send it); a response keeps every property (an
//!   older client may read it).
//! - The strict-safety rule: the project's client sends
//!   `fieldValidation=Strict` with every body, which is safe only while a
//!   body with every optional field unset holds nothing the release's
//!   controller lacks. Each body type the client sends is built from the
//!   required fields of its schema, serialized, and every key it emits
//!   must be a property the release has for that request.
//!
//! The release's files live in `compat/released/`; a release copies the
//! current ones there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use prost::Message;
use prost_types::{
    field_descriptor_proto::Label, DescriptorProto, EnumDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};
use serde_json::Value;

pub fn run(root: &Path) -> anyhow::Result<()> {
    let released = root.join("compat/released");
    let mut problems = proto_problems(
        &descriptors(&released.join("node.proto"))?,
        &descriptors(&root.join("crates/api/proto/node.proto"))?,
    );
    let read_json = |path: &Path| -> anyhow::Result<Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let (released_doc, current_doc) = (
        read_json(&released.join("openapi.json"))?,
        read_json(&root.join("controller/openapi.json"))?,
    );
    problems.extend(openapi_problems(&released_doc, &current_doc));
    problems.extend(strict_body_problems(
        &released_doc,
        &current_doc,
        &CLIENT_BODIES,
        NOT_STRICT,
    ));
    if !problems.is_empty() {
        bail!(
            "this tree breaks the released wire contract (compat/released/):\n  {}",
            problems.join("\n  ")
        );
    }
    println!(
        "node.proto and openapi.json are compatible with compat/released/, and the client's \
         minimal request bodies hold only fields the release knows"
    );
    Ok(())
}

/// `protoc`'s own parse of `proto`, so the check sees exactly what the
/// build sees.
fn descriptors(proto: &Path) -> anyhow::Result<FileDescriptorSet> {
    let out = tempfile::NamedTempFile::new()?;
    let dir = proto.parent().context("proto file has no directory")?;
    let status = Command::new("protoc")
        .arg(format!("--proto_path={}", dir.display()))
        .arg(format!("--descriptor_set_out={}", out.path().display()))
        .arg(proto)
        .status()
        .context("running protoc (Debian: protobuf-compiler)")?;
    if !status.success() {
        bail!("protoc could not parse {}", proto.display());
    }
    let bytes = std::fs::read(out.path())?;
    Ok(FileDescriptorSet::decode(&bytes[..])?)
}

/// Everything in the set, by fully qualified name.
#[derive(Default)]
struct Index<'a> {
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
    services: BTreeMap<String, &'a ServiceDescriptorProto>,
}

impl<'a> Index<'a> {
    fn of(set: &'a FileDescriptorSet) -> Self {
        let mut index = Index::default();
        for file in &set.file {
            let package = file.package().to_string();
            for message in &file.message_type {
                index.add_message(&package, message);
            }
            for e in &file.enum_type {
                index.enums.insert(format!("{package}.{}", e.name()), e);
            }
            for service in &file.service {
                index
                    .services
                    .insert(format!("{package}.{}", service.name()), service);
            }
        }
        index
    }

    fn add_message(&mut self, scope: &str, message: &'a DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e);
        }
        self.messages.insert(name, message);
    }
}

fn proto_problems(released: &FileDescriptorSet, current: &FileDescriptorSet) -> Vec<String> {
    let (old, new) = (Index::of(released), Index::of(current));
    let mut problems = Vec::new();
    for (name, old_message) in &old.messages {
        let Some(new_message) = new.messages.get(name) else {
            problems.push(format!("message {name} was removed"));
            continue;
        };
        let reserved = |number: i32| {
            new_message
                .reserved_range
                .iter()
                .any(|r| (r.start()..r.end()).contains(&number))
        };
        for old_field in &old_message.field {
            let number = old_field.number();
            match new_message.field.iter().find(|f| f.number() == number) {
                None if reserved(number) => {}
                None => problems.push(format!(
                    "{name}: field {number} ({}) was removed without `reserved {number};`",
                    old_field.name()
                )),
                Some(new_field) => {
                    if (new_field.r#type(), new_field.type_name())
                        != (old_field.r#type(), old_field.type_name())
                    {
                        problems.push(format!(
                            "{name}: field {number} changed type from {:?} {} to {:?} {}",
                            old_field.r#type(),
                            old_field.type_name(),
                            new_field.r#type(),
                            new_field.type_name()
                        ));
                    }
                    let repeated =
                        |f: &prost_types::FieldDescriptorProto| f.label() == Label::Repeated;
                    if repeated(new_field) != repeated(old_field) {
                        problems.push(format!(
                            "{name}: field {number} ({}) changed between repeated and single",
                            old_field.name()
                        ));
                    }
                    if new_field.oneof_index.is_some() != old_field.oneof_index.is_some() {
                        problems.push(format!(
                            "{name}: field {number} ({}) moved into or out of a oneof",
                            old_field.name()
                        ));
                    }
                }
            }
        }
    }
    for (name, old_enum) in &old.enums {
        let Some(new_enum) = new.enums.get(name) else {
            problems.push(format!("enum {name} was removed"));
            continue;
        };
        for value in &old_enum.value {
            let kept = new_enum.value.iter().any(|v| v.number() == value.number());
            let reserved = new_enum
                .reserved_range
                .iter()
                .any(|r| (r.start()..=r.end()).contains(&value.number()));
            if !kept && !reserved {
                problems.push(format!(
                    "enum {name}: value {} ({}) was removed without being reserved",
                    value.number(),
                    value.name()
                ));
            }
        }
    }
    for (name, old_service) in &old.services {
        let Some(new_service) = new.services.get(name) else {
            problems.push(format!("service {name} was removed"));
            continue;
        };
        for old_method in &old_service.method {
            let Some(new_method) = new_service
                .method
                .iter()
                .find(|m| m.name() == old_method.name())
            else {
                problems.push(format!("rpc {name}.{} was removed", old_method.name()));
                continue;
            };
            let shape = |m: &prost_types::MethodDescriptorProto| {
                (
                    m.input_type().to_string(),
                    m.output_type().to_string(),
                    m.client_streaming(),
                    m.server_streaming(),
                )
            };
            if shape(new_method) != shape(old_method) {
                problems.push(format!(
                    "rpc {name}.{} changed its request, response or streaming: {:?} -> {:?}",
                    old_method.name(),
                    shape(old_method),
                    shape(new_method)
                ));
            }
        }
    }
    problems
}

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

fn openapi_problems(released: &Value, current: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let empty = serde_json::Map::new();
    let paths = |doc: &Value| doc["paths"].as_object().cloned().unwrap_or_default();
    let (old_paths, new_paths) = (paths(released), paths(current));
    for (path, old_item) in &old_paths {
        for method in METHODS {
            let Some(old_op) = old_item.get(method) else {
                continue;
            };
            let Some(new_op) = new_paths.get(path).and_then(|item| item.get(method)) else {
                problems.push(format!(
                    "{} {path} is no longer served",
                    method.to_uppercase()
                ));
                continue;
            };
            let at = format!("{} {path}", method.to_uppercase());
            if let (Some(old_body), Some(new_body)) = (
                json_schema(released, &old_op["requestBody"]),
                json_schema(current, &new_op["requestBody"]),
            ) {
                let old_required = required(&old_body);
                for field in required(&new_body).difference(&old_required) {
                    problems.push(format!(
                        "{at}: request body now requires `{field}`, which older clients do not send"
                    ));
                }
            }
            let responses = |op: &Value| {
                op["responses"]
                    .as_object()
                    .cloned()
                    .unwrap_or(empty.clone())
            };
            for (status, old_response) in responses(old_op) {
                let Some(old_schema) = json_schema(released, &old_response) else {
                    continue;
                };
                let new_schema = responses(new_op)
                    .get(&status)
                    .and_then(|r| json_schema(current, r));
                let Some(new_schema) = new_schema else {
                    problems.push(format!(
                        "{at}: response {status} no longer has its JSON body"
                    ));
                    continue;
                };
                for field in
                    properties(released, &old_schema).difference(&properties(current, &new_schema))
                {
                    problems.push(format!(
                        "{at}: response {status} lost `{field}`, which older clients may read"
                    ));
                }
            }
        }
    }
    problems
}

/// The `application/json` schema of a request body or response, with a
/// top-level `$ref` followed.
fn json_schema(doc: &Value, holder: &Value) -> Option<Value> {
    let schema = holder["content"]["application/json"].get("schema")?;
    Some(resolve(doc, schema))
}

fn resolve(doc: &Value, schema: &Value) -> Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            doc.pointer(pointer).cloned().unwrap_or(Value::Null)
        }
        None => schema.clone(),
    }
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Property paths (`vms[].address`), through `$ref`s, arrays, `allOf` parts
/// (how utoipa writes a nullable reference) and nested objects, a few levels
/// deep: what a client could read.
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    collect_properties(doc, schema, "", 0, &mut paths);
    paths
}

fn collect_properties(
    doc: &Value,
    schema: &Value,
    prefix: &str,
    depth: usize,
    paths: &mut BTreeSet<String>,
) {
    if depth > 4 {
        return;
    }
    let schema = resolve(doc, schema);
    for part in ["allOf", "oneOf", "anyOf"]
        .iter()
        .flat_map(|key| schema[*key].as_array().into_iter().flatten())
    {
        collect_properties(doc, part, prefix, depth + 1, paths);
    }
    if let Some(items) = schema.get("items") {
        collect_properties(doc, items, &format!("{prefix}[]"), depth + 1, paths);
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let path = match prefix {
            "" => name.clone(),
            _ => format!("{prefix}.{name}"),
        };
        collect_properties(doc, property, &path, depth + 1, paths);
        paths.insert(path);
    }
}

/// A body type's minimal JSON through the Rust type and back: what the
/// client would send with every optional field unset.
type RoundTrip = fn(Value) -> Result<Value, String>;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    minimal: Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(minimal).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Every body the project's client (`measurelab_api::client`, the
/// provider, the CLI) sends with `fieldValidation=Strict`, by its schema
/// name in the OpenAPI document.
const CLIENT_BODIES: [(&str, RoundTrip); 19] = {
    use measurelab_api::http::*;
    [
        ("ApiTokenCreate", round_trip::<ApiTokenCreate>),
        ("ApplianceCreate", round_trip::<ApplianceCreate>),
        ("DeploymentCreate", round_trip::<DeploymentCreate>),
        ("DeploymentPatch", round_trip::<DeploymentPatch>),
        ("JoinTokenCreate", round_trip::<JoinTokenCreate>),
        ("NodePatch", round_trip::<NodePatch>),
        ("PlatformCreate", round_trip::<PlatformCreate>),
        ("PlatformPatch", round_trip::<PlatformPatch>),
        ("PlatformPeerCreate", round_trip::<PlatformPeerCreate>),
        ("ProgramCreate", round_trip::<ProgramCreate>),
        ("QosPolicyCreate", round_trip::<QosPolicyCreate>),
        ("QosPolicyPatch", round_trip::<QosPolicyPatch>),
        ("RequestOptions", round_trip::<RequestOptions>),
        (
            "ResultDocument",
            round_trip::<measurelab_api::result::ResultDocument>,
        ),
        ("TaskCreate", round_trip::<TaskCreate>),
        ("TenantCreate", round_trip::<TenantCreate>),
        ("TenantPatch", round_trip::<TenantPatch>),
        ("VmCreate", round_trip::<VmCreate>),
        ("VmPatch", round_trip::<VmPatch>),
    ]
};

/// JSON bodies the client sends without `fieldValidation=Strict`, which
/// the rule does not concern: `ExecOpen` goes with the connection upgrade.
const NOT_STRICT: &[&str] = &["ExecOpen"];

/// The strict-safety rule (see the module doc) for every JSON request body
/// of `current`, judged against the same request's body in `released`. A
/// body schema in neither `bodies` nor `not_strict` is a problem too, so a
/// new body type is classified when it is added.
fn strict_body_problems(
    released: &Value,
    current: &Value,
    bodies: &[(&str, RoundTrip)],
    not_strict: &[&str],
) -> Vec<String> {
    let mut problems = BTreeSet::new();
    let paths = current["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        for method in METHODS {
            let Some(reference) = item[method]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"]
                .as_str()
            else {
                continue;
            };
            let at = format!("{} {path}", method.to_uppercase());
            let name = reference.rsplit('/').next().unwrap_or(reference);
            if not_strict.contains(&name) {
                continue;
            }
            let Some((_, round_trip)) = bodies.iter().find(|(body, _)| *body == name) else {
                problems.insert(format!(
                    "{at}: request body `{name}` is in neither CLIENT_BODIES nor NOT_STRICT of \
                     xtask/src/compat.rs; add it to the one that says how the client sends it"
                ));
                continue;
            };
            // A request the release did not have fails on an older
            // controller whatever its body holds.
            let Some(old_body) = released["paths"][path][method]
                .get("requestBody")
                .and_then(|body| json_schema(released, body))
            else {
                continue;
            };
            let minimal = minimal_for_ref(current, reference);
            let sent = match round_trip(minimal.clone()) {
                Ok(sent) => sent,
                Err(e) => {
                    problems.insert(format!(
                        "{at}: cannot build a minimal `{name}` from its schema \
                         ({minimal}): {e}"
                    ));
                    continue;
                }
            };
            let known = properties(released, &old_body);
            let mut emitted = BTreeSet::new();
            emitted_paths(&sent, "", &mut emitted);
            for field in emitted.difference(&known) {
                problems.insert(format!(
                    "{at}: `{name}` sends `{field}` even when it is not set, and the release's \
                     controller does not know it, so it refuses the request under \
                     fieldValidation=Strict; make the field optional and skipped when unset \
                     (#[serde(skip_serializing_if = ...)], docs/version-skew.md)"
                ));
            }
        }
    }
    problems.into_iter().collect()
}

fn minimal_for_ref(doc: &Value, reference: &str) -> Value {
    minimal_value(doc, &serde_json::json!({ "$ref": reference }), 0)
}

/// A value of `schema` with only its required properties, each the
/// simplest value its schema allows: what a client sends when a user set
/// nothing optional.
fn minimal_value(doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 8 {
        return Value::Null;
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        let first = schema[key]
            .as_array()
            .and_then(|parts| parts.iter().find(|part| part["type"] != "null"));
        if let Some(first) = first {
            return minimal_value(doc, first, depth + 1);
        }
    }
    let kind = match &schema["type"] {
        Value::String(kind) => kind.as_str(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    };
    let minimum = schema["minimum"].as_f64().unwrap_or(1.0).max(1.0);
    match kind {
        "object" => Value::Object(
            required(&schema)
                .into_iter()
                .map(|name| {
                    let value = minimal_value(doc, &schema["properties"][&name], depth + 1);
                    (name, value)
                })
                .collect(),
        ),
        "array" => match schema["minItems"].as_u64() {
            Some(n) if n > 0 => Value::Array(vec![
                minimal_value(doc, &schema["items"], depth + 1);
                n as usize
            ]),
            _ => Value::Array(Vec::new()),
        },
        "string" => Value::String(
            match schema["format"].as_str() {
                Some("date-time") => "2026-01-01T00:00:00Z",
                Some("uuid") => "6f1c2a3b-4d5e-4f60-8172-8394a5b6c7d8",
                Some("ipv4") => "10.0.0.1",
                _ => "x",
            }
            .into(),
        ),
        "integer" => Value::from(minimum as i64),
        "number" => Value::from(minimum),
        "boolean" => Value::Bool(false),
        _ => Value::Null,
    }
}

/// The key paths of a JSON value in the form [`properties`] names them
/// (`vms[].address`).
fn emitted_paths(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                let path = match prefix {
                    "" => name.clone(),
                    _ => format!("{prefix}.{name}"),
                };
                emitted_paths(inner, &path, paths);
                paths.insert(path);
            }
        }
        Value::Array(items) => {
            for item in items {
                emitted_paths(item, &format!("{prefix}[]"), paths);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(proto: &str) -> FileDescriptorSet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.proto");
        std::fs::write(&path, proto).unwrap();
        descriptors(&path).unwrap()
    }

    const RELEASED: &str = r#"
        syntax = "proto3";
        package p.v1;
        enum Power { POWER_UNSPECIFIED = 0; POWER_ON = 1; POWER_OFF = 2; }
        message Vm { string id = 1; uint32 vcpus = 2; repeated string tags = 3; Power power = 4; }
        message Ask { string id = 1; }
        message Spare { bool x = 1; }
        service Node { rpc Get(Ask) returns (Vm); rpc Watch(Ask) returns (stream Vm); }
    "#;

    fn problems_after(edit: impl Fn(&str) -> String) -> Vec<String> {
        proto_problems(&set(RELEASED), &set(&edit(RELEASED)))
    }

    #[test]
    fn compatible_proto_changes_pass() {
        assert!(problems_after(|p| p.to_string()).is_empty());
        // New field, renamed field, removed-and-reserved field, new enum value, new rpc.
        let edited = problems_after(|p| {
            p.replace("uint32 vcpus = 2;", "uint32 cpus = 2; uint64 memory = 5;")
                .replace("repeated string tags = 3;", "reserved 3;")
                .replace("POWER_OFF = 2;", "POWER_OFF = 2; POWER_PAUSED = 3;")
                .replace(
                    "rpc Watch(Ask) returns (stream Vm);",
                    "rpc Watch(Ask) returns (stream Vm); rpc Stop(Ask) returns (Vm);",
                )
        });
        assert!(edited.is_empty(), "{edited:?}");
    }

    #[test]
    fn breaking_proto_changes_are_named() {
        let cases: [(&str, &str, &str); 7] = [
            (
                "uint32 vcpus = 2;",
                "uint64 vcpus = 2;",
                "field 2 changed type",
            ),
            (
                "repeated string tags = 3;",
                "",
                "field 3 (tags) was removed",
            ),
            (
                "repeated string tags = 3;",
                "string tags = 3;",
                "repeated and single",
            ),
            ("POWER_OFF = 2;", "", "value 2 (POWER_OFF) was removed"),
            (
                "message Spare { bool x = 1; }",
                "",
                "message p.v1.Spare was removed",
            ),
            (
                "rpc Watch(Ask) returns (stream Vm);",
                "rpc Watch(Ask) returns (Vm);",
                "rpc p.v1.Node.Watch changed",
            ),
            (
                "rpc Get(Ask) returns (Vm);",
                "",
                "rpc p.v1.Node.Get was removed",
            ),
        ];
        for (from, to, expected) in cases {
            let problems = problems_after(|p| p.replace(from, to));
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{from} -> {to}: expected {expected:?} in {problems:?}"
            );
        }
    }

    fn doc(required: &[&str], response_fields: &[&str]) -> Value {
        let properties: serde_json::Map<String, Value> = response_fields
            .iter()
            .map(|f| (f.to_string(), serde_json::json!({"type": "string"})))
            .collect();
        serde_json::json!({
            "paths": {"/v1/vms": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/VmCreate"}}}},
                "responses": {"201": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Vm"}}}}}
            }}},
            "components": {"schemas": {
                "VmCreate": {"type": "object", "required": required, "properties": {}},
                "Vm": {"type": "object", "properties": properties}
            }}
        })
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Careful {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_gib: Option<u32>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Careless {
        name: String,
        #[serde(default)]
        disk_gib: Option<u32>,
    }

    fn body_doc(properties: &[&str]) -> Value {
        let properties: serde_json::Map<String, Value> = properties
            .iter()
            .map(|f| (f.to_string(), serde_json::json!({"type": "string"})))
            .collect();
        serde_json::json!({
            "paths": {"/v1/vms": {"post": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/VmCreate"}}}}
            }}},
            "components": {"schemas": {
                "VmCreate": {"type": "object", "required": ["name"], "properties": properties}
            }}
        })
    }

    #[test]
    fn a_new_body_field_must_be_skipped_when_unset() {
        let released = body_doc(&["name"]);
        let current = body_doc(&["name", "disk_gib"]);
        let careful: [(&str, RoundTrip); 1] = [("VmCreate", round_trip::<Careful>)];
        assert_eq!(
            strict_body_problems(&released, &current, &careful, &[]),
            Vec::<String>::new()
        );
        let careless: [(&str, RoundTrip); 1] = [("VmCreate", round_trip::<Careless>)];
        let problems = strict_body_problems(&released, &current, &careless, &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .starts_with("POST /v1/vms: `VmCreate` sends `disk_gib` even when it is not set"),
            "{}",
            problems[0]
        );
        // A body the lists do not classify is named; one they call not
        // strict is left alone.
        let problems = strict_body_problems(&released, &current, &[], &[]);
        assert!(
            problems[0].contains("`VmCreate` is in neither CLIENT_BODIES nor NOT_STRICT"),
            "{problems:?}"
        );
        assert!(strict_body_problems(&released, &current, &[], &["VmCreate"]).is_empty());
    }

    #[test]
    fn every_body_the_client_sends_builds_from_the_tree_s_schema() {
        let current: Value = serde_json::from_str(include_str!("../../controller/openapi.json"))
            .expect("controller/openapi.json parses");
        // Against itself the rule can only fail where a minimal body cannot
        // be built, or a body is unclassified.
        assert_eq!(
            strict_body_problems(&current, &current, &CLIENT_BODIES, NOT_STRICT),
            Vec::<String>::new()
        );
    }

    #[test]
    fn openapi_rules() {
        let released = doc(&["name"], &["id", "name"]);
        assert!(openapi_problems(&released, &doc(&["name"], &["id", "name", "new"])).is_empty());
        let problems = openapi_problems(&released, &doc(&["name", "disk"], &["id"]));
        assert_eq!(
            problems,
            [
                "POST /v1/vms: request body now requires `disk`, which older clients do not send",
                "POST /v1/vms: response 201 lost `name`, which older clients may read",
            ]
        );
        let gone = serde_json::json!({"paths": {}});
        assert_eq!(
            openapi_problems(&released, &gone),
            ["POST /v1/vms is no longer served"]
        );
    }
}
