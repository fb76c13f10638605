//! `measurelab_deployment`: run an uploaded program on VMs (program
//! distribution). The node agents fetch the program, hand it to the guest
//! agents and report each run; create waits until every run is `running`
//! (servers such as `mcast-point serve`) or has exited 0 (one-shot programs).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use measurelab_api::client::{Client, ClientError};
use measurelab_api::http::{Deployment, DeploymentCreate, DeploymentPatch, ProgramRunState};
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, NestedBlock, Schema,
};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

use super::adapter::{attribute, holds_shared, known, CreateRequest, ManagedResource};
use crate::diagnostics::{self, Operation};
use crate::node_model::computed;
use crate::number::Number;
use crate::shared::Shared;
use crate::timeouts;
use crate::wait::{self, Poll};

const KIND: &str = "deployment";

/// The `timeouts` block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentTimeouts {
    /// How long create waits for the runs.
    pub create: Value<String>,
}

/// One VM's run as Terraform shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunValue {
    /// VM (`platform/name`).
    pub vm: String,
    /// VM id.
    pub vm_id: String,
    /// pending, running, exited, failed, lost, stopped.
    pub status: String,
    /// Exit code once exited.
    pub exit_code: Value<Number>,
    /// Last lines of stdout.
    pub stdout_tail: String,
    /// Last lines of stderr.
    pub stderr_tail: String,
}

impl From<&ProgramRunState> for RunValue {
    fn from(run: &ProgramRunState) -> Self {
        RunValue {
            vm: run.vm.clone(),
            vm_id: run.vm_id.clone(),
            status: run.status.clone(),
            exit_code: run.exit_code.map_or(Value::Null, |c| {
                Value::Value(u64::try_from(c).map_or(Number::Signed(i64::from(c)), Number::from))
            }),
            stdout_tail: run.stdout_tail.clone(),
            stderr_tail: run.stderr_tail.clone(),
        }
    }
}

/// Terraform state of one deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentState {
    /// Program name or id.
    pub program: Value<String>,
    /// VM ids (or unique names); elements may be unknown until apply.
    pub vms: Value<Vec<Value<String>>>,
    /// Arguments.
    pub args: Value<Vec<Value<String>>>,
    /// Environment.
    pub env: Value<BTreeMap<String, Value<String>>>,
    /// Output files (absolute paths in each VM).
    pub outputs: Value<Vec<Value<String>>>,
    /// `running` or `exited`.
    pub wait_for: Value<String>,
    /// Controller id.
    pub id: Value<String>,
    /// One run per VM.
    pub runs: Value<Vec<RunValue>>,
    /// The `timeouts` block.
    pub timeouts: Value<DeploymentTimeouts>,
}

