# A slice across two nodes. The controller allocates its VLAN tag and subnet.
resource "measurelab_virtual_platform" "mcast" {
  name        = "mcast"
  nodes       = ["n1", "n2"]
  admins      = ["alice"]
  description = "multicast measurement slice"

  # Keep the slice's flows (see the measurelab_flows data source).
  flow_monitoring = true
}

output "mcast_vlan_tag" {
  value = measurelab_virtual_platform.mcast.vlan_tag
}

output "mcast_subnet" {
  value = measurelab_virtual_platform.mcast.subnet
}
