# Access into a slice: a platform whose gateway runs on n1, and one peer for
# a researcher's laptop. The laptop reaches the platform subnet, and nothing
# else, through the tunnel. See README.md for bringing the tunnel up.

resource "measurelab_virtual_platform" "access" {
  name  = "access"
  nodes = ["n1", "n2"]

  # n1's agent runs with --public-address: peers connect there.
  gateway {
    node        = "n1"
    listen_port = 51820
  }
}

resource "measurelab_platform_peer" "laptop" {
  platform_id = measurelab_virtual_platform.access.id
  name        = "laptop"
  # No public_key: the controller generates the key pair; the private key is
  # shown once and lives only in this state (keep the state safe).
}

output "gateway_endpoint" {
  value = measurelab_virtual_platform.access.gateway_endpoint
}

output "subnet" {
  value = measurelab_virtual_platform.access.subnet
}

output "tunnel_address" {
  value = measurelab_platform_peer.laptop.tunnel_address
}

# The ready wg-quick configuration (it holds the private key).
output "wg_config" {
  value     = measurelab_platform_peer.laptop.config
  sensitive = true
}
