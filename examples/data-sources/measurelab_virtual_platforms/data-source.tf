resource "measurelab_virtual_platform" "a" {
  name  = "slice-a"
  nodes = ["n1", "n2"]
}

resource "measurelab_virtual_platform" "b" {
  name  = "slice-b"
  nodes = ["n2", "n3"]
}

# Every platform that has n1 as a member (here only slice-a).
data "measurelab_virtual_platforms" "on_n1" {
  node       = "n1"
  depends_on = [measurelab_virtual_platform.a, measurelab_virtual_platform.b]
}

output "platforms_on_n1" {
  value = data.measurelab_virtual_platforms.on_n1.names
}

output "vlan_tags" {
  value = { for p in data.measurelab_virtual_platforms.on_n1.platforms : p.name => p.vlan_tag }
}
