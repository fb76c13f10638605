//! Acceptance tests of `measurelab_platform_peer` and the `gateway` block of
//! `measurelab_virtual_platform`: `examples/platform-access` applied with the
//! real terraform CLI against a lab whose agents report a public address, as
//! a researcher (the demo tenant's member token).

use measurelab_acceptance::{
    acc_enabled, block_on, describe, resource_values, workspace_root, Lab,
};

/// What every lab agent reports as its public address (TEST-NET-1): the
/// gateway's endpoint in the peers' configurations.
const PUBLIC: &str = "192.0.2.10";
const PEER: &str = "measurelab_platform_peer.laptop";

/// A working directory holding `examples/platform-access` as shipped.
fn platform_access(lab: &Lab) -> anyhow::Result<measurelab_acceptance::Terraform> {
    let tf = lab.terraform_as(&lab.member_env)?;
    let example = workspace_root().join("examples/platform-access");
    for entry in std::fs::read_dir(&example)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tf") {
            std::fs::copy(
                &path,
                tf.dir.path().join(path.file_name().unwrap_or_default()),
            )?;
        }
    }
    Ok(tf)
}

fn output(tf: &measurelab_acceptance::Terraform, name: &str) -> anyhow::Result<String> {
    let out = tf.ok(&["output", "-raw", name])?;
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn acc_platform_peer_basic() -> anyhow::Result<()> {
    if !acc_enabled("acc_platform_peer_basic") {
        return Ok(());
    }
    // The lab's agents inherit it (`measurelab agent --public-address`).
    std::env::set_var("MEASURELAB_AGENT_PUBLIC_ADDRESS", PUBLIC);
    let lab = Lab::up(2)?;
    let tf = platform_access(&lab)?;
    tf.init()?;
    tf.apply()?;

    let client = lab.client_as(&lab.member_token)?;
    let platform = block_on(async { Ok(client.get_platform("access").await?) })?;
    assert_eq!(output(&tf, "gateway_endpoint")?, format!("{PUBLIC}:51820"));
    assert_eq!(output(&tf, "subnet")?, platform.subnet);
    let gateway_key = platform
        .gateway_public_key
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the platform reports no gateway key"))?;
    assert_eq!(gateway_key.len(), 44, "base64 of 32 bytes: {gateway_key}");

    let state = tf.state_json()?;
    let peer = resource_values(&state, PEER)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no peer in the state"))?;
    let private_key = peer["private_key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no generated private key: {peer}"))?
        .to_string();
    let wg = output(&tf, "wg_config")?;
    let lines: Vec<&str> = wg.lines().collect();
    for line in [
        format!("PrivateKey = {private_key}"),
        format!(
            "Address = {}",
            peer["tunnel_address"].as_str().unwrap_or("?")
        ),
        format!("PublicKey = {gateway_key}"),
        format!("Endpoint = {PUBLIC}:51820"),
        format!("AllowedIPs = {}", platform.subnet),
        "PersistentKeepalive = 25".to_string(),
    ] {
        assert!(lines.contains(&line.as_str()), "{line:?} not in\n{wg}");
    }
    let on_controller = block_on(async { Ok(client.list_platform_peers("access").await?) })?;
    assert_eq!(on_controller.len(), 1);
    assert_eq!(peer["public_key"], on_controller[0].public_key.as_str());
    assert_eq!(on_controller[0].private_key, None);

    // Refresh re-renders the config with the state's key: no drift.
    let (code, out) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&out));

    // Destroying the peer as the README says removes it from the platform
    // (and so from the desired state of n1, which is built from these rows).
    tf.ok(&[
        "destroy",
        "-auto-approve",
        "-input=false",
        &format!("-target={PEER}"),
    ])?;
    assert!(block_on(async { Ok(client.list_platform_peers("access").await?) })?.is_empty());
    let platform = block_on(async { Ok(client.get_platform("access").await?) })?;
    assert_eq!(
        platform.gateway_endpoint.as_deref(),
        Some("192.0.2.10:51820")
    );

    tf.destroy()?;
    let gone = block_on(async { Ok(client.get_platform("access").await) })?;
    assert!(
        matches!(gone, Err(e) if e.is_not_found()),
        "destroy must delete the platform"
    );
    Ok(())
}
