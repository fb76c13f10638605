# A tenant for one research group, with limits on what it may own. Needs an
# operator token (in a lab: `export $(measurelab lab env --operator)`).
resource "measurelab_tenant" "physics" {
  name        = "physics"
  description = "Physics department: multicast studies"

  quota {
    max_platforms  = 2
    max_vms        = 8
    max_vcpus      = 16
    max_memory_mib = 8192
  }
}
