//! Acceptance tests of `measurelab_appliance`: from `terraform apply` of an
//! appliance whose files the provider uploads, to a VM on a lab node that
//! runs it from the node's verified cache; and a file the controller serves
//! with other bytes than its digest is refused on the node.

use std::path::{Path, PathBuf};

use measurelab_acceptance::{
    acc_enabled, block_on, describe, planned_actions, resource_values, Lab, Terraform,
    PROVIDER_BLOCK,
};
use sha2::{Digest, Sha256};

const APPLIANCE: &str = "measurelab_appliance.img";
const VM: &str = "measurelab_vm.probe";

/// Where a lab node's agent caches stored appliance files: `lab up` starts
/// agents with the default appliance directory.
const NODE_CACHE: &str = "/var/lib/measurelab/appliances/sha256";

fn sha256(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Removes this test's files from the host-wide node cache: their content is
/// unique to the run, so no other lab uses them.
struct CacheCleanup(Vec<String>);

impl Drop for CacheCleanup {
    fn drop(&mut self) {
        for digest in &self.0 {
            let _ = std::fs::remove_file(Path::new(NODE_CACHE).join(digest));
        }
    }
}

/// Image files unique to this run (so the node cache cannot already hold them).
fn write_image(tf: &Terraform, lab: &Lab) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let stamp = format!("{} {:?}", lab.name, std::time::SystemTime::now());
    // Several gRPC chunks (256 KiB each) on the way to the node.
    let kernel: Vec<u8> = format!("kernel {stamp}\n")
        .bytes()
        .cycle()
        .take(700_000)
        .collect();
    let initrd = format!("initrd {stamp}\n").into_bytes();
    tf.write("vmlinuz", &String::from_utf8(kernel.clone())?)?;
    tf.write("initrd.img", &String::from_utf8(initrd.clone())?)?;
    Ok((kernel, initrd))
}

fn appliance_block() -> String {
    format!(
        r#"{PROVIDER_BLOCK}
resource "measurelab_appliance" "img" {{
  name     = "acc-stored"
  os       = "test files"
  kernel   = "${{path.module}}/vmlinuz"
  initrd   = "${{path.module}}/initrd.img"
  backends = ["namespace"]
}}

resource "measurelab_virtual_platform" "slice" {{
  name  = "slice-appliance"
  nodes = ["n1"]
}}
"#
    )
}

fn vm_block(create_timeout: &str) -> String {
    format!(
        r#"
resource "measurelab_vm" "probe" {{
  name       = "probe"
  platform   = measurelab_virtual_platform.slice.name
  node       = "n1"
  appliance  = measurelab_appliance.img.name
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64

  timeouts {{
    create = "{create_timeout}"
    delete = "2m"
  }}
}}
"#
    )
}

fn cached(digest: &str) -> PathBuf {
    Path::new(NODE_CACHE).join(digest)
}

#[test]
fn acc_appliance_to_vm() -> anyhow::Result<()> {
    if !acc_enabled("acc_appliance_to_vm") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    let (kernel, initrd) = write_image(&tf, &lab)?;
    let (kernel_sha, initrd_sha) = (sha256(&kernel), sha256(&initrd));
    let _cleanup = CacheCleanup(vec![kernel_sha.clone(), initrd_sha.clone()]);
    tf.write("main.tf", &(appliance_block() + &vm_block("2m")))?;
    tf.init()?;
    tf.apply()?;

    let state = tf.state_json()?;
    let values = resource_values(&state, APPLIANCE)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            values["kernel_sha256"].as_str(),
            values["initrd_sha256"].as_str()
        ),
        (Some(kernel_sha.as_str()), Some(initrd_sha.as_str())),
        "{values}"
    );
    let client = lab.client()?;
    let stored = block_on({
        let client = client.clone();
        async move { Ok(client.get_appliance("acc-stored").await?) }
    })?;
    assert_eq!(stored.kernel_sha256.as_deref(), Some(kernel_sha.as_str()));
    assert_eq!(stored.initrd_sha256.as_deref(), Some(initrd_sha.as_str()));
    // The controller keeps the uploaded bytes under their digest.
    let on_controller = lab
        .dir
        .path()
        .join("controller/appliances/sha256")
        .join(&kernel_sha);
    assert!(
        std::fs::read(&on_controller)? == kernel,
        "the controller's copy differs from the local kernel"
    );

    let vm_id = resource_values(&state, VM)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let vm = block_on({
        let client = client.clone();
        let id = vm_id.clone();
        async move { Ok(client.get_vm(&id).await?) }
    })?;
    assert_eq!(vm.appliance, "acc-stored");
    assert!(
        vm.conditions
            .iter()
            .any(|c| c.condition_type == "Ready" && c.status == "True"),
        "{:?}",
        vm.conditions
    );
    // The node fetched both files before the VM started, and kept them only
    // because they matched their digests.
    for (digest, content) in [(&kernel_sha, &kernel), (&initrd_sha, &initrd)] {
        let copy = std::fs::read(cached(digest))
            .map_err(|e| anyhow::anyhow!("{digest} not in the node cache: {e}"))?;
        assert!(&copy == content, "cached {digest} differs from the upload");
    }
    let (code, output) = tf.plan_exit_code()?;
    assert_eq!(code, 0, "{}", describe(&output));

    // A rebuilt initrd is a new appliance: planned as a replacement.
    tf.write("initrd.img", "rebuilt initrd\n")?;
    let plan = tf.saved_plan_json("rebuilt.tfplan")?;
    assert_eq!(
        planned_actions(&plan, APPLIANCE),
        vec!["delete", "create"],
        "{plan}"
    );
    tf.write("initrd.img", &String::from_utf8(initrd)?)?;

    tf.destroy()?;
    let gone = block_on(async move {
        Ok(client
            .get_appliance("acc-stored")
            .await
            .err()
            .is_some_and(|e| e.is_not_found()))
    })?;
    assert!(gone, "destroy must delete the appliance");
    Ok(())
}

#[test]
fn acc_appliance_wrong_checksum_refused() -> anyhow::Result<()> {
    if !acc_enabled("acc_appliance_wrong_checksum_refused") {
        return Ok(());
    }
    let lab = Lab::up(1)?;
    let tf = lab.terraform()?;
    let (kernel, initrd) = write_image(&tf, &lab)?;
    let initrd_sha = sha256(&initrd);
    // The intact kernel is fetched and cached before the initrd is refused.
    let _cleanup = CacheCleanup(vec![sha256(&kernel), initrd_sha.clone()]);
    tf.write("main.tf", &appliance_block())?;
    tf.init()?;
    tf.apply()?;
    // The controller's copy rots after the upload: it now serves bytes that
    // are not what the appliance's digest names.
    let on_controller = lab
        .dir
        .path()
        .join("controller/appliances/sha256")
        .join(&initrd_sha);
    let mut rotten = initrd.clone();
    rotten[0] ^= 0xff;
    std::fs::write(&on_controller, &rotten)?;

    tf.write("main.tf", &(appliance_block() + &vm_block("20s")))?;
    let output = tf.run(&["apply", "-auto-approve", "-input=false"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{}", describe(&output));
    for part in [
        "ApplianceChecksumMismatch",
        "initrd",
        initrd_sha.as_str(),
        sha256(&rotten).as_str(),
    ] {
        assert!(stderr.contains(part), "{part} missing:\n{stderr}");
    }
    assert!(
        !cached(&initrd_sha).exists(),
        "the rotten initrd must not be cached"
    );
    tf.destroy()?;
    Ok(())
}
