# 20 Mbit/s into each VM that uses the policy, 10 Mbit/s out of it.
resource "measurelab_qos_policy" "probe_20m" {
  name             = "probe-20m"
  ingress_max_kbps = 20000
  egress_max_kbps  = 10000
}
