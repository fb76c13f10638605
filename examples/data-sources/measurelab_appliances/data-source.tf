# Appliances (VM images) that run as namespace slivers.
data "measurelab_appliances" "namespace" {
  backend = "namespace"
}

output "namespace_appliances" {
  value = data.measurelab_appliances.namespace.names
}