/// The known elements of a list (at apply time every element is known).
fn known_list(value: &Value<Vec<Value<String>>>) -> Vec<String> {
    value
        .as_ref_option()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_ref_option().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// `outputs[i]` (or `outputs`) as the attribute path Terraform underlines.
fn output_path(field: &str) -> AttributePath {
    let index = field
        .strip_prefix("outputs[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|i| i.parse::<i64>().ok());
    match index {
        Some(i) => AttributePath::new("outputs").index(i),
        None => AttributePath::new("outputs"),
    }
}

/// What create waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitFor {
    /// Long-running programs: every run `running`.
    Running,
    /// One-shot programs: every run exited 0.
    Exited,
}

fn parse_wait_for(text: &str) -> Option<WaitFor> {
    match text {
        "running" => Some(WaitFor::Running),
        "exited" => Some(WaitFor::Exited),
        _ => None,
    }
}

/// Whether the runs reached the goal; `Err` when one never will.
fn converged(deployment: &Deployment, goal: WaitFor) -> Result<bool, String> {
    let mut done = !deployment.runs.is_empty();
    for run in &deployment.runs {
        let exited_ok = run.status == "exited" && run.exit_code == Some(0);
        match (run.status.as_str(), goal) {
            ("running", WaitFor::Running) => {}
            ("running" | "pending", _) => done = false,
            ("exited", WaitFor::Exited) if exited_ok => {}
            (status, _) => {
                return Err(format!(
                    "the run on VM {} is {status}{}; stderr: {}",
                    run.vm,
                    run.exit_code
                        .map(|c| format!(" with exit code {c}"))
                        .unwrap_or_default(),
                    last_lines(&run.stderr_tail, 8)
                ))
            }
        }
    }
    Ok(done)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let tail = lines[start..].join("\n");
    if tail.trim().is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

fn describe(deployment: &Deployment) -> String {
    deployment
        .runs
        .iter()
        .map(|r| format!("{}: {}", r.vm, r.status))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DeploymentState {
    fn validate(&self, diags: &mut Diagnostics) {
        if let Value::Value(vms) = &self.vms {
            if vms.is_empty() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("vms"),
                    "A deployment needs VMs",
                    "`vms` is empty; list at least one VM id (for example `measurelab_vm.x.id`)."
                        .into(),
                );
            }
        }
        if let Value::Value(wait_for) = &self.wait_for {
            if parse_wait_for(wait_for).is_none() {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::new("wait_for"),
                    "Invalid wait_for",
                    format!("{wait_for:?} is not a goal; use \"running\" (long-running programs) or \"exited\" (one-shot programs that must exit 0)."),
                );
            }
        }
        if let Value::Value(args) = &self.args {
            for (i, arg) in args.iter().enumerate() {
                let Value::Value(arg) = arg else { continue };
                if arg.contains('\0') || arg.len() > 4096 {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new("args").index(i as i64),
                        "Invalid argument",
                        "an argument must be at most 4096 bytes without NUL characters.".into(),
                    );
                }
            }
        }
        if let Value::Value(outputs) = &self.outputs {
            // Unknown elements are checked at apply, by the controller.
            let known: Vec<String> = outputs
                .iter()
                .filter_map(|v| v.as_ref_option().cloned())
                .collect();
            if known.len() == outputs.len() {
                if let Err((field, reason)) = measurelab_api::http::check_outputs(&known) {
                    diagnostics::invalid_value(
                        diags,
                        output_path(&field),
                        "Invalid output path",
                        format!("{field} {reason}: an output is an absolute path of a file in the VM, without `..`."),
                    );
                }
            }
        }
        if let Value::Value(t) = &self.timeouts {
            if let Value::Value(text) = &t.create {
                if let Err(err) = timeouts::parse_duration(text) {
                    diagnostics::invalid_value(
                        diags,
                        AttributePath::new("timeouts").attribute("create"),
                        "Invalid timeout",
                        err.to_string(),
                    );
                }
            }
        }
    }

    fn goal(&self) -> WaitFor {
        self.wait_for
            .as_ref_option()
            .and_then(|w| parse_wait_for(w))
            .unwrap_or(WaitFor::Running)
    }

    fn create_timeout(&self) -> Duration {
        self.timeouts
            .as_ref_option()
            .and_then(|t| t.create.as_ref_option())
            .and_then(|text| timeouts::parse_duration(text).ok())
            .unwrap_or(timeouts::DEFAULT_CREATE)
    }

    fn refresh_from(&mut self, deployment: &Deployment) {
        self.id = Value::Value(deployment.id.clone());
        self.runs = Value::Value(deployment.runs.iter().map(RunValue::from).collect());
        if self.args.is_value() || !deployment.args.is_empty() {
            self.args = Value::Value(deployment.args.iter().cloned().map(Value::Value).collect());
        }
        if self.outputs.is_value() || !deployment.outputs.is_empty() {
            self.outputs = Value::Value(
                deployment
                    .outputs
                    .iter()
                    .cloned()
                    .map(Value::Value)
                    .collect(),
            );
        }
        if self.env.is_value() || !deployment.env.is_empty() {
            self.env = Value::Value(
                deployment
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
                    .collect(),
            );
        }
    }
}

/// Whether two program references (each an id or a name) resolve to the same
/// program. A lookup that fails counts as different: replacing is the safe
/// answer when the program is gone or the controller cannot say.
async fn same_program(client: &Client, a: &str, b: &str) -> bool {
    match tokio::join!(client.get_program(a), client.get_program(b)) {
        (Ok(a), Ok(b)) => a.id == b.id,
        _ => false,
    }
}

/// The controller's deployments, as a Terraform resource.
pub struct Deployments {
    shared: Shared,
}

