resource "measurelab_virtual_platform" "lab" {
  name  = "vms-lookup"
  nodes = ["n1", "n2"]
}

resource "measurelab_vm" "worker" {
  for_each   = toset(measurelab_virtual_platform.lab.nodes)
  name       = "worker-${each.key}"
  platform   = measurelab_virtual_platform.lab.name
  node       = each.key
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
}

# The VMs of one platform on one node (both filters are optional).
data "measurelab_vms" "on_n2" {
  platform   = measurelab_virtual_platform.lab.name
  node       = "n2"
  depends_on = [measurelab_vm.worker]
}

output "addresses_on_n2" {
  value = { for vm in data.measurelab_vms.on_n2.vms : vm.name => vm.address }
}
