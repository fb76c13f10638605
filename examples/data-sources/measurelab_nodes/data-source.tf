# Every node that is online right now.
data "measurelab_nodes" "online" {
  status = "online"
}

# Nodes labelled as probes (for example by measurelab_measurement_node).
data "measurelab_nodes" "probes" {
  labels = {
    role = "probe"
  }
}

output "online_node_names" {
  value = data.measurelab_nodes.online.names
}

output "probe_count" {
  value = length(data.measurelab_nodes.probes.nodes)
}
