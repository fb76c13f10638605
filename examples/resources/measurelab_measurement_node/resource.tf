# Adopt the node that registered itself as "n1" and label it as the
# measurement statistics control server (MSCS) host. Create waits up to
# two minutes for the node to be online.
resource "measurelab_measurement_node" "mscs" {
  name = "n1"

  labels = {
    role = "mscs"
    site = "lab"
  }

  # The MSCS host times packets: promise no more vCPUs than it has cores.
  cpu_overcommit    = 1.0
  memory_overcommit = 1.0

  # Export the node's traffic as IPFIX, one packet in 64, to the
  # controller's collector (no `collector`); only platforms with
  # `flow_monitoring = true` are exported.
  flow_export {
    protocol       = "ipfix"
    sampling       = 64
    active_timeout = 30
  }

  timeouts {
    create = "2m"
  }
}

output "mscs_node_id" {
  value = measurelab_measurement_node.mscs.id
}

output "mscs_node_backends" {
  value = measurelab_measurement_node.mscs.capabilities.libvirt_uris
}