impl Deployments {
    /// Whether a changed `program` still names the prior program: the
    /// controller reports a deployment's program by name, while a
    /// configuration usually holds `measurelab_program.x.id`.
    async fn program_unchanged(&self, prior: &Value<String>, planned: &Value<String>) -> bool {
        let (Value::Value(prior), Value::Value(planned)) = (prior, planned) else {
            return false;
        };
        match self.shared.catalog_quiet() {
            Some((client, _)) => same_program(&client, prior, planned).await,
            None => false,
        }
    }

    async fn wait_converged(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        id: &str,
        goal: WaitFor,
        timeout: Duration,
    ) -> Option<Deployment> {
        let result = wait::until(&self.shared.stop, timeout, || {
            let client = client.clone();
            let id = id.to_string();
            async move {
                let deployment = client.get_deployment(&id).await?;
                Ok(match converged(&deployment, goal) {
                    Ok(true) => Poll::Done(Ok(deployment)),
                    Ok(false) => Poll::Pending(describe(&deployment)),
                    Err(why) => Poll::Done(Err((deployment, why))),
                })
            }
        })
        .await;
        let goal_text = match goal {
            WaitFor::Running => "have every run running",
            WaitFor::Exited => "have every run exit 0",
        };
        match result {
            Ok(Ok(deployment)) => Some(deployment),
            Ok(Err((deployment, why))) => {
                diagnostics::invalid_value(
                    diags,
                    AttributePath::root(),
                    format!("Deployment {id} failed"),
                    format!("{why}.\n\nWhat to do: check the program's arguments (`args`) and its output in `runs`; the deployment stays in the state (tainted) and is replaced on the next apply."),
                );
                Some(deployment)
            }
            Err(end) => {
                diagnostics::wait_failed(
                    diags,
                    &end,
                    KIND,
                    id,
                    goal_text,
                    timeout,
                    Operation::Read(KIND),
                );
                None
            }
        }
    }
}

#[async_trait]
impl ManagedResource for Deployments {
    type State = DeploymentState;
    type Object = Deployment;

    const KIND: &'static str = KIND;

    holds_shared!();

    fn schema(&self) -> Schema {
        let strings = || AttributeType::List(Box::new(AttributeType::String));
        let run_type = AttributeType::Object(HashMap::from([
            ("vm".to_string(), AttributeType::String),
            ("vm_id".to_string(), AttributeType::String),
            ("status".to_string(), AttributeType::String),
            ("exit_code".to_string(), AttributeType::Number),
            ("stdout_tail".to_string(), AttributeType::String),
            ("stderr_tail".to_string(), AttributeType::String),
        ]));
        let attributes: HashMap<String, Attribute> = HashMap::from([
            ("program".into(), attribute(AttributeType::String, "Program id or name (`measurelab_program.x.id`: a new upload then replaces the deployment). Changing it replaces the deployment.", AttributeConstraint::Required)),
            ("vms".into(), attribute(strings(), "VMs to run the program on, by id (`measurelab_vm.x.id`) or unique name. Changing it replaces the deployment.", AttributeConstraint::Required)),
            ("args".into(), attribute(strings(), "Program arguments. Changing them replaces the deployment (the program restarts).", AttributeConstraint::Optional)),
            ("env".into(), attribute(AttributeType::Map(Box::new(AttributeType::String)), "Extra environment variables. The guest agent also sets `MEASURELAB_PLATFORM_API`, `MEASURELAB_VM_ID` and `MEASURELAB_DEPLOYMENT_ID`. Changing it replaces the deployment.", AttributeConstraint::Optional)),
            ("outputs".into(), attribute(strings(), "Files the program writes, as absolute paths in each VM (at most 32, no `..`). They can be listed and downloaded during and after the run (`measurelab deployment outputs|fetch`, `GET /v1/deployments/{id}/outputs`), and small text ones read with the `measurelab_deployment_outputs` data source. Changing the list never restarts the program: outputs are only read when asked for.", AttributeConstraint::Optional)),
            ("wait_for".into(), attribute(AttributeType::String, "What create waits for: `running` (default; long-running programs; a run that exits fails the apply) or `exited` (one-shot programs; every run must exit 0).", AttributeConstraint::OptionalComputed)),
            ("id".into(), computed(AttributeType::String, "Stable id assigned by the controller.")),
            ("runs".into(), computed(AttributeType::List(Box::new(run_type)), "One run per VM: `vm`, `vm_id`, `status` (`pending`, `running`, `exited`, `failed`, `lost`, `stopped`), `exit_code`, `stdout_tail`, `stderr_tail`. Refreshed on read; never causes a diff.")),
        ]);
        let timeouts_block = Block {
            description: Description::markdown("Limits on how long operations wait."),
            attributes: HashMap::from([(
                "create".to_string(),
                attribute(AttributeType::String, "How long create waits for the runs, as a duration such as `\"2m\"`. Default `\"5m\"`.", AttributeConstraint::Optional),
            )]),
            ..Default::default()
        };
        Schema {
            version: 1,
            block: Block {
                description: Description::markdown(
                    "Runs an uploaded program (`measurelab_program`) on VMs through program distribution: \
                     the node agents fetch it from the controller and the guest agents run it. Destroy stops \
                     every run.",
                ),
                attributes,
                blocks: HashMap::from([("timeouts".to_string(), NestedBlock::Group(timeouts_block))]),
                ..Default::default()
            },
        }
    }

