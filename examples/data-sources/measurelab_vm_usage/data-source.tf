resource "measurelab_virtual_platform" "lab" {
  name  = "usage-demo"
  nodes = ["n1"]
}

resource "measurelab_vm" "sender" {
  name       = "sender"
  platform   = measurelab_virtual_platform.lab.name
  node       = "n1"
  vcpus      = 1
  memory_mib = 128
  appliance  = "namespace"
}

# The guest's usage during one measurement window, one sample per minute.
# Leave `until` out for "up to now" (the samples then change from one plan to
# the next); `since` defaults to an hour before `until`.
data "measurelab_vm_usage" "sender" {
  vm           = measurelab_vm.sender.name
  since        = "2026-12-05T01:00:00Z"
  until        = "2026-12-05T02:00:00Z"
  step_seconds = 60
}

# Did the sender saturate its CPU (and so perhaps its own measurements)?
output "sender_peak_cpu_percent" {
  value = data.measurelab_vm_usage.sender.max_cpu_used_percent
}

# Mean send rate over the window, bytes per second.
locals {
  sender_tx_rates = [
    for s in data.measurelab_vm_usage.sender.samples :
    s.network_tx_bytes_per_second if s.network_tx_bytes_per_second != null
  ]
}

output "sender_mean_tx_bytes_per_second" {
  value = length(local.sender_tx_rates) > 0 ? sum(local.sender_tx_rates) / length(local.sender_tx_rates) : null
}
