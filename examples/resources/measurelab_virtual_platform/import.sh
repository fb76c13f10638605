# A virtual platform is imported by its name (or id).
terraform import measurelab_virtual_platform.mcast mcast
