terraform {
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}

# With no arguments the provider reads MEASURELAB_ENDPOINT, MEASURELAB_TOKEN
# and MEASURELAB_CA_CERT (for a lab: `export $(measurelab lab env)`). Every
# argument can also be set here, for example:
#
#   endpoint = "https://controller.example:7070"
#   token    = var.measurelab_token
#   ca_cert  = "/etc/measurelab/ca.pem"   # the controller's DATA_DIR/ca.pem
#
# With ca_cert set, that CA is the only one trusted. Plaintext http:// is
# refused for any host but loopback unless you accept it explicitly:
#
#   insecure = true
provider "measurelab" {}
