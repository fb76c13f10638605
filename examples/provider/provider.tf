terraform {
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}

# With no arguments the provider reads MEASURELAB_ENDPOINT and MEASURELAB_TOKEN
# (for a lab: `export $(measurelab lab env)`). Every argument can also be set
# here, for example:
#
#   endpoint = "https://controller.example:7070"
#   token    = var.measurelab_token
#   ca_cert  = "/etc/measurelab/ca.pem"
provider "measurelab" {}
