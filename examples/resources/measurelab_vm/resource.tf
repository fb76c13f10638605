resource "measurelab_virtual_platform" "probes" {
  name  = "probes"
  nodes = ["n1", "n2"]
}

resource "measurelab_qos_policy" "probe_20m" {
  name             = "probe-20m"
  ingress_max_kbps = 20000
}

# One lightweight VM (a namespace sliver) per node, each limited to
# 20 Mbit/s inbound. Create waits until each VM's guest agent has registered.
resource "measurelab_vm" "probe" {
  for_each = toset(measurelab_virtual_platform.probes.nodes)

  name       = "probe-${each.key}"
  platform   = measurelab_virtual_platform.probes.name
  node       = each.key
  appliance  = "namespace"
  backend    = "namespace"
  vcpus      = 1
  memory_mib = 64
  qos_policy = measurelab_qos_policy.probe_20m.name

  timeouts {
    create = "3m"
  }
}

output "probe_addresses" {
  value = { for node, vm in measurelab_vm.probe : node => vm.address }
}
