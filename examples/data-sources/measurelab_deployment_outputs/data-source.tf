resource "measurelab_virtual_platform" "lab" {
  name  = "outputs-demo"
  nodes = ["n1"]
}

resource "measurelab_vm" "probe" {
  name       = "probe"
  platform   = measurelab_virtual_platform.lab.name
  node       = "n1"
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

resource "measurelab_program" "count" {
  name   = "count-outputs"
  source = "${path.module}/count.sh"
}

# The program's files stay in the VM; declaring them makes them listable and
# downloadable: `measurelab deployment outputs ID` and
# `measurelab deployment fetch ID capture.bin -o .`. Changing `outputs`
# updates the deployment in place (the program is not restarted).
resource "measurelab_deployment" "count" {
  program  = measurelab_program.count.name
  vms      = [measurelab_vm.probe.id]
  outputs  = ["/tmp/measurelab-outputs-demo/capture.bin", "/tmp/measurelab-outputs-demo/summary.txt"]
  wait_for = "exited"
}

# Small text outputs as strings (the capture is for `deployment fetch`; a
# file over max_bytes, 64 KiB by default, is an error naming its size).
data "measurelab_deployment_outputs" "count" {
  deployment = measurelab_deployment.count.id
  outputs    = ["/tmp/measurelab-outputs-demo/summary.txt"]
}

output "summary" {
  value = {
    for vm in data.measurelab_deployment_outputs.count.vms :
    vm.vm => vm.contents["/tmp/measurelab-outputs-demo/summary.txt"]
  }
}
