//! The OpenAPI document of the public HTTP API, derived from the body types
//! in `measurelab_api::http` and the operations declared here.
//!
//! Served at `/v1/openapi.json`; `controller/openapi.json` is a generated copy
//! (`cargo run -p xtask -- openapi` writes it, `--check` compares).
//!
//! Each function below only carries an operation's `#[utoipa::path]`: the
//! handlers live in the API layer, and a test asks the real router that every
//! route it serves is documented here and nothing else is.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use measurelab_api::http::{
    Appliance, ApplianceCreate, ApplianceList, Deployment, DeploymentCreate, DeploymentList,
    ErrorBody, EventList, LogList, Node, NodeList, NodePatch, Platform, PlatformCreate,
    PlatformList, PlatformPatch, Program, ProgramCreate, ProgramList, QosPolicy, QosPolicyCreate,
    QosPolicyList, QosPolicyPatch, RequestOptions, ResultDocumentSchema, ResultList, ResultRecord,
    Task, TaskCreate, TaskList, Vm, VmCreate, VmList, VmPatch,
};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{AdditionalProperties, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The document as pretty-printed JSON (what `/v1/openapi.json` serves and
/// what `controller/openapi.json` holds, plus a final newline there).
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        // Serializing a tree of maps, strings and numbers cannot fail.
        serde_json::to_string_pretty(&ApiDoc::openapi()).unwrap_or_default()
    });
    &JSON
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "measurelab controller public API",
        version = "1.0.0",
        description = "HTTP/JSON API of the measurelab controller. Everything under /v1 needs \
            `Authorization: Bearer <admin token>` (the token is in <data_dir>/admin.token). \
            Every error has the body {\"error\":{\"code\",\"message\",\"field\"}}. \
            Request bodies reject unknown fields and are limited to 1 MiB."
    ),
    servers((url = "http://127.0.0.1:7070")),
    security(("bearer" = [])),
    paths(
        operations::admin_page,
        operations::healthz,
        operations::openapi,
        operations::list_nodes,
        operations::get_node,
        operations::patch_node,
        operations::node_logs,
        operations::list_events,
        operations::list_platforms,
        operations::create_platform,
        operations::get_platform,
        operations::patch_platform,
        operations::delete_platform,
        operations::start_platform,
        operations::pause_platform,
        operations::list_qos_policies,
        operations::create_qos_policy,
        operations::get_qos_policy,
        operations::patch_qos_policy,
        operations::delete_qos_policy,
        operations::list_appliances,
        operations::create_appliance,
        operations::get_appliance,
        operations::list_vms,
        operations::create_vm,
        operations::get_vm,
        operations::patch_vm,
        operations::delete_vm,
        operations::vm_logs,
        operations::list_programs,
        operations::create_program,
        operations::get_program,
        operations::delete_program,
        operations::list_deployments,
        operations::create_deployment,
        operations::get_deployment,
        operations::delete_deployment,
        operations::list_tasks,
        operations::create_task,
        operations::get_task,
        operations::delete_task,
        operations::list_results,
        operations::post_result,
        operations::latest_result,
        operations::export_results,
    ),
    components(schemas(ErrorBody, ResultDocumentSchema)),
    modifiers(&Shared)
)]
struct ApiDoc;

