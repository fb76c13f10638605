resource "measurelab_virtual_platform" "demo" {
  name  = "deploy-demo"
  nodes = ["n1", "n2"]
}

resource "measurelab_vm" "worker" {
  for_each   = toset(measurelab_virtual_platform.demo.nodes)
  name       = "worker-${each.key}"
  platform   = measurelab_virtual_platform.demo.name
  node       = each.key
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

resource "measurelab_program" "hello" {
  name   = "hello-deploy"
  source = "${path.module}/hello.sh"
}

# Run hello.sh once on every worker; create waits until each run exited 0
# (a long-running program would use wait_for = "running", the default).
# The program is named (as the controller reports it, so an import matches);
# a changed hello.sh replaces the program, and with it this deployment.
resource "measurelab_deployment" "hello" {
  program  = measurelab_program.hello.name
  vms      = [for vm in measurelab_vm.worker : vm.id]
  args     = ["from", "terraform"]
  env      = { GREETING = "hi" }
  wait_for = "exited"

  timeouts {
    create = "3m"
  }

  lifecycle {
    replace_triggered_by = [measurelab_program.hello.id]
  }
}

output "hello_output" {
  value = { for run in measurelab_deployment.hello.runs : run.vm => trimspace(run.stdout_tail) }
}

output "hello_deployment_id" {
  value = measurelab_deployment.hello.id
}
