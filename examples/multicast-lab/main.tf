# The paper's experiment (Cao & He 2013, multicast measurement) on a local lab:
# a virtual platform over 4 nodes, 1 MSCS VM + 4 measurement-point VMs (one per
# node), mcast-point/mcast-mscs delivered by program distribution, one task
# submitted (its per-receiver results are the outputs) plus a periodic
# round-robin task (30 s every 5 min, as in the paper).
#
#   measurelab lab up --nodes 4
#   export $(measurelab lab env)      # the lab's demo tenant, as a member
#   export TF_CLI_CONFIG_FILE=$(measurelab lab tfrc)
#   terraform init && terraform apply
#
# scripts/demo.sh does all of this. On QEMU VMs instead of namespaces:
#
#   measurelab lab up --nodes 2 --hypervisor qemu
#   terraform apply -var backend=libvirt -var 'nodes=["n1","n2"]' -var point_count=2

terraform {
  required_version = ">= 1.6"
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}

# Endpoint and token come from MEASURELAB_ENDPOINT / MEASURELAB_TOKEN.
provider "measurelab" {}

variable "nodes" {
  description = "Lab nodes the platform spans (`measurelab lab up --nodes 4` names them n1..n4)."
  type        = list(string)
  default     = ["n1", "n2", "n3", "n4"]
}

variable "bin_dir" {
  description = "Directory holding the built mcast-point and mcast-mscs binaries; default: the workspace's target/release."
  type        = string
  default     = null
}

variable "duration_seconds" {
  description = "Length of one run (the paper: 30 s)."
  type        = number
  default     = 30
}

variable "backend" {
  description = "Where the VMs run: `namespace` (network-namespace slivers) or `libvirt` (QEMU VMs; the lab must be up with `--hypervisor qemu`)."
  type        = string
  default     = "namespace"
  validation {
    condition     = contains(["namespace", "libvirt"], var.backend)
    error_message = "backend must be \"namespace\" or \"libvirt\"."
  }
}

variable "appliance" {
  description = "VM image; default `namespace` for namespace VMs and `measurelab-tiny` for libvirt ones."
  type        = string
  default     = null
}

variable "point_count" {
  description = "Measurement-point VMs, at least 2 (one sends, the others receive). Under QEMU/TCG every VM costs CPU: keep it small."
  type        = number
  default     = 4
}

locals {
  bin_dir   = coalesce(var.bin_dir, abspath("${path.root}/../../target/release"))
  appliance = coalesce(var.appliance, var.backend == "libvirt" ? "measurelab-tiny" : "namespace")
  # A QEMU guest's root filesystem and the delivered programs share its RAM.
  vm_memory_mib = var.backend == "libvirt" ? 256 : 128
}

module "multicast" {
  source = "../../modules/multicast-measurement"

  name             = "mcast-lab"
  nodes            = var.nodes
  point_count      = var.point_count
  backend          = var.backend
  appliance        = local.appliance
  vm_memory_mib    = local.vm_memory_mib
  mcast_point_path = "${local.bin_dir}/mcast-point"
  mcast_mscs_path  = "${local.bin_dir}/mcast-mscs"

  group             = "239.192.0.1"
  rate_pps          = 100
  packet_size_bytes = 200
  duration_seconds  = var.duration_seconds

  run_once                  = true
  periodic_interval_seconds = 300
}

output "platform" {
  description = "The virtual platform (name, VLAN tag, subnet)."
  value       = module.multicast.platform
}

output "point_vms" {
  description = "Point VMs: id, node, address."
  value       = module.multicast.point_vms
}

output "source_point" {
  description = "The point that sent in the submitted task's run."
  value       = module.multicast.source_point
}

output "result_status" {
  description = "ok, partial or failed."
  value       = module.multicast.result_status
}

output "receivers" {
  description = "Per-receiver loss, delay and jitter of the submitted task's run."
  value       = module.multicast.receivers
}

output "loss_delay_jitter" {
  description = "One line per receiver: loss ratio, median one-way delay and RFC 3550 jitter."
  value = {
    for name, r in module.multicast.receivers :
    name => try(
      format("received %d/%d, loss %.4f, delay median %.3f ms (p95 %.3f ms), jitter %.3f ms",
      r.packets_received, r.packets_sent, r.loss_ratio, r.delay_median_ms, r.delay_p95_ms, r.jitter_ms),
      "${r.status}: ${r.error}"
    )
  }
}

output "periodic_task" {
  description = "The periodic round-robin task; its history: data \"measurelab_results\" or GET /v1/results?task=NAME."
  value       = module.multicast.periodic_task_name
}