/// The parts utoipa's derives do not write: the bearer scheme, the shared
/// error responses, no auth on the public routes, optional bodies, no
/// module-name tags, and closed response objects.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            "bearer".into(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Contents of <data_dir>/admin.token."))
                    .build(),
            ),
        );
        for (name, description) in ERROR_RESPONSES {
            components
                .responses
                .insert(name.to_string(), error_response(description).into());
        }
        // Every body the controller sends is serialized from these structs,
        // so no other property can appear; saying so lets the conformance
        // tests catch a response that grew a field the type does not have.
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(object)) = schema {
                if !object.properties.is_empty() && object.additional_properties.is_none() {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = path == "/" || path == "/healthz";
            // The body of start and pause carries only an idempotency key.
            let optional_body = path.ends_with("/start") || path.ends_with("/pause");
            for operation in operations(item) {
                // utoipa tags each operation with its Rust module's name.
                operation.tags = None;
                if public {
                    operation.security = Some(Vec::new());
                }
                if let (true, Some(body)) = (optional_body, operation.request_body.as_mut()) {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The error answers, each a `components/responses` entry with an
/// [`ErrorBody`]. The descriptions name the `code` the body carries.
const ERROR_RESPONSES: &[(&str, &str)] = &[
    (
        "Unauthorized",
        "Missing, malformed or wrong bearer token (code `unauthorized`, field `Authorization`).",
    ),
    ("NotFound", "No such object (code `not_found`)."),
    (
        "MalformedJson",
        "The body is not valid JSON (code `malformed_json`).",
    ),
    (
        "InvalidField",
        "A field is unknown, missing, of the wrong type or invalid (code `invalid_field`; \
         `field` is its JSON path or query parameter).",
    ),
    (
        "PayloadTooLarge",
        "The body exceeds 1 MiB (code `payload_too_large`).",
    ),
    (
        "UnsupportedMediaType",
        "The body is not application/json (code `unsupported_media_type`).",
    ),
    (
        "Conflict",
        "Conflicts with the current state (code `conflict`: name taken, still in use, \
         request_id reused), or a pool is exhausted (code `pool_exhausted`).",
    ),
];

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// The error answers an operation can give, as references to the shared
/// responses; one type per kind of operation.
macro_rules! error_answers {
    ($($(#[$doc:meta])* $kind:ident: $($status:literal => $response:literal),+;)+) => {$(
        $(#[$doc])*
        struct $kind;

        impl IntoResponses for $kind {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                [$(($status.to_string(), Ref::from_response_name($response).into())),+].into()
            }
        }
    )+};
}

error_answers! {
    /// A read without parameters.
    ListErrors: "401" => "Unauthorized";
    /// A read of one object, or a read with query parameters.
    GetErrors: "401" => "Unauthorized", "404" => "NotFound";
    /// A read of a collection with query parameters the server checks.
    FilterErrors: "401" => "Unauthorized", "422" => "InvalidField";
    /// A read of one object or its rows, with query parameters the server checks.
    QueryErrors: "401" => "Unauthorized", "404" => "NotFound", "422" => "InvalidField";
    /// A POST that creates an object.
    CreateErrors: "400" => "MalformedJson", "401" => "Unauthorized", "409" => "Conflict",
        "413" => "PayloadTooLarge", "415" => "UnsupportedMediaType", "422" => "InvalidField";
    /// A PATCH of one object.
    PatchErrors: "400" => "MalformedJson", "401" => "Unauthorized", "404" => "NotFound",
        "409" => "Conflict", "413" => "PayloadTooLarge", "415" => "UnsupportedMediaType",
        "422" => "InvalidField";
    /// A request with a body on one object that cannot conflict (start,
    /// pause, node labels).
    UpdateErrors: "400" => "MalformedJson", "401" => "Unauthorized", "404" => "NotFound",
        "413" => "PayloadTooLarge", "415" => "UnsupportedMediaType", "422" => "InvalidField";
    /// A POST that stores a document (no name to conflict on).
    UploadErrors: "400" => "MalformedJson", "401" => "Unauthorized", "413" => "PayloadTooLarge",
        "415" => "UnsupportedMediaType", "422" => "InvalidField";
    /// A DELETE of one object.
    DeleteErrors: "401" => "Unauthorized", "404" => "NotFound", "409" => "Conflict",
        "422" => "InvalidField";
}

const NODE_KEY: &str = "Node id (UUID) or node name.";
const KEY: &str = "Id or name (VMs: id, `platform/name` with `/` URL-encoded, or a name unique \
                   across platforms).";
const REQUEST_ID: &str = "Idempotency key: a repeated request with the same key returns the \
                          first answer and changes nothing.";

/// One stub per operation. None is ever called: each carries its
/// operation's `#[utoipa::path]`, and the types only give the query
/// parameters and the health body a schema.
#[expect(dead_code, reason = "the items exist for their OpenAPI attributes")]
mod operations {
    use super::*;

    /// `GET /healthz` body.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    struct Health {
        /// Always `ok`.
        #[schema(inline)]
        status: HealthStatus,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    enum HealthStatus {
        Ok,
    }

    /// `?format=` of `GET /v1/results/export`.
    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    enum ExportFormat {
        Csv,
        Json,
    }

    /// Admin web page (HTML). Loads without a token; its API calls use the token
    /// given in the URL fragment (#token=...) or pasted into the page.
    #[utoipa::path(get, path = "/", operation_id = "adminPage",
        responses((status = 200, description = "The page.", body = String, content_type = "text/html")))]
    fn admin_page() {}

    /// Liveness of the controller process. No authentication.
    #[utoipa::path(get, path = "/healthz", operation_id = "healthz",
        responses((status = 200, description = "The controller is serving.", body = Health)))]
    fn healthz() {}

    /// This document.
    #[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi",
        responses((status = 200, description = "The OpenAPI document.", body = Object), ListErrors))]
    fn openapi() {}

    /// All registered measurement nodes, ordered by name.
    #[utoipa::path(get, path = "/v1/nodes", operation_id = "listNodes",
        responses((status = 200, description = "The nodes.", body = NodeList), ListErrors))]
    fn list_nodes() {}

    /// One node, by id or by name.
    #[utoipa::path(get, path = "/v1/nodes/{id_or_name}", operation_id = "getNode",
        params(("id_or_name" = String, Path, description = NODE_KEY)),
        responses((status = 200, description = "The node.", body = Node), GetErrors))]
    fn get_node() {}

    /// Replace the node's labels. Only `labels` may be sent; keys not listed are removed.
    #[utoipa::path(patch, path = "/v1/nodes/{id_or_name}", operation_id = "patchNode",
        params(("id_or_name" = String, Path, description = NODE_KEY)),
        request_body = NodePatch,
        responses((status = 200, description = "The updated node.", body = Node), UpdateErrors))]
    fn patch_node() {}

    /// The newest log lines shipped by the node's agent, oldest first. The
    /// controller keeps the last 10000 lines per node.
    #[utoipa::path(get, path = "/v1/nodes/{id_or_name}/logs", operation_id = "nodeLogs",
        params(
            ("id_or_name" = String, Path, description = NODE_KEY),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, nullable = false,
                description = "How many of the newest lines to return (default 100)."),
        ),
        responses((status = 200, description = "The lines.", body = LogList), QueryErrors))]
    fn node_logs() {}

    /// The event journal, oldest first. Page with ?after=<id of the last event seen>.
    #[utoipa::path(get, path = "/v1/events", operation_id = "listEvents",
        params(
            ("after" = Option<i64>, Query, minimum = 0, nullable = false,
                description = "Return events with an id greater than this (default 0)."),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, nullable = false,
                description = "Most events to return (default 100)."),
        ),
        responses((status = 200, description = "The events.", body = EventList), FilterErrors))]
    fn list_events() {}

    /// List virtual platforms.
    #[utoipa::path(get, path = "/v1/platforms", operation_id = "listPlatforms",
        responses((status = 200, description = "The virtual platforms.", body = PlatformList), ListErrors))]
    fn list_platforms() {}

    /// Create a virtual platform.
    #[utoipa::path(post, path = "/v1/platforms", operation_id = "createPlatform",
        request_body = PlatformCreate,
        responses((status = 201, description = "Created.", body = Platform), CreateErrors))]
    fn create_platform() {}

    /// One virtual platform.
    #[utoipa::path(get, path = "/v1/platforms/{id_or_name}", operation_id = "getPlatform",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The virtual platform.", body = Platform), GetErrors))]
    fn get_platform() {}

    /// Change nodes, admins, description or power_state in place. Removing a node
    /// that still hosts VMs of the platform is 409.
    #[utoipa::path(patch, path = "/v1/platforms/{id_or_name}", operation_id = "patchPlatform",
        params(("id_or_name" = String, Path, description = KEY)),
        request_body = PlatformPatch,
        responses((status = 200, description = "Updated.", body = Platform), PatchErrors))]
    fn patch_platform() {}

    /// Delete a platform without VMs (409 while VMs or tasks use it).
    #[utoipa::path(delete, path = "/v1/platforms/{id_or_name}", operation_id = "deletePlatform",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        responses((status = 200, description = "The deleted virtual platform.", body = Platform), DeleteErrors))]
    fn delete_platform() {}

    /// Run every VM of the platform as its own power_state says.
    #[utoipa::path(post, path = "/v1/platforms/{id_or_name}/start", operation_id = "startPlatform",
        params(("id_or_name" = String, Path, description = KEY)),
        request_body = RequestOptions,
        responses((status = 200, description = "The platform.", body = Platform), UpdateErrors))]
    fn start_platform() {}

    /// Suspend every VM of the platform.
    #[utoipa::path(post, path = "/v1/platforms/{id_or_name}/pause", operation_id = "pausePlatform",
        params(("id_or_name" = String, Path, description = KEY)),
        request_body = RequestOptions,
        responses((status = 200, description = "The platform.", body = Platform), UpdateErrors))]
    fn pause_platform() {}

    /// List QoS policies.
    #[utoipa::path(get, path = "/v1/qos_policies", operation_id = "listQosPolicies",
        responses((status = 200, description = "The QoS policies.", body = QosPolicyList), ListErrors))]
    fn list_qos_policies() {}

    /// Create a QoS policy.
    #[utoipa::path(post, path = "/v1/qos_policies", operation_id = "createQosPolicy",
        request_body = QosPolicyCreate,
        responses((status = 201, description = "Created.", body = QosPolicy), CreateErrors))]
    fn create_qos_policy() {}

    /// One QoS policy.
    #[utoipa::path(get, path = "/v1/qos_policies/{id_or_name}", operation_id = "getQosPolicy",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The QoS policy.", body = QosPolicy), GetErrors))]
    fn get_qos_policy() {}

    /// Change a QoS policy in place.
    #[utoipa::path(patch, path = "/v1/qos_policies/{id_or_name}", operation_id = "patchQosPolicy",
        params(("id_or_name" = String, Path, description = KEY)),
        request_body = QosPolicyPatch,
        responses((status = 200, description = "Updated.", body = QosPolicy), PatchErrors))]
    fn patch_qos_policy() {}

    /// Delete a QoS policy (409 while a VM uses it).
    #[utoipa::path(delete, path = "/v1/qos_policies/{id_or_name}", operation_id = "deleteQosPolicy",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        responses((status = 200, description = "The deleted QoS policy.", body = QosPolicy), DeleteErrors))]
    fn delete_qos_policy() {}

    /// List appliances.
    #[utoipa::path(get, path = "/v1/appliances", operation_id = "listAppliances",
        responses((status = 200, description = "The appliances.", body = ApplianceList), ListErrors))]
    fn list_appliances() {}

    /// Register an appliance (operator-provided files on the nodes).
    #[utoipa::path(post, path = "/v1/appliances", operation_id = "createAppliance",
        request_body = ApplianceCreate,
        responses((status = 201, description = "Created.", body = Appliance), CreateErrors))]
    fn create_appliance() {}

    /// One appliance.
    #[utoipa::path(get, path = "/v1/appliances/{id_or_name}", operation_id = "getAppliance",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The appliance.", body = Appliance), GetErrors))]
    fn get_appliance() {}

    /// List VMs.
    #[utoipa::path(get, path = "/v1/vms", operation_id = "listVms",
        params(
            ("platform" = Option<String>, Query, nullable = false,
                description = "Only VMs of this platform (id or name)."),
            ("node" = Option<String>, Query, nullable = false,
                description = "Only VMs on this node (id or name)."),
        ),
        responses((status = 200, description = "The VMs.", body = VmList), ListErrors))]
    fn list_vms() {}

    /// Create a VM.
    #[utoipa::path(post, path = "/v1/vms", operation_id = "createVm",
        request_body = VmCreate,
        responses((status = 201, description = "Created.", body = Vm), CreateErrors))]
    fn create_vm() {}

    /// One VM.
    #[utoipa::path(get, path = "/v1/vms/{id_or_name}", operation_id = "getVm",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The VM.", body = Vm), GetErrors))]
    fn get_vm() {}

    /// Change a VM in place.
    #[utoipa::path(patch, path = "/v1/vms/{id_or_name}", operation_id = "patchVm",
        params(("id_or_name" = String, Path, description = KEY)),
        request_body = VmPatch,
        responses((status = 200, description = "Updated.", body = Vm), PatchErrors))]
    fn patch_vm() {}

    /// Mark the VM deleting (202); it disappears once the node agent acks its
    /// cleanup. `force=true` removes it at once (200).
    #[utoipa::path(delete, path = "/v1/vms/{id_or_name}", operation_id = "deleteVm",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
            ("force" = Option<bool>, Query, nullable = false,
                description = "Remove at once instead of waiting for the node agent."),
        ),
        responses(
            (status = 200, description = "Removed at once (force).", body = Vm),
            (status = 202, description = "Marked deleting.", body = Vm),
            DeleteErrors,
        ))]
    fn delete_vm() {}

    /// Guest log lines of the VM, oldest first.
    #[utoipa::path(get, path = "/v1/vms/{id_or_name}/logs", operation_id = "vmLogs",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, nullable = false,
                description = "Newest N lines (default 100)."),
        ),
        responses((status = 200, description = "Lines.", body = LogList), QueryErrors))]
    fn vm_logs() {}

    /// List programs.
    #[utoipa::path(get, path = "/v1/programs", operation_id = "listPrograms",
        responses((status = 200, description = "The programs.", body = ProgramList), ListErrors))]
    fn list_programs() {}

    /// Upload a program: JSON {name, content_base64, sha256?} or the raw bytes as
    /// application/octet-stream with ?name=&sha256=. The same name with the same
    /// content returns the existing program (200).
    #[utoipa::path(post, path = "/v1/programs", operation_id = "createProgram",
        params(
            ("name" = Option<String>, Query, nullable = false,
                description = "Program name (octet-stream uploads)."),
            ("sha256" = Option<String>, Query, nullable = false,
                description = "Expected SHA-256 (octet-stream uploads)."),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        request_body(content(
            (ProgramCreate = "application/json"),
            ("application/octet-stream"),
        )),
        responses(
            (status = 200, description = "Already uploaded with this content.", body = Program),
            (status = 201, description = "Created.", body = Program),
            CreateErrors,
        ))]
    fn create_program() {}

    /// One program.
    #[utoipa::path(get, path = "/v1/programs/{id_or_name}", operation_id = "getProgram",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The program.", body = Program), GetErrors))]
    fn get_program() {}

    /// Delete a program (409 while a running deployment uses it).
    #[utoipa::path(delete, path = "/v1/programs/{id_or_name}", operation_id = "deleteProgram",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        responses((status = 200, description = "The deleted program.", body = Program), DeleteErrors))]
    fn delete_program() {}

    /// List deployments.
    #[utoipa::path(get, path = "/v1/deployments", operation_id = "listDeployments",
        responses((status = 200, description = "The deployments.", body = DeploymentList), ListErrors))]
    fn list_deployments() {}

    /// Deploy a program onto VMs; each VM's node agent fetches it (FetchProgram)
    /// and hands it to the guest agent.
    #[utoipa::path(post, path = "/v1/deployments", operation_id = "createDeployment",
        request_body = DeploymentCreate,
        responses((status = 201, description = "Created.", body = Deployment), CreateErrors))]
    fn create_deployment() {}

    /// One deployment.
    #[utoipa::path(get, path = "/v1/deployments/{id_or_name}", operation_id = "getDeployment",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The deployment.", body = Deployment), GetErrors))]
    fn get_deployment() {}

    /// Stop every run of the deployment; the record stays with the final statuses.
    #[utoipa::path(delete, path = "/v1/deployments/{id_or_name}", operation_id = "deleteDeployment",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        responses((status = 200, description = "The deleted deployment.", body = Deployment), DeleteErrors))]
    fn delete_deployment() {}

    /// List measurement tasks.
    #[utoipa::path(get, path = "/v1/tasks", operation_id = "listTasks",
        responses((status = 200, description = "The measurement tasks.", body = TaskList), ListErrors))]
    fn list_tasks() {}

    /// Create a measurement task.
    #[utoipa::path(post, path = "/v1/tasks", operation_id = "createTask",
        request_body = TaskCreate,
        responses((status = 201, description = "Created.", body = Task), CreateErrors))]
    fn create_task() {}

    /// One measurement task.
    #[utoipa::path(get, path = "/v1/tasks/{id_or_name}", operation_id = "getTask",
        params(("id_or_name" = String, Path, description = KEY)),
        responses((status = 200, description = "The measurement task.", body = Task), GetErrors))]
    fn get_task() {}

    /// Delete a task; its results stay queryable by task id.
    #[utoipa::path(delete, path = "/v1/tasks/{id_or_name}", operation_id = "deleteTask",
        params(
            ("id_or_name" = String, Path, description = KEY),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        responses((status = 200, description = "The deleted measurement task.", body = Task), DeleteErrors))]
    fn delete_task() {}

    /// Result history of a time range, oldest first.
    #[utoipa::path(get, path = "/v1/results", operation_id = "listResults",
        params(
            ("task" = Option<String>, Query, nullable = false, description = "Task id or name."),
            ("since" = Option<String>, Query, format = DateTime, nullable = false,
                description = "RFC 3339; runs started at or after."),
            ("until" = Option<String>, Query, format = DateTime, nullable = false,
                description = "RFC 3339; runs started before."),
            ("limit" = Option<u32>, Query, nullable = false, description = "Newest N runs in the range."),
        ),
        responses((status = 200, description = "Results.", body = ResultList), QueryErrors))]
    fn list_results() {}

    /// Store a result document (measurelab.mcast.result/v1) carrying task_id (or
    /// ?task=). A document whose run_id is already stored for the task returns the
    /// first record (200) and changes nothing.
    #[utoipa::path(post, path = "/v1/results", operation_id = "postResult",
        params(
            ("task" = Option<String>, Query, nullable = false,
                description = "Task id or name, if the document has no task_id."),
            ("request_id" = Option<String>, Query, nullable = false, description = REQUEST_ID),
        ),
        request_body = ResultDocumentSchema,
        responses(
            (status = 200, description = "Already stored (same task and run_id).", body = ResultRecord),
            (status = 201, description = "Stored.", body = ResultRecord),
            UploadErrors,
        ))]
    fn post_result() {}

    /// The newest result (of a task).
    #[utoipa::path(get, path = "/v1/results/latest", operation_id = "latestResult",
        params(("task" = Option<String>, Query, nullable = false, description = "Task id or name.")),
        responses((status = 200, description = "The result.", body = ResultRecord), QueryErrors))]
    fn latest_result() {}

    /// All results of a range in one call: CSV (one row per receiver per run) or JSON.
    #[utoipa::path(get, path = "/v1/results/export", operation_id = "exportResults",
        params(
            ("task" = Option<String>, Query, nullable = false, description = "Task id or name."),
            ("since" = Option<String>, Query, format = DateTime, nullable = false,
                description = "RFC 3339; runs started at or after."),
            ("until" = Option<String>, Query, format = DateTime, nullable = false,
                description = "RFC 3339; runs started before."),
            ("limit" = Option<u32>, Query, nullable = false, description = "Newest N runs in the range."),
            ("format" = inline(Option<ExportFormat>), Query, nullable = false,
                description = "csv or json (default json)."),
        ),
        responses(
            (status = 200, description = "The export.", content(
                (ResultList = "application/json"),
                (String = "text/csv"),
            )),
            QueryErrors,
        ))]
    fn export_results() {}
}
