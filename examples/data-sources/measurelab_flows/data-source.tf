# The flows of platform "mcast" (its `flow_monitoring` must be on) during one
# measurement window. Leave `until` out for "up to now"; `since` defaults to an
# hour before `until`.
data "measurelab_flows" "mcast" {
  platform = "mcast"
  since    = "2026-12-05T01:00:00Z"
  until    = "2026-12-05T02:00:00Z"
}

output "mcast_bytes" {
  value = data.measurelab_flows.mcast.total_bytes
}

# Bytes per source address.
output "mcast_bytes_by_source" {
  value = {
    for src in distinct([for f in data.measurelab_flows.mcast.flows : f.src_addr]) :
    src => sum([for f in data.measurelab_flows.mcast.flows : f.bytes if f.src_addr == src])
  }
}
