# A tenant is imported by its name (or id).
terraform import measurelab_tenant.physics physics
