//! Acceptance tests of the provider block: settings from the environment and
//! the errors a user sees when they are wrong.

use measurelab_acceptance::{acc_enabled, describe, Lab, Terraform, PROVIDER_BLOCK};

const DATA_CONFIG: &str = "data \"measurelab_nodes\" \"all\" {}\n\noutput \"names\" {\n  value = data.measurelab_nodes.all.names\n}\n";

#[test]
fn acc_provider_missing_endpoint() -> anyhow::Result<()> {
    if !acc_enabled("acc_provider_missing_endpoint") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    // Only the token: the endpoint is neither in the block nor in the environment.
    let env = vec![("MEASURELAB_TOKEN".to_string(), lab.token.clone())];
    let tf = Terraform::new(&lab.tfrc, &env)?;
    tf.write("main.tf", &format!("{PROVIDER_BLOCK}\n{DATA_CONFIG}"))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("Missing provider setting `endpoint`"),
        "{stderr}"
    );
    assert!(stderr.contains("MEASURELAB_ENDPOINT"), "{stderr}");
    Ok(())
}

#[test]
fn acc_provider_bad_token() -> anyhow::Result<()> {
    if !acc_enabled("acc_provider_bad_token") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let env = lab.env_as("not-the-token");
    let tf = Terraform::new(&lab.tfrc, &env)?;
    tf.write("main.tf", &format!("{PROVIDER_BLOCK}\n{DATA_CONFIG}"))?;
    tf.init()?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        stderr.contains("The controller refused the provider's token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-token"),
        "the token must not be echoed:\n{stderr}"
    );
    Ok(())
}

#[test]
fn acc_provider_block_overrides_environment() -> anyhow::Result<()> {
    if !acc_enabled("acc_provider_block_overrides_environment") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    // The environment points nowhere; the block's values must win.
    let env = vec![
        (
            "MEASURELAB_ENDPOINT".to_string(),
            "http://127.0.0.1:9".to_string(),
        ),
        ("MEASURELAB_TOKEN".to_string(), "wrong".to_string()),
    ];
    let tf = Terraform::new(&lab.tfrc, &env)?;
    let config = PROVIDER_BLOCK.replace(
        "provider \"measurelab\" {}",
        &format!(
            "provider \"measurelab\" {{\n  endpoint = \"{}\"\n  token    = \"{}\"\n  ca_cert  = \"{}\"\n}}",
            lab.endpoint,
            lab.token,
            lab.ca_cert.as_deref().unwrap_or_default()
        ),
    );
    tf.write("main.tf", &format!("{config}\n{DATA_CONFIG}"))?;
    tf.init()?;
    tf.apply()?;
    let outputs: serde_json::Value = serde_json::from_slice(&tf.ok(&["output", "-json"])?.stdout)?;
    assert_eq!(outputs["names"]["value"], serde_json::json!(["n1"]));

    let bad = PROVIDER_BLOCK.replace(
        "provider \"measurelab\" {}",
        "provider \"measurelab\" {\n  endpoint = \"127.0.0.1:7070\"\n}",
    );
    tf.write("main.tf", &format!("{bad}\n{DATA_CONFIG}"))?;
    let output = tf.run(&["plan", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(stderr.contains("Invalid controller endpoint"), "{stderr}");
    assert!(
        stderr.contains(r#"endpoint = "127.0.0.1:7070""#),
        "must point at the attribute:\n{stderr}"
    );
    Ok(())
}