    fn validate(&self, diags: &mut Diagnostics, state: &DeploymentState) {
        state.validate(diags);
    }

    async fn plan_create(
        &self,
        diags: &mut Diagnostics,
        proposed: DeploymentState,
    ) -> DeploymentState {
        proposed.validate(diags);
        let mut state = proposed;
        if state.wait_for.is_null() {
            state.wait_for = Value::Value("running".into());
        }
        state.id = Value::Unknown;
        state.runs = Value::Unknown;
        state
    }

    async fn plan_update(
        &self,
        diags: &mut Diagnostics,
        prior: &DeploymentState,
        proposed: DeploymentState,
    ) -> (DeploymentState, Vec<AttributePath>) {
        proposed.validate(diags);
        let mut state = proposed;
        if state.wait_for.is_null() {
            state.wait_for = Value::Value("running".into());
        }
        let empty_args =
            |v: &Value<Vec<Value<String>>>| v.as_ref_option().is_none_or(Vec::is_empty);
        let empty_env = |v: &Value<BTreeMap<String, Value<String>>>| {
            v.as_ref_option().is_none_or(BTreeMap::is_empty)
        };
        let mut replace = Vec::new();
        if state.program != prior.program {
            if self.program_unchanged(&prior.program, &state.program).await {
                // Terraform accepts the prior value in place of an
                // equivalent configured one, so the plan stays empty.
                state.program = prior.program.clone();
            } else {
                replace.push(AttributePath::new("program"));
            }
        }
        if state.vms != prior.vms {
            replace.push(AttributePath::new("vms"));
        }
        if state.args != prior.args && !(empty_args(&state.args) && empty_args(&prior.args)) {
            replace.push(AttributePath::new("args"));
        }
        if state.env != prior.env && !(empty_env(&state.env) && empty_env(&prior.env)) {
            replace.push(AttributePath::new("env"));
        }
        if replace.is_empty() {
            state.id = prior.id.clone();
            state.runs = prior.runs.clone();
        } else {
            state.id = Value::Unknown;
            state.runs = Value::Unknown;
        }
        (state, replace)
    }

