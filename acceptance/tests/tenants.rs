//! Tenancy through the real CLI and lab:
//! - two tenants apply `examples/multicast-lab` at the same time, each with its
//!   own member token; each sees only its own objects, and every call with one
//!   tenant's token on the other's objects answers 404 or 403 and changes
//!   nothing;
//! - `measurelab_tenant` and `measurelab_api_token` as the operator: the token
//!   works, replacing it rotates the secret (the old one is refused);
//! - a plan that needs a role the token lacks fails at plan, naming the
//!   object, the action and the role;
//! - `lab up` gives the demo tenant a member token (`lab env`), reuses it on a
//!   second `up` and replaces it once revoked.

use std::collections::{BTreeMap, BTreeSet};

use measurelab_acceptance::{acc_enabled, block_on, describe, workspace_root, Lab, Terraform};
use reqwest::Method;
use serde_json::{json, Value};

/// One HTTP call with `token`: its status and body (JSON, or the text as a
/// JSON string for CSV answers).
fn call(lab: &Lab, token: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}{path}", lab.endpoint);
    let client = lab
        .http_client()
        .expect("an HTTP client trusting the lab CA");
    let answer = block_on(async move {
        let mut request = client.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    });
    answer.unwrap_or_else(|err| panic!("{path}: {err:#}"))
}

/// The operator makes tenant `name` and a token of `role` in it; its secret.
fn tenant_with_token(lab: &Lab, name: &str, role: &str) -> String {
    let (status, tenant) = call(
        lab,
        &lab.token,
        Method::POST,
        "/v1/tenants",
        Some(json!({ "name": name })),
    );
    assert!(
        status == 201 || status == 200 || status == 409,
        "create tenant {name}: {status} {tenant}"
    );
    token_in(lab, name, role)
}

/// The operator makes a token of `role` in tenant `tenant`; its secret.
fn token_in(lab: &Lab, tenant: &str, role: &str) -> String {
    let (status, token) = call(
        lab,
        &lab.token,
        Method::POST,
        "/v1/tokens",
        Some(json!({ "name": format!("{tenant}-{role}"), "role": role, "tenant": tenant })),
    );
    assert!(
        status == 201 || status == 200,
        "create token: {status} {token}"
    );
    token["secret"].as_str().unwrap_or_default().to_string()
}

