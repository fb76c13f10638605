# Look up one node by the name its agent registered with.
data "measurelab_node" "n1" {
  name = "n1"
}

output "n1_status" {
  value = data.measurelab_node.n1.status
}

output "n1_hypervisors" {
  value = data.measurelab_node.n1.capabilities.libvirt_uris
}
