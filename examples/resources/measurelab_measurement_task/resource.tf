resource "measurelab_virtual_platform" "mcast" {
  name  = "task-demo"
  nodes = ["n1", "n2"]
}

# A periodic multicast task for the platform's MSCS: a 30 s run every 5
# minutes, the source taking turns over the measurement points. The MSCS and
# the points are programs deployed on the platform's VMs; the
# modules/multicast-measurement module (examples/multicast-lab) sets them all
# up, and a `once` task there returns per-receiver loss/delay/jitter in
# `receivers` at apply time.
resource "measurelab_measurement_task" "every_5_min" {
  name              = "every-5-min"
  mode              = "platform"
  platform          = measurelab_virtual_platform.mcast.name
  schedule          = "periodic"
  interval_seconds  = 300
  duration_seconds  = 30
  rate_pps          = 100
  packet_size_bytes = 200
  group             = "239.192.0.1"
  port              = 50001
  ttl               = 8
}

output "task_status" {
  value = measurelab_measurement_task.every_5_min.status
}

# A quick task on the nodes' service hosts: no platform, no VMs, no programs.
# Each node's agent serves a built-in measurement point on its service network
# (`measurelab agent --service-address`; every `measurelab lab` node has one).
# The points are named after the nodes; n1 is the first source and drives the
# run. `apply` waits for the result and returns one summary per receiver.
resource "measurelab_measurement_task" "quick" {
  name             = "quick-check"
  mode             = "service_host"
  nodes            = ["n1", "n2", "n3"]
  schedule         = "once"
  duration_seconds = 5
  rate_pps         = 200
  group            = "239.192.0.2"
  port             = 50002
}

output "quick_receivers" {
  value = {
    for r in measurelab_measurement_task.quick.receivers :
    r.name => { received = r.packets_received, loss_ratio = r.loss_ratio }
  }
}

# Platform vs nodes: every run of this task is followed by the same probe
# pattern between the service hosts of the nodes that host its source and
# receivers. Each result's `comparison` (here and in `measurelab_results`)
# sets the two side by side per receiver: loss against a two-proportion bound,
# median delay against 0.2 ms. Every node of the platform needs a service host.
resource "measurelab_measurement_task" "checked" {
  name                      = "checked-against-nodes"
  platform                  = measurelab_virtual_platform.mcast.name
  schedule                  = "periodic"
  interval_seconds          = 600
  duration_seconds          = 10
  rate_pps                  = 200
  group                     = "239.192.0.3"
  port                      = 50003
  compare_with_service_host = true
}
