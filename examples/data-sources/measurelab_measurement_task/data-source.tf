resource "measurelab_virtual_platform" "lab" {
  name  = "task-lookup"
  nodes = ["n1", "n2"]
}

resource "measurelab_measurement_task" "hourly" {
  name             = "hourly-lookup"
  platform         = measurelab_virtual_platform.lab.name
  schedule         = "periodic"
  interval_seconds = 3600
}

# Read a task by name, for example to find the newest result id of a task
# that another configuration owns.
data "measurelab_measurement_task" "hourly" {
  name = measurelab_measurement_task.hourly.name
}

output "hourly_probe" {
  value = {
    group    = data.measurelab_measurement_task.hourly.group
    rate_pps = data.measurelab_measurement_task.hourly.rate_pps
    every    = data.measurelab_measurement_task.hourly.interval_seconds
  }
}
