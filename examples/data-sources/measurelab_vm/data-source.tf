resource "measurelab_virtual_platform" "lab" {
  name  = "vm-lookup"
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

# Read a VM by its name within a platform (or by id, without `platform`).
data "measurelab_vm" "probe" {
  name     = measurelab_vm.probe.name
  platform = measurelab_virtual_platform.lab.name
}

output "probe_port" {
  value = {
    node    = data.measurelab_vm.probe.node
    address = data.measurelab_vm.probe.address
    mac     = data.measurelab_vm.probe.mac
  }
}
