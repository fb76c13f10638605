resource "measurelab_virtual_platform" "lab" {
  name  = "tasks-lookup"
  nodes = ["n1", "n2"]
}

resource "measurelab_measurement_task" "periodic" {
  for_each         = { hourly = 3600, daily = 86400 }
  name             = "${each.key}-tasks-lookup"
  platform         = measurelab_virtual_platform.lab.name
  schedule         = "periodic"
  interval_seconds = each.value
}

# The periodic tasks of one platform (platform, mode, schedule and status
# are all optional filters).
data "measurelab_measurement_tasks" "periodic" {
  platform   = measurelab_virtual_platform.lab.name
  schedule   = "periodic"
  depends_on = [measurelab_measurement_task.periodic]
}

output "periodic_tasks" {
  value = { for t in data.measurelab_measurement_tasks.periodic.tasks : t.name => t.interval_seconds }
}
