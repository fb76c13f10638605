terraform {
  required_version = ">= 1.6"
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}
