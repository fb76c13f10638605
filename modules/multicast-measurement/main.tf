# The paper's multicast measurement system on a virtual platform: one MSCS VM
# and N measurement-point VMs spread over the nodes, the two programs
# delivered through program distribution, and measurement tasks whose results
# come back as outputs.

locals {
  mscs_node = coalesce(var.mscs_node, var.nodes[0])
  # Round robin: p1 on the first node, p2 on the second, ...
  points = {
    for i in range(var.point_count) : "p${i + 1}" => var.nodes[i % length(var.nodes)]
  }
}

resource "measurelab_virtual_platform" "this" {
  name        = var.name
  nodes       = var.nodes
  description = "multicast measurement: 1 MSCS + ${var.point_count} points (modules/multicast-measurement)"
}

resource "measurelab_qos_policy" "points" {
  count            = var.qos == null ? 0 : 1
  name             = "${var.name}-points"
  ingress_max_kbps = var.qos.ingress_max_kbps
  egress_max_kbps  = var.qos.egress_max_kbps
}

resource "measurelab_vm" "mscs" {
  name        = "mscs"
  platform    = measurelab_virtual_platform.this.name
  node        = local.mscs_node
  appliance   = var.appliance
  backend     = var.backend
  vcpus       = var.vm_vcpus
  memory_mib  = var.vm_memory_mib
  power_state = "running"
}

resource "measurelab_vm" "point" {
  for_each    = local.points
  name        = each.key
  platform    = measurelab_virtual_platform.this.name
  node        = each.value
  appliance   = var.appliance
  backend     = var.backend
  vcpus       = var.vm_vcpus
  memory_mib  = var.vm_memory_mib
  qos_policy  = var.qos == null ? null : measurelab_qos_policy.points[0].name
  power_state = "running"
}

resource "measurelab_program" "point" {
  name   = "${var.name}-mcast-point"
  source = var.mcast_point_path
}

resource "measurelab_program" "mscs" {
  name   = "${var.name}-mcast-mscs"
  source = var.mcast_mscs_path
}

# The MSCS takes its tasks from the platform (the guest agent's local API) and
# posts results back through it. Its point list is whoever registers: a point
# that stops heartbeating leaves the rotation, one added later joins it, and
# neither needs the MSCS redeployed.
resource "measurelab_deployment" "mscs" {
  program = measurelab_program.mscs.id
  vms     = [measurelab_vm.mscs.id]
  args = [
    "--listen", "${measurelab_vm.mscs.address}:${var.mscs_port}",
    "--state-file", "mscs-state.json",
    "--platform-api", "http://127.0.0.1:7079",
    "--platform-poll-seconds", "1",
    "--point-deadline-seconds", tostring(var.point_deadline_seconds),
  ]
  env      = { NO_COLOR = "1" }
  wait_for = "running"
}

# Each point serves the MSCS's control connection on its VM address, sends and
# receives probes from that address, and registers with the MSCS.
resource "measurelab_deployment" "point" {
  for_each = measurelab_vm.point
  program  = measurelab_program.point.id
  vms      = [each.value.id]
  args = [
    "serve",
    "--listen", "${each.value.address}:${var.point_control_port}",
    "--name", each.key,
    "--data-addr", each.value.address,
    "--mscs", "${measurelab_vm.mscs.address}:${var.mscs_port}",
  ]
  env      = { NO_COLOR = "1" }
  wait_for = "running"
  # Registering is the first thing a point does: with the MSCS up first, the
  # points are on its list by the time a task reaches it.
  depends_on = [measurelab_deployment.mscs]
}

resource "measurelab_measurement_task" "once" {
  count             = var.run_once ? 1 : 0
  name              = "${var.name}-once"
  mode              = "platform"
  platform          = measurelab_virtual_platform.this.name
  schedule          = "once"
  duration_seconds  = var.duration_seconds
  rate_pps          = var.rate_pps
  packet_size_bytes = var.packet_size_bytes
  group             = var.group
  port              = var.port
  ttl               = var.ttl
  source            = var.source_point
  timeouts {
    create = var.result_timeout
  }
  depends_on = [measurelab_deployment.point]
}

resource "measurelab_measurement_task" "periodic" {
  count             = var.periodic_interval_seconds == null ? 0 : 1
  name              = "${var.name}-periodic"
  mode              = "platform"
  platform          = measurelab_virtual_platform.this.name
  schedule          = "periodic"
  interval_seconds  = var.periodic_interval_seconds
  duration_seconds  = var.duration_seconds
  rate_pps          = var.rate_pps
  packet_size_bytes = var.packet_size_bytes
  group             = var.group
  port              = var.port
  ttl               = var.ttl
  # Submitted after the once task, so its first run does not delay that result.
  depends_on = [measurelab_deployment.point, measurelab_measurement_task.once]
}
