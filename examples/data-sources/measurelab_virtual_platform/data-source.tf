resource "measurelab_virtual_platform" "lab" {
  name  = "lookup-demo"
  nodes = ["n1", "n2"]
}

# Read a platform by name, for example one that another configuration owns.
data "measurelab_virtual_platform" "lab" {
  name = measurelab_virtual_platform.lab.name
}

output "lab_network" {
  value = {
    vlan_tag = data.measurelab_virtual_platform.lab.vlan_tag
    subnet   = data.measurelab_virtual_platform.lab.subnet
    nodes    = data.measurelab_virtual_platform.lab.nodes
  }
}
