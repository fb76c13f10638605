# Where Terraform finds the provider. `measurelab lab tfrc` writes a CLI config
# (TF_CLI_CONFIG_FILE) that serves this source address from a local mirror.
terraform {
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}
