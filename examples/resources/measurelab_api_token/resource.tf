# A tenant and the member token its CI uses. Needs an operator token, or an
# owner token of the tenant for the token alone.
resource "measurelab_tenant" "chemistry" {
  name = "chemistry"
}

# Rotate the token by changing `keepers` (or `terraform apply -replace=...`):
# the new secret works at once, the old one is revoked.
resource "measurelab_api_token" "ci" {
  name   = "chemistry-ci"
  role   = "member"
  tenant = measurelab_tenant.chemistry.name
  ttl    = "720h"

  keepers = {
    rotation = "2026-12"
  }
}

# The secret is known only to the apply that created the token.
output "ci_token" {
  value     = measurelab_api_token.ci.secret
  sensitive = true
}

output "ci_token_expires_at" {
  value = measurelab_api_token.ci.expires_at
}
