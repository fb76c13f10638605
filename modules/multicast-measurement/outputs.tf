output "platform_id" {
  description = "Id of the virtual platform."
  value       = measurelab_virtual_platform.this.id
}

output "platform" {
  description = "The platform's name, VLAN tag and subnet."
  value = {
    name     = measurelab_virtual_platform.this.name
    vlan_tag = measurelab_virtual_platform.this.vlan_tag
    subnet   = measurelab_virtual_platform.this.subnet
  }
}

output "mscs_vm_id" {
  description = "Id of the MSCS VM."
  value       = measurelab_vm.mscs.id
}

output "point_vms" {
  description = "Point VMs by point name: id, node and address."
  value = {
    for name, vm in measurelab_vm.point : name => { id = vm.id, node = vm.node, address = vm.address }
  }
}

output "vm_ids" {
  description = "Ids of every VM of the platform (MSCS first)."
  value       = concat([measurelab_vm.mscs.id], [for vm in measurelab_vm.point : vm.id])
}

output "once_task_id" {
  description = "Id of the once task (null when run_once is false)."
  value       = one(measurelab_measurement_task.once[*].id)
}

output "periodic_task_id" {
  description = "Id of the periodic task (null when periodic_interval_seconds is unset); read its history with the measurelab_results data source."
  value       = one(measurelab_measurement_task.periodic[*].id)
}

output "periodic_task_name" {
  description = "Name of the periodic task (null when none)."
  value       = one(measurelab_measurement_task.periodic[*].name)
}

output "source_point" {
  description = "The point that sent in the once task's run."
  value       = one(measurelab_measurement_task.once[*].result_source_point)
}

output "result_status" {
  description = "Status of the once task's run: ok, partial or failed."
  value       = one(measurelab_measurement_task.once[*].result_status)
}

output "receivers" {
  description = "Per-receiver results of the once task's run, by point name: packets sent/received/lost/duplicated/reordered, loss_ratio, one-way delay (min/median/mean/p95/max, ms), IPDV, PDV and RFC 3550 jitter (ms)."
  value = {
    for r in flatten(measurelab_measurement_task.once[*].receivers) : r.name => r
  }
}

output "result_json" {
  description = "The once task's whole result document (measurelab.mcast.result/v1) as JSON text."
  value       = one(measurelab_measurement_task.once[*].result_json)
}
