resource "measurelab_virtual_platform" "lab" {
  name  = "points-demo"
  nodes = ["n1", "n2"]
}

# The measurement points of the platform as its MSCS last reported them.
# Empty (and reported_at null) until an MSCS runs on the platform; the
# multicast-measurement module starts one.
data "measurelab_platform_points" "lab" {
  platform = measurelab_virtual_platform.lab.name
}

# Points that missed their heartbeat deadline and are out of the rotation.
output "missing_points" {
  value = [for p in data.measurelab_platform_points.lab.points : p.name if p.state == "missing"]
}

output "points_reported_at" {
  value = data.measurelab_platform_points.lab.reported_at
}