/// `terraform show -json` resources of every module, as (type, values).
fn state_resources(state: &Value) -> Vec<(String, Value)> {
    fn walk(module: &Value, out: &mut Vec<(String, Value)>) {
        for resource in module["resources"].as_array().into_iter().flatten() {
            if resource["mode"] == "managed" {
                out.push((
                    resource["type"].as_str().unwrap_or_default().to_string(),
                    resource["values"].clone(),
                ));
            }
        }
        for child in module["child_modules"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(&state["values"]["root_module"], &mut out);
    out
}

/// Ids by resource type, from a state.
fn ids_by_type(state: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (kind, values) in state_resources(state) {
        if let Some(id) = values["id"].as_str() {
            ids.entry(kind).or_default().insert(id.to_string());
        }
    }
    ids
}

/// What the controller shows a tenant of its objects: ids of platforms,
/// VMs, tasks, programs, deployments and the platforms' and VMs' generations.
fn snapshot(lab: &Lab, token: &str) -> BTreeMap<String, Value> {
    let mut seen = BTreeMap::new();
    for (collection, list) in [
        ("platforms", "platforms"),
        ("vms", "vms"),
        ("tasks", "tasks"),
        ("programs", "programs"),
        ("deployments", "deployments"),
        ("qos_policies", "qos_policies"),
    ] {
        let (status, body) = call(lab, token, Method::GET, &format!("/v1/{collection}"), None);
        assert_eq!(status, 200, "GET /v1/{collection}: {body}");
        let objects: Vec<Value> = body[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| json!({ "id": o["id"], "name": o["name"], "generation": o["generation"], "tenant_id": o["tenant_id"] }))
            .collect();
        seen.insert(collection.to_string(), Value::Array(objects));
    }
    seen
}

/// A working directory applying `examples/multicast-lab` as shipped (the
/// module path made absolute) with `token`.
fn multicast_dir(lab: &Lab, token: &str) -> anyhow::Result<Terraform> {
    let tf = lab.terraform_as(&lab.env_as(token))?;
    let root = workspace_root();
    let example = std::fs::read_to_string(root.join("examples/multicast-lab/main.tf"))?;
    let module_dir = root.join("modules/multicast-measurement");
    let example = example.replace(
        "\"../../modules/multicast-measurement\"",
        &format!("{:?}", module_dir.display().to_string()),
    );
    anyhow::ensure!(
        example.contains(&module_dir.display().to_string()),
        "the example no longer uses ../../modules/multicast-measurement"
    );
    tf.write("main.tf", &example)?;
    tf.init()?;
    Ok(tf)
}

/// An id no object has: what a cross-tenant reference must look like.
const MISSING_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Every call of tenant A (`token`) on tenant B's objects (`theirs`, ids by
/// resource type); returns the calls that leaked or changed something.
/// B's object in the path must answer 404 or 403; B's object named in a list
/// filter or a create body must get exactly the answer a missing object gets.
fn cross_tenant_calls(
    lab: &Lab,
    token: &str,
    theirs: &BTreeMap<String, BTreeSet<String>>,
    own_program: &str,
    own_vm: &str,
) -> Vec<String> {
    let first = |kind: &str| {
        theirs
            .get(kind)
            .and_then(|ids| ids.iter().next().cloned())
            .unwrap_or_else(|| panic!("tenant B has no {kind}: {theirs:?}"))
    };
    let platform = first("measurelab_virtual_platform");
    let vm = first("measurelab_vm");
    let program = first("measurelab_program");
    let deployment = first("measurelab_deployment");
    let task = first("measurelab_measurement_task");
    let mut calls: Vec<(Method, String, Option<Value>)> = vec![
        // get
        (Method::GET, format!("/v1/platforms/{platform}"), None),
        (Method::GET, format!("/v1/vms/{vm}"), None),
        (Method::GET, format!("/v1/vms/{vm}/logs"), None),
        (Method::GET, format!("/v1/programs/{program}"), None),
        (Method::GET, format!("/v1/deployments/{deployment}"), None),
        (Method::GET, format!("/v1/tasks/{task}"), None),
        (Method::GET, "/v1/tenants/tb".to_string(), None),
        (Method::GET, "/v1/tenants/tb/usage".to_string(), None),
        // list filters
        (Method::GET, format!("/v1/vms?platform={platform}"), None),
        // results and export
        (Method::GET, format!("/v1/results?task={task}"), None),
        (Method::GET, format!("/v1/results/latest?task={task}"), None),
        (
            Method::GET,
            format!("/v1/results/export?task={task}&format=csv"),
            None,
        ),
        // patch
        (
            Method::PATCH,
            format!("/v1/platforms/{platform}"),
            Some(json!({ "description": "taken over" })),
        ),
        (
            Method::POST,
            format!("/v1/platforms/{platform}/pause"),
            None,
        ),
        (
            Method::PATCH,
            format!("/v1/vms/{vm}"),
            Some(json!({ "vcpus": 2 })),
        ),
        // deploy into B's VM, and B's program into A's VM
        (
            Method::POST,
            "/v1/deployments".to_string(),
            Some(json!({ "program": own_program, "vms": [vm] })),
        ),
        (
            Method::POST,
            "/v1/deployments".to_string(),
            Some(json!({ "program": program, "vms": [own_vm] })),
        ),
        // a VM in B's platform
        (
            Method::POST,
            "/v1/vms".to_string(),
            Some(json!({
                "name": "intruder", "platform": platform, "node": "n1", "vcpus": 1,
                "memory_mib": 64, "appliance": "namespace", "backend": "namespace",
                "power_state": "running"
            })),
        ),
        // delete
        (Method::DELETE, format!("/v1/tasks/{task}"), None),
        (
            Method::DELETE,
            format!("/v1/deployments/{deployment}"),
            None,
        ),
        (Method::DELETE, format!("/v1/programs/{program}"), None),
        (Method::DELETE, format!("/v1/vms/{vm}"), None),
        (Method::DELETE, format!("/v1/platforms/{platform}"), None),
    ];
    if let Some(policy) = theirs
        .get("measurelab_qos_policy")
        .and_then(|ids| ids.iter().next())
    {
        calls.push((Method::GET, format!("/v1/qos_policies/{policy}"), None));
        calls.push((
            Method::PATCH,
            format!("/v1/qos_policies/{policy}"),
            Some(json!({ "ingress_max_kbps": 1 })),
        ));
        calls.push((Method::DELETE, format!("/v1/qos_policies/{policy}"), None));
    }
    let mut leaks = Vec::new();
    for (method, path, body) in calls {
        let shown = format!("{method} {path}");
        let is_create = method == Method::POST;
        let addressed = !is_create && !path.contains('?');
        let (status, answer) = call(lab, token, method.clone(), &path, body.clone());
        eprintln!("cross-tenant {shown}: {status}");
        if addressed {
            // B's object in the path: refused outright.
            if status != 404 && status != 403 {
                leaks.push(format!("{shown} answered {status}: {answer}"));
            }
            continue;
        }
        // B's object in a filter or a create body: answered exactly as an
        // object that does not exist, so nothing leaks, and nothing created.
        let missing = |text: &str| {
            theirs
                .values()
                .flatten()
                .fold(text.to_string(), |t, id| t.replace(id.as_str(), MISSING_ID))
        };
        let body_missing =
            body.map(|b| serde_json::from_str(&missing(&b.to_string())).unwrap_or(Value::Null));
        let (status_missing, answer_missing) =
            call(lab, token, method, &missing(&path), body_missing);
        let (seen, seen_missing) = (missing(&answer.to_string()), answer_missing.to_string());
        let created = is_create && (200..300).contains(&status);
        if status != status_missing || seen != seen_missing || created {
            leaks.push(format!(
                "{shown} answered {status}: {answer}; for a missing object: {status_missing}: {answer_missing}"
            ));
        }
    }
    leaks
}

#[test]
fn acc_two_tenants_apply_multicast_concurrently_and_stay_apart() -> anyhow::Result<()> {
    if !acc_enabled("acc_two_tenants_apply_multicast_concurrently_and_stay_apart") {
        return Ok(());
    }
    let lab = Lab::up(4)?;
    let token_a = tenant_with_token(&lab, "ta", "member");
    let token_b = tenant_with_token(&lab, "tb", "member");
    let tf_a = multicast_dir(&lab, &token_a)?;
    let tf_b = multicast_dir(&lab, &token_b)?;
    let bin_dir = tf_a.dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    lab.strip_mcast_binaries_into(&bin_dir)?;
    let bin_var = format!("bin_dir={}", bin_dir.display());
    let vars = ["-var", bin_var.as_str(), "-var", "duration_seconds=5"];
    let with_vars = |first: &[&'static str]| {
        let mut args: Vec<&str> = first.to_vec();
        args.extend(vars);
        args.push("-no-color");
        args
    };

    // Both tenants apply the same example at once: same names, own objects.
    let apply = with_vars(&["apply", "-auto-approve", "-input=false"]);
    let (applied_a, applied_b) = both(&tf_a, &tf_b, &apply);
    assert!(
        applied_a.status.success(),
        "tenant A apply:\n{}",
        describe(&applied_a)
    );
    assert!(
        applied_b.status.success(),
        "tenant B apply:\n{}",
        describe(&applied_b)
    );
    for (tf, who) in [(&tf_a, "A"), (&tf_b, "B")] {
        let outputs: Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
        assert_eq!(
            outputs["result_status"]["value"], "ok",
            "tenant {who}: {outputs:#}"
        );
    }
    let ids_a = ids_by_type(&tf_a.state_json()?);
    let ids_b = ids_by_type(&tf_b.state_json()?);

    // Each sees only its own objects, through the API ...
    let seen_a = snapshot(&lab, &token_a);
    let seen_b = snapshot(&lab, &token_b);
    for (seen, own, who) in [(&seen_a, &ids_a, "A"), (&seen_b, &ids_b, "B")] {
        for (collection, kind) in [
            ("platforms", "measurelab_virtual_platform"),
            ("vms", "measurelab_vm"),
            ("tasks", "measurelab_measurement_task"),
            ("programs", "measurelab_program"),
        ] {
            let listed: BTreeSet<String> = seen[collection]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["id"].as_str().map(str::to_string))
                .collect();
            assert_eq!(
                Some(&listed),
                own.get(kind),
                "tenant {who} lists other {collection} than its own"
            );
        }
    }
    // ... and through the data sources.
    let lists = lab.terraform_as(&lab.env_as(&token_a))?;
    lists.write(
        "main.tf",
        r#"
data "measurelab_virtual_platforms" "all" {}
data "measurelab_vms" "all" {}
data "measurelab_measurement_tasks" "all" {}
output "platform_ids" { value = [for p in data.measurelab_virtual_platforms.all.platforms : p.id] }
output "vm_ids" { value = [for v in data.measurelab_vms.all.vms : v.id] }
output "task_ids" { value = [for t in data.measurelab_measurement_tasks.all.tasks : t.id] }
"#,
    )?;
    std::fs::copy(
        workspace_root().join("examples/resources/measurelab_vm/versions.tf"),
        lists.dir.path().join("versions.tf"),
    )?;
    lists.init()?;
    lists.apply()?;
    let listed: Value = serde_json::from_slice(&lists.ok(&["output", "-json"])?.stdout)?;
    for (output, kind) in [
        ("platform_ids", "measurelab_virtual_platform"),
        ("vm_ids", "measurelab_vm"),
        ("task_ids", "measurelab_measurement_task"),
    ] {
        let ids: BTreeSet<String> = listed[output]["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        assert_eq!(
            Some(&ids),
            ids_a.get(kind),
            "data source {output} of tenant A"
        );
    }

    // Every call with A's token on B's objects is refused and changes nothing.
    let own_program = ids_a["measurelab_program"]
        .iter()
        .next()
        .cloned()
        .unwrap_or_default();
    let own_vm = ids_a["measurelab_vm"]
        .iter()
        .next()
        .cloned()
        .unwrap_or_default();
    let leaks = cross_tenant_calls(&lab, &token_a, &ids_b, &own_program, &own_vm);
    assert!(
        leaks.is_empty(),
        "cross-tenant calls not refused:\n{}",
        leaks.join("\n")
    );
    // The event feed is refused to tenants or shows only their own objects.
    let (status, events) = call(&lab, &token_a, Method::GET, "/v1/events?after=0", None);
    assert!(status == 200 || status == 403, "{status} {events}");
    for id in ids_b.values().flatten() {
        assert!(
            !events.to_string().contains(id.as_str()),
            "tenant A's events show B's {id}"
        );
    }
    assert_eq!(
        snapshot(&lab, &token_b),
        seen_b,
        "tenant B's objects changed"
    );
    let plan = with_vars(&["plan", "-detailed-exitcode", "-input=false"]);
    let planned = tf_b.command(&plan).output()?;
    assert_eq!(
        planned.status.code(),
        Some(0),
        "tenant B's plan after A's calls must be empty:\n{}",
        describe(&planned)
    );

    // Both destroy cleanly, at once too.
    let destroy = with_vars(&["destroy", "-auto-approve", "-input=false"]);
    let (destroyed_a, destroyed_b) = both(&tf_a, &tf_b, &destroy);
    assert!(
        destroyed_a.status.success(),
        "tenant A destroy:\n{}",
        describe(&destroyed_a)
    );
    assert!(
        destroyed_b.status.success(),
        "tenant B destroy:\n{}",
        describe(&destroyed_b)
    );
    for token in [&token_a, &token_b] {
        for (collection, objects) in snapshot(&lab, token) {
            assert_eq!(objects, json!([]), "{collection} left after destroy");
        }
    }
    Ok(())
}

/// Run `terraform <args>` in both working directories at the same time.
fn both(
    a: &Terraform,
    b: &Terraform,
    args: &[&str],
) -> (std::process::Output, std::process::Output) {
    std::thread::scope(|scope| {
        let first = scope.spawn(|| a.command(args).output());
        let second = b.command(args).output();
        let first = first.join().expect("terraform thread");
        (
            first.expect("run terraform (tenant A)"),
            second.expect("run terraform (tenant B)"),
        )
    })
}

/// `text` with every run of whitespace (Terraform's line wrapping) one space.
fn folded(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `GET /v1/whoami` with `token`: (status, role, tenant name).
fn whoami(lab: &Lab, token: &str) -> (u16, String, String) {
    let (status, body) = call(lab, token, Method::GET, "/v1/whoami", None);
    (
        status,
        body["role"].as_str().unwrap_or_default().to_string(),
        body["tenant_name"].as_str().unwrap_or_default().to_string(),
    )
}

const TENANT_AND_TOKEN: &str = r#"
resource "measurelab_tenant" "physics" {
  name        = "physics"
  description = "acceptance"
  quota {
    max_platforms = 2
    max_vms       = 4
  }
}

resource "measurelab_api_token" "ci" {
  name    = "physics-ci"
  role    = "member"
  tenant  = measurelab_tenant.physics.name
  keepers = { rotation = "ROTATION" }
}

output "secret" {
  value     = measurelab_api_token.ci.secret
  sensitive = true
}
"#;

#[test]
fn acc_tenant_and_token_rotate_and_plans_check_roles() -> anyhow::Result<()> {
    if !acc_enabled("acc_tenant_and_token_rotate_and_plans_check_roles") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let versions = workspace_root().join("examples/resources/measurelab_vm/versions.tf");

    // `lab env` is the demo tenant's member; `--operator` the operator.
    assert_eq!(
        whoami(&lab, &lab.member_token),
        (200, "member".into(), "demo".into())
    );
    assert_eq!(whoami(&lab, &lab.token).1, "operator");

    // The operator makes a tenant and a member token in it.
    let tf = lab.terraform()?;
    std::fs::copy(&versions, tf.dir.path().join("versions.tf"))?;
    tf.write("main.tf", &TENANT_AND_TOKEN.replace("ROTATION", "1"))?;
    tf.init()?;
    tf.apply()?;
    let secret = |tf: &Terraform| -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&tf.ok(&["output", "-raw", "secret"])?.stdout).into_owned())
    };
    let first = secret(&tf)?;
    assert_eq!(
        whoami(&lab, &first),
        (200, "member".into(), "physics".into())
    );
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(
        code,
        0,
        "plan after apply must be empty:\n{}",
        describe(&output)
    );
    let (status, tenant) = call(&lab, &lab.token, Method::GET, "/v1/tenants/physics", None);
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["quota"]["max_vms"], 4, "{tenant}");

    // Rotation is a replacement: the new secret works, the old one is refused.
    tf.write("main.tf", &TENANT_AND_TOKEN.replace("ROTATION", "2"))?;
    tf.apply()?;
    let second = secret(&tf)?;
    assert_ne!(first, second, "rotation must give a new secret");
    assert_eq!(whoami(&lab, &second).0, 200);
    assert_eq!(whoami(&lab, &first).0, 401, "the old secret still works");

    // Plan-time permission checks name the object, the action and the role.
    let member = lab.terraform_as(&lab.env_as(&second))?;
    std::fs::copy(&versions, member.dir.path().join("versions.tf"))?;
    member.write(
        "main.tf",
        r#"resource "measurelab_tenant" "other" { name = "other" }"#,
    )?;
    member.init()?;
    let planned = member.run(&["plan", "-input=false"])?;
    // Terraform wraps diagnostics: compare with the line breaks folded.
    let text = folded(&describe(&planned));
    assert!(!planned.status.success(), "{text}");
    assert!(
        text.contains("Permission denied")
            && text.contains("measurelab_tenant.other")
            && text.contains("creating tenant \"other\" needs role operator")
            && text.contains("has role member in tenant \"physics\""),
        "{text}"
    );
    let viewer = token_in(&lab, "physics", "viewer");
    let reader = lab.terraform_as(&lab.env_as(&viewer))?;
    std::fs::copy(&versions, reader.dir.path().join("versions.tf"))?;
    reader.write(
        "main.tf",
        r#"resource "measurelab_virtual_platform" "lab" {
  name  = "lab"
  nodes = ["n1"]
}"#,
    )?;
    reader.init()?;
    let planned = reader.run(&["plan", "-input=false"])?;
    // Terraform wraps diagnostics: compare with the line breaks folded.
    let text = folded(&describe(&planned));
    assert!(
        !planned.status.success()
            && text.contains("measurelab_virtual_platform.lab")
            && text.contains(
                "creating virtual platform \"lab\" needs role member in tenant \"physics\""
            ),
        "{text}"
    );
    // What the plan cannot see (the controller's own check) is a 403 that
    // reaches the user with the controller's words.
    let (status, refusal) = call(
        &lab,
        &viewer,
        Method::POST,
        "/v1/platforms",
        Some(json!({ "name": "lab", "nodes": ["n1"] })),
    );
    assert_eq!(status, 403, "{refusal}");

    tf.destroy()?;
    assert_eq!(whoami(&lab, &second).0, 401, "destroy revokes the token");

    // A second `lab up` keeps the demo tokens; a revoked one is replaced.
    let up = ["lab", "up", "--nodes", "1", "--http-port", "0"];
    lab.measurelab(&up)?;
    let env = lab.measurelab(&["lab", "env"])?;
    let again = measurelab_acceptance::parse_env(&String::from_utf8_lossy(&env.stdout));
    assert!(again.contains(&("MEASURELAB_TOKEN".to_string(), lab.member_token.clone())));
    let (status, tokens) = call(&lab, &lab.token, Method::GET, "/v1/tokens", None);
    assert_eq!(status, 200, "{tokens}");
    let own_id = lab
        .member_token
        .strip_prefix("mlt_")
        .and_then(|rest| rest.split('_').next())
        .unwrap_or_default()
        .to_string();
    let (status, revoked) = call(
        &lab,
        &lab.token,
        Method::DELETE,
        &format!("/v1/tokens/{own_id}"),
        None,
    );
    assert!(status == 200 || status == 204, "{status} {revoked}");
    assert_eq!(whoami(&lab, &lab.member_token).0, 401);
    lab.measurelab(&up)?;
    let env = lab.measurelab(&["lab", "env"])?;
    let renewed = measurelab_acceptance::parse_env(&String::from_utf8_lossy(&env.stdout));
    let renewed = renewed
        .iter()
        .find(|(k, _)| k == "MEASURELAB_TOKEN")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert_ne!(renewed, lab.member_token);
    assert_eq!(
        whoami(&lab, &renewed),
        (200, "member".into(), "demo".into())
    );
    Ok(())
}
