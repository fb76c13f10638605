# A platform with a WireGuard gateway on n1 (whose agent runs with
# --public-address), and two peers: one with a key pair the controller
# generates, one with the researcher's own public key (`wg pubkey`).
resource "measurelab_virtual_platform" "slice" {
  name  = "slice"
  nodes = ["n1", "n2"]

  gateway {
    node        = "n1"
    listen_port = 51820
  }
}

resource "measurelab_platform_peer" "laptop" {
  platform_id = measurelab_virtual_platform.slice.id
  name        = "laptop"
}

resource "measurelab_platform_peer" "desk" {
  platform_id = measurelab_virtual_platform.slice.id
  name        = "desk"
  public_key  = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
}

# `terraform output -raw laptop_wg_config > laptop.conf && wg-quick up ./laptop.conf`
output "laptop_wg_config" {
  value     = measurelab_platform_peer.laptop.config
  sensitive = true
}

output "desk_tunnel_address" {
  value = measurelab_platform_peer.desk.tunnel_address
}
