# The quota and current use of the provider token's own tenant (set `tenant`
# to read another one with an operator token).
data "measurelab_tenant_usage" "mine" {}

output "tenant_usage" {
  value = data.measurelab_tenant_usage.mine.usage
}

# VMs the tenant may still create; null when its VMs are unlimited.
output "vms_left" {
  value = (
    data.measurelab_tenant_usage.mine.quota.max_vms == null ? null :
    data.measurelab_tenant_usage.mine.quota.max_vms - data.measurelab_tenant_usage.mine.usage.vms
  )
}
