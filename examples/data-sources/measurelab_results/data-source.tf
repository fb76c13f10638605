resource "measurelab_virtual_platform" "history" {
  name  = "results-demo"
  nodes = ["n1", "n2"]
}

resource "measurelab_measurement_task" "hourly" {
  name             = "hourly"
  platform         = measurelab_virtual_platform.history.name
  schedule         = "periodic"
  interval_seconds = 3600
}

# The stored runs of a task (oldest first), here those since 2026-01-01.
# Each entry has the per-receiver summary and the whole result document.
data "measurelab_results" "hourly" {
  task  = measurelab_measurement_task.hourly.name
  since = "2026-01-01T00:00:00Z"
}

output "runs" {
  value = [for r in data.measurelab_results.hourly.results : {
    started_at = r.started_at
    loss       = { for rx in r.receivers : rx.name => rx.loss_ratio }
  }]
}

# For a task with `compare_with_service_host = true`, each run's `comparison`
# says whether the platform's figures agree with the nodes' service hosts.
output "consistent_with_nodes" {
  value = [for r in data.measurelab_results.hourly.results :
  r.comparison == null ? null : r.comparison.consistent]
}