    async fn create(
        &self,
        diags: &mut Diagnostics,
        client: &Client,
        planned: DeploymentState,
        request: &CreateRequest,
    ) -> Option<DeploymentState> {
        planned.validate(diags);
        if !diags.errors.is_empty() {
            return None;
        }
        let body = DeploymentCreate {
            tenant: None,
            program: known(&planned.program),
            vms: known_list(&planned.vms),
            args: known_list(&planned.args),
            outputs: known_list(&planned.outputs),
            env: planned
                .env
                .as_ref_option()
                .map(|env| {
                    env.iter()
                        .map(|(k, v)| (k.clone(), v.as_ref_option().cloned().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default(),
            request_id: request.request_id(),
        };
        let deployment = request
            .send(diags, || client.create_deployment(&body))
            .await?;
        let mut state = planned;
        state.refresh_from(&deployment);
        let (goal, timeout) = (state.goal(), state.create_timeout());
        if let Some(deployment) = self
            .wait_converged(diags, client, &deployment.id, goal, timeout)
            .await
        {
            state.refresh_from(&deployment);
        }
        // Kept even when the wait failed (Terraform marks it tainted), so
        // destroy stops what was started.
        Some(state)
    }

    /// Only `outputs` is sent (a PATCH that leaves the runs alone); the
    /// other in-place changes, `wait_for` and `timeouts`, steer create.
    async fn update(
        &self,
        diags: &mut Diagnostics,
        prior: &DeploymentState,
        planned: DeploymentState,
    ) -> Option<DeploymentState> {
        let (old, new) = (known_list(&prior.outputs), known_list(&planned.outputs));
        if old == new {
            return Some(planned);
        }
        let client = self.shared.client(diags)?;
        let body = DeploymentPatch {
            outputs: Some(new),
            request_id: None,
        };
        match client.update_deployment(&known(&prior.id), &body).await {
            Ok(deployment) => {
                let mut state = planned;
                state.refresh_from(&deployment);
                Some(state)
            }
            Err(err) => {
                diagnostics::client_error(diags, &err, Operation::Update(KIND));
                None
            }
        }
    }

    fn id(state: &DeploymentState) -> &Value<String> {
        &state.id
    }

    async fn get(client: &Client, id: &str) -> Result<Deployment, ClientError> {
        client.get_deployment(id).await
    }

    /// Import records the program by id, what configurations reference
    /// (`measurelab_program.x.id`); the controller reports its name. When the
    /// program cannot be looked up the name stays, which plan still accepts.
    async fn find(client: &Client, id: &str) -> Result<Deployment, ClientError> {
        let mut deployment = client.get_deployment(id).await?;
        if let Ok(program) = client.get_program(&deployment.program).await {
            deployment.program = program.id;
        }
        Ok(deployment)
    }

    /// Stops every run.
    async fn delete(client: &Client, id: &str) -> Result<(), ClientError> {
        client.delete_deployment(id).await.map(drop)
    }

    async fn refresh(
        &self,
        _client: &Client,
        state: &mut DeploymentState,
        deployment: &Deployment,
    ) {
        state.refresh_from(deployment);
    }

    /// A deployment stopped outside Terraform is gone for good.
    fn is_gone(deployment: &Deployment) -> bool {
        !deployment.runs.is_empty() && deployment.runs.iter().all(|r| r.status == "stopped")
    }

    fn import_base(deployment: &Deployment) -> DeploymentState {
        DeploymentState {
            program: Value::Value(deployment.program.clone()),
            vms: Value::Value(
                deployment
                    .runs
                    .iter()
                    .map(|r| Value::Value(r.vm_id.clone()))
                    .collect(),
            ),
            wait_for: Value::Value("running".into()),
            timeouts: Value::Value(DeploymentTimeouts::default()),
            ..Default::default()
        }
    }

    fn import_not_found(id: &str) -> String {
        format!("The controller has no deployment with id {id:?}.\n\nWhat to do: import by id (`GET /v1/deployments`).")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &str, exit_code: Option<i32>) -> ProgramRunState {
        ProgramRunState {
            vm: "p/v".into(),
            vm_id: "id".into(),
            status: status.into(),
            exit_code,
            stdout_tail: String::new(),
            stderr_tail: "boom\n".into(),
            started_at: None,
            finished_at: None,
        }
    }

    fn deployment(runs: Vec<ProgramRunState>) -> Deployment {
        Deployment {
            tenant_id: String::new(),
            id: "d".into(),
            program: "prog".into(),
            args: vec![],
            env: BTreeMap::new(),
            outputs: vec![],
            runs,
            created_at: String::new(),
        }
    }

    #[test]
    fn servers_converge_when_every_run_is_running() {
        let d = deployment(vec![run("running", None), run("pending", None)]);
        assert_eq!(converged(&d, WaitFor::Running), Ok(false));
        let d = deployment(vec![run("running", None), run("running", None)]);
        assert_eq!(converged(&d, WaitFor::Running), Ok(true));
        let d = deployment(vec![run("running", None), run("exited", Some(2))]);
        let err = converged(&d, WaitFor::Running).expect_err("an exited server fails");
        assert!(err.contains("exit code 2") && err.contains("boom"), "{err}");
    }

    #[test]
    fn one_shot_programs_must_exit_zero() {
        let d = deployment(vec![run("exited", Some(0)), run("running", None)]);
        assert_eq!(converged(&d, WaitFor::Exited), Ok(false));
        let d = deployment(vec![run("exited", Some(0))]);
        assert_eq!(converged(&d, WaitFor::Exited), Ok(true));
        let d = deployment(vec![run("exited", Some(1))]);
        assert!(converged(&d, WaitFor::Exited).is_err());
        let d = deployment(vec![run("failed", None)]);
        assert!(converged(&d, WaitFor::Exited).is_err());
    }

    #[test]
    fn bad_values_point_at_their_attributes() {
        let mut diags = Diagnostics::default();
        DeploymentState {
            vms: Value::Value(vec![]),
            wait_for: Value::Value("done".into()),
            args: Value::Value(vec![
                Value::Value("ok".into()),
                Value::Value("bad\0".into()),
            ]),
            outputs: Value::Value(vec![
                Value::Value("/tmp/capture.pcap".into()),
                Value::Value("/tmp/../etc/shadow".into()),
            ]),
            ..Default::default()
        }
        .validate(&mut diags);
        let paths: Vec<_> = diags.errors.iter().map(|d| d.attribute.clone()).collect();
        assert_eq!(
            paths,
            vec![
                AttributePath::new("vms"),
                AttributePath::new("wait_for"),
                AttributePath::new("args").index(1),
                AttributePath::new("outputs").index(1),
            ]
        );
    }

    /// A controller stand-in that knows one program, `ticker` (id `p-1`),
    /// and one deployment of it, `d-1`, reported by the program's name.
    async fn fake_controller() -> Client {
        use axum::extract::Path;
        use axum::http::StatusCode;
        use axum::response::{IntoResponse, Response};
        use axum::routing::get;
        use axum::{Json, Router};
        use measurelab_api::http::Program;

        async fn program(Path(key): Path<String>) -> Response {
            if key != "ticker" && key != "p-1" {
                return StatusCode::NOT_FOUND.into_response();
            }
            Json(Program {
                tenant_id: String::new(),
                id: "p-1".into(),
                name: "ticker".into(),
                sha256: String::new(),
                size_bytes: 1,
                created_at: String::new(),
            })
            .into_response()
        }
        async fn deployment_d1() -> Json<Deployment> {
            Json(Deployment {
                tenant_id: String::new(),
                id: "d-1".into(),
                program: "ticker".into(),
                ..deployment(vec![run("running", None)])
            })
        }
        let app = Router::new()
            .route("/v1/programs/:key", get(program))
            .route("/v1/deployments/d-1", get(deployment_d1));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Client::new(&url, "token", None).unwrap()
    }

    fn deployed(program: &str) -> DeploymentState {
        DeploymentState {
            program: Value::Value(program.into()),
            vms: Value::Value(vec![Value::Value("vm-1".into())]),
            wait_for: Value::Value("running".into()),
            id: Value::Value("d-1".into()),
            runs: Value::Value(vec![]),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_same_program_by_id_or_name_plans_no_replacement() {
        let shared = Shared::new(tokio_util::sync::CancellationToken::new());
        shared.set_client(fake_controller().await);
        let resource = Deployments::new(shared);
        let mut diags = Diagnostics::default();

        // Imported before import recorded ids: the prior holds the name.
        let prior = deployed("ticker");
        let mut proposed = deployed("p-1");
        proposed.id = Value::Unknown;
        let (state, replace) = resource.plan_update(&mut diags, &prior, proposed).await;
        assert!(replace.is_empty(), "{replace:?}");
        assert_eq!(state.program, Value::Value("ticker".into()));
        assert_eq!(state.id, Value::Value("d-1".into()));

        let (_, replace) = resource
            .plan_update(&mut diags, &deployed("p-1"), deployed("ticker"))
            .await;
        assert!(replace.is_empty(), "{replace:?}");

        // Another program (or one the controller no longer has) replaces.
        let (state, replace) = resource
            .plan_update(&mut diags, &prior, deployed("p-2"))
            .await;
        assert_eq!(replace, vec![AttributePath::new("program")]);
        assert_eq!(state.id, Value::Unknown);
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
    }

    #[tokio::test]
    async fn import_records_the_program_id_that_configurations_use() {
        let client = fake_controller().await;
        let found = <Deployments as ManagedResource>::find(&client, "d-1")
            .await
            .unwrap();
        assert_eq!(
            Deployments::import_base(&found).program,
            Value::Value("p-1".into())
        );
    }
}
