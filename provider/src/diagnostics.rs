//! The one place where provider errors become Terraform diagnostics.
//!
//! Every diagnostic says three things: what happened (summary), the facts
//! (detail), and what to do next. Diagnostics are built with a struct literal
//! rather than `Diagnostic::new`, because tf-provider 0.2.2 appends a Rust
//! backtrace to the detail of every diagnostic made through its constructors
//! when `RUST_BACKTRACE` is set, and a backtrace is noise for a Terraform user.

use std::borrow::Cow;
use std::time::Duration;

use measurelab_api::client::ClientError;
use tf_provider::{AttributePath, AttributePathStep, Diagnostic, Diagnostics};

/// What the provider was doing when a controller call failed; used in the
/// detail text so the user knows which step did (and did not) happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Reading a node while refreshing or importing.
    ReadNode,
    /// Waiting for a node to register and come online before adopting it.
    WaitNode,
    /// Writing a node's labels.
    PatchNode,
    /// Releasing a node (clearing its labels) on destroy.
    ReleaseNode,
    /// Listing nodes for a data source.
    ListNodes,
    /// Creating an object of the given kind.
    Create(&'static str),
    /// Reading an object of the given kind while refreshing or importing.
    Read(&'static str),
    /// Changing an object of the given kind in place.
    Update(&'static str),
    /// Deleting an object of the given kind.
    Delete(&'static str),
}

impl Operation {
    fn describe(self) -> String {
        match self {
            Operation::ReadNode => "read the node".into(),
            Operation::WaitNode => "look up the node to adopt".into(),
            Operation::PatchNode => "write the node's labels".into(),
            Operation::ReleaseNode => "release the node (clear its labels)".into(),
            Operation::ListNodes => "list the nodes".into(),
            Operation::Create(kind) => format!("create the {kind}"),
            Operation::Read(kind) => format!("read the {kind}"),
            Operation::Update(kind) => format!("update the {kind}"),
            Operation::Delete(kind) => format!("delete the {kind}"),
        }
    }

    /// Whether a failure of this operation leaves the Terraform state as it was.
    fn consequence(self) -> &'static str {
        match self {
            Operation::ReadNode => "The resource was kept in the state unchanged.",
            Operation::WaitNode => {
                "Nothing was changed on the controller and no state was written for this resource."
            }
            Operation::PatchNode => {
                "The labels on the controller were not changed and the state keeps the previous labels."
            }
            Operation::ReleaseNode => {
                "The node keeps its labels and the resource stays in the state, so destroy can be retried."
            }
            Operation::ListNodes => "No data was read.",
            Operation::Create(_) => "Nothing was created and no state was written for this resource.",
            Operation::Read(_) => "The resource was kept in the state unchanged.",
            Operation::Update(_) => "The object keeps its previous settings and so does the state.",
            Operation::Delete(_) => "The object still exists and stays in the state, so destroy can be retried.",
        }
    }
}

/// Build a diagnostic without a backtrace (see the module comment).
pub fn diagnostic(
    summary: impl Into<Cow<'static, str>>,
    detail: impl Into<Cow<'static, str>>,
    attribute: AttributePath,
) -> Diagnostic {
    Diagnostic {
        summary: summary.into(),
        detail: strip_backtrace(detail.into()),
        attribute,
    }
}

/// Remove a trailing Rust backtrace from a detail text. Backtraces start with a
/// line like `   0: std::backtrace...` or `stack backtrace:`; everything from
/// there on is dropped.
pub fn strip_backtrace(detail: Cow<'static, str>) -> Cow<'static, str> {
    let mut offset = 0;
    for line in detail.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let frame_zero = trimmed.starts_with("0: ") && line.starts_with(' ');
        if frame_zero || trimmed.starts_with("stack backtrace:") {
            return Cow::Owned(detail[..offset].trim_end().to_string());
        }
        offset += line.len();
    }
    detail
}

fn error(
    diags: &mut Diagnostics,
    summary: impl Into<Cow<'static, str>>,
    detail: String,
    attribute: AttributePath,
) {
    diags.add_error(diagnostic(summary, detail, attribute));
}

/// Translate a controller client error into a diagnostic.
///
/// `field_root` is the attribute a controller `field` is relative to (the
/// resource root for resources).
pub fn client_error(diags: &mut Diagnostics, err: &ClientError, operation: Operation) {
    let consequence = operation.consequence();
    let what = operation.describe();
    match err {
        ClientError::Unreachable { endpoint, source } => error(
            diags,
            "Cannot reach the measurelab controller",
            format!(
                "The provider tried to {what}, but no controller answered at {endpoint} ({source}). \
                 {consequence}\n\nWhat to do: start the controller (for a lab: `measurelab lab up`), \
                 check the provider's `endpoint` or MEASURELAB_ENDPOINT (`measurelab lab env` prints \
                 the right value), then run the command again."
            ),
            AttributePath::root(),
        ),
        ClientError::Untrusted { endpoint, reason } => error(
            diags,
            "The controller's certificate is not trusted",
            format!(
                "The provider tried to {what}, but the controller at {endpoint} presented a TLS \
                 certificate the provider does not trust ({reason}). {consequence}\n\nWhat to do: \
                 set the provider's `ca_cert` (or MEASURELAB_CA_CERT) to the controller's CA \
                 certificate, `ca.pem` in its data dir (`measurelab lab env` prints it for a lab); \
                 when `ca_cert` is given it is the only CA trusted."
            ),
            AttributePath::new("ca_cert"),
        ),
        // A 403 names the object, the action and the role it needs: shown as
        // the controller worded it, since the token itself is valid.
        ClientError::Api { status: 403, message, .. } => error(
            diags,
            "Permission denied",
            format!(
                "The provider tried to {what}; the controller refused: {message}. {consequence}\n\n\
                 What to do: use a token with the role the message names (for a lab, `measurelab lab \
                 env --operator` prints the operator token), or ask the tenant's owner for one."
            ),
            AttributePath::root(),
        ),
        ClientError::Api { status: 401, message, .. } => error(
            diags,
            "The controller refused the provider's token",
            format!(
                "The provider tried to {what}; the controller answered: {message}. {consequence}\n\n\
                 What to do: set the provider's `token` or MEASURELAB_TOKEN to a valid API token \
                 (`measurelab lab env` prints one for a lab; `measurelab token create` makes one)."
            ),
            AttributePath::new("token"),
        ),
        ClientError::Api { status: 404, message, .. } => error(
            diags,
            "Not found on the controller",
            format!(
                "The provider tried to {what}; the controller answered: {message}. {consequence}\n\n\
                 What to do: check the name against `terraform output` or `GET /v1/nodes`."
            ),
            AttributePath::root(),
        ),
        ClientError::Api { status: 409, message, .. } => error(
            diags,
            "Conflict on the controller",
            format!(
                "The provider tried to {what}; the controller refused: {message}. {consequence}\n\n\
                 What to do: if another object still uses this one, remove or change that object \
                 first; if the name is taken, choose another name or import the existing object."
            ),
            AttributePath::root(),
        ),
        ClientError::Api { status, code, message, field } if (400..500).contains(status) => {
            let attribute = field.as_deref().map(field_to_path).unwrap_or_default();
            error(
                diags,
                format!("The controller rejected a value ({code})"),
                format!(
                    "The provider tried to {what}; the controller answered {status}: {message}. \
                     {consequence}\n\nWhat to do: correct the value named in the message and apply again."
                ),
                attribute,
            )
        }
        ClientError::Api { status, code, message, .. } => error(
            diags,
            "The controller failed",
            format!(
                "The provider tried to {what}; the controller answered {status} ({code}): {message}. \
                 {consequence}\n\nWhat to do: look at the controller's log, then run the command again."
            ),
            AttributePath::root(),
        ),
        ClientError::Decode(detail) => error(
            diags,
            "Unexpected answer from the controller",
            format!(
                "The provider tried to {what}, but could not understand the answer: {detail}. \
                 {consequence}\n\nWhat to do: check that the provider and the controller are from \
                 compatible releases and that `endpoint` points at a measurelab controller."
            ),
            AttributePath::root(),
        ),
        ClientError::Config(detail) => error(
            diags,
            "Invalid provider configuration",
            format!("{detail}. {consequence}\n\nWhat to do: fix `ca_cert` / `endpoint` in the provider block."),
            AttributePath::root(),
        ),
        ClientError::Source(detail) => error(
            diags,
            "Cannot read a file to send",
            format!("The provider tried to {what}, but {detail}. {consequence}\n\nWhat to do: make the file readable, then run the command again."),
            AttributePath::root(),
        ),
    }
}

/// Map a controller `field` (JSON path such as `labels.rack` or
/// `labels["rack"]`) onto the Terraform attribute it came from, so Terraform
/// can underline the offending line.
pub fn field_to_path(field: &str) -> AttributePath {
    let mut steps = Vec::new();
    let normalized = field
        .trim_start_matches("$.")
        .replace("[\"", ".")
        .replace("\"]", "");
    let mut parts = normalized.split('.').filter(|p| !p.is_empty());
    if let Some(first) = parts.next() {
        steps.push(AttributePathStep::Attribute(first.to_string().into()));
        // Everything after a map attribute is one key (label keys may contain dots).
        let rest: Vec<&str> = parts.collect();
        if !rest.is_empty() {
            if first == "labels" {
                steps.push(AttributePathStep::Key(rest.join(".").into()));
            } else {
                for part in rest {
                    steps.push(AttributePathStep::Attribute(part.to_string().into()));
                }
            }
        }
    }
    AttributePath { steps }
}

/// The provider block was not configured (or depended on unknown values).
pub fn not_configured(diags: &mut Diagnostics) {
    error(
        diags,
        "The measurelab provider is not configured",
        "The provider has no controller endpoint yet, so it cannot talk to the controller. \
         This happens when the provider block depends on values that are only known after apply.\n\n\
         What to do: give `endpoint` and `token` literal values or variables, or set \
         MEASURELAB_ENDPOINT and MEASURELAB_TOKEN (`measurelab lab env` prints them)."
            .to_string(),
        AttributePath::root(),
    );
}

/// A provider setting is missing from both the block and the environment.
pub fn missing_setting(diags: &mut Diagnostics, attribute: &'static str, env: &str, hint: &str) {
    error(
        diags,
        format!("Missing provider setting `{attribute}`"),
        format!(
            "Neither the provider block nor the environment variable {env} sets `{attribute}`.\n\n\
             What to do: {hint}"
        ),
        AttributePath::new(attribute),
    );
}

/// A provider or resource value is malformed.
pub fn invalid_value(
    diags: &mut Diagnostics,
    attribute: AttributePath,
    summary: impl Into<Cow<'static, str>>,
    reason: String,
) {
    error(diags, summary, reason, attribute);
}

/// The node did not come online before `timeouts.create` expired.
pub fn wait_timeout(diags: &mut Diagnostics, name: &str, timeout: Duration, last_seen: &str) {
    error(
        diags,
        format!("Node {name:?} did not come online in time"),
        format!(
            "The provider waited {} for the node to register and report `online`; the last thing \
             the controller said about it: {last_seen}. Nothing was changed on the controller and no \
             state was written for this resource.\n\nWhat to do: check that the node's agent runs \
             and can reach the controller (its log: `GET /v1/nodes/{name}/logs`), that `name` is the \
             name the agent registers with, or raise `timeouts {{ create = ... }}`.",
            format_duration(timeout)
        ),
        AttributePath::new("name"),
    );
}

/// What the controller at `endpoint` said in `Warning` headers: today that
/// this provider's version is outside the ones it serves. A warning, since
/// the controller served the request.
pub fn controller_warnings(diags: &mut Diagnostics, endpoint: &str, warnings: Vec<String>) {
    for warning in warnings {
        diags.add_warning(diagnostic(
            format!("The controller at {endpoint} warns"),
            format!(
                "{warning}\n\nWhat to do: see docs/version-skew.md; a controller serves providers \
                 of its own minor version and of the one before, and controllers are upgraded first."
            ),
            AttributePath::root(),
        ));
    }
}

/// An adopted node stopped heartbeating. A warning: the adoption and labels
/// are still valid, but measurements placed on the node will not run.
pub fn node_offline(diags: &mut Diagnostics, name: &str, last_heartbeat: Option<&str>) {
    diags.add_warning(diagnostic(
        format!("Node {name:?} is offline"),
        format!(
            "The controller has had no heartbeat from node {name:?} since {}. Its labels are kept, \
             but nothing placed on it will run until it is back.\n\nWhat to do: check the node's agent \
             (`GET /v1/nodes/{name}/logs`, or `measurelab lab status` for a lab).",
            last_heartbeat.unwrap_or("it registered")
        ),
        AttributePath::new("status"),
    ));
}

/// Terraform asked the provider to stop (Ctrl-C) while it was waiting.
pub fn cancelled(diags: &mut Diagnostics, name: &str) {
    error(
        diags,
        "Stopped while waiting for the node",
        format!(
            "Terraform was interrupted while the provider waited for node {name:?} to come online. \
             Nothing was changed on the controller and no state was written for this resource.\n\n\
             What to do: run `terraform apply` again when ready."
        ),
        AttributePath::root(),
    );
}

/// A wait for `kind` `name` to reach `goal` ended without success.
pub fn wait_failed(
    diags: &mut Diagnostics,
    end: &crate::wait::WaitEnd,
    kind: &str,
    name: &str,
    goal: &str,
    timeout: Duration,
    operation: Operation,
) {
    use crate::wait::WaitEnd;
    match end {
        WaitEnd::Client(err) => client_error(diags, err, operation),
        WaitEnd::Cancelled => error(
            diags,
            format!("Stopped while waiting for the {kind}"),
            format!(
                "Terraform was interrupted while the provider waited for {kind} {name:?} to {goal}. \
                 What was already sent to the controller stays; the next plan shows where it stands.\n\n\
                 What to do: run `terraform apply` again when ready."
            ),
            AttributePath::root(),
        ),
        WaitEnd::TimedOut(last_seen) => error(
            diags,
            format!("The {kind} {name:?} did not {goal} in time"),
            format!(
                "The provider waited {} for {kind} {name:?} to {goal}; the last thing the controller \
                 said about it: {last_seen}.\n\nWhat to do: look at the conditions and the node agent's \
                 log (`GET /v1/nodes/NODE/logs`), fix the cause, or raise the `timeouts` block.",
                format_duration(timeout)
            ),
            AttributePath::new("timeouts"),
        ),
    }
}

/// Render a duration the way Terraform users write it (`5m0s`).
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, (total % 3600) / 60, total % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_a_trailing_backtrace() {
        let detail = "it broke\n   0: std::backtrace::Backtrace::create\n   1: main\n";
        assert_eq!(strip_backtrace(detail.into()), "it broke");
        let detail = "it broke\nstack backtrace:\n   0: x";
        assert_eq!(strip_backtrace(detail.into()), "it broke");
        assert_eq!(
            strip_backtrace("plain: 0: not a frame".into()),
            "plain: 0: not a frame"
        );
    }

    #[test]
    fn no_backtrace_even_when_requested() {
        std::env::set_var("RUST_BACKTRACE", "1");
        let mut diags = Diagnostics::default();
        not_configured(&mut diags);
        assert_eq!(diags.errors.len(), 1);
        assert!(
            !diags.errors[0].detail.contains("backtrace"),
            "{}",
            diags.errors[0].detail
        );
        assert!(
            !diags.errors[0].detail.contains(" 0: "),
            "{}",
            diags.errors[0].detail
        );
    }

    #[test]
    fn controller_fields_map_onto_attributes() {
        assert_eq!(
            field_to_path("labels.rack"),
            AttributePath::new("labels").key("rack")
        );
        assert_eq!(
            field_to_path("labels[\"a.b\"]"),
            AttributePath::new("labels").key("a.b")
        );
        assert_eq!(
            field_to_path("labels.a.b"),
            AttributePath::new("labels").key("a.b")
        );
        assert_eq!(field_to_path("name"), AttributePath::new("name"));
    }

    #[test]
    fn api_error_points_at_the_field() {
        let mut diags = Diagnostics::default();
        let err = ClientError::Api {
            status: 400,
            code: "invalid_field".into(),
            message: "label key \"bad key\" has a space".into(),
            field: Some("labels.bad key".into()),
        };
        client_error(&mut diags, &err, Operation::PatchNode);
        assert_eq!(
            diags.errors[0].attribute,
            AttributePath::new("labels").key("bad key")
        );
        assert!(diags.errors[0].detail.contains("has a space"));
    }

    #[test]
    fn durations_print_like_terraform() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(format_duration(Duration::from_secs(9)), "9s");
    }
}
