resource "measurelab_virtual_platform" "watched" {
  name            = "flows-demo"
  nodes           = ["n1", "n2"]
  flow_monitoring = true
}

# The platform's flows during one measurement window. Leave `until` out for
# "up to now" (the records then change from one plan to the next); `since`
# defaults to an hour before `until`.
data "measurelab_flows" "watched" {
  platform = measurelab_virtual_platform.watched.name
  since    = "2026-12-05T01:00:00Z"
  until    = "2026-12-05T02:00:00Z"
}

output "watched_bytes" {
  value = data.measurelab_flows.watched.total_bytes
}

# Bytes per source address.
output "watched_bytes_by_source" {
  value = {
    for src in distinct([for f in data.measurelab_flows.watched.flows : f.src_addr]) :
    src => sum([for f in data.measurelab_flows.watched.flows : f.bytes if f.src_addr == src])
  }
}
