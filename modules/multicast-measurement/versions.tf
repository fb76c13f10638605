terraform {
  # 1.7: the module's own tests (tests/*.tftest.hcl) use mock_provider.
  required_version = ">= 1.7"
  required_providers {
    measurelab = {
      source = "measurelab.local/measurelab/measurelab"
    }
  }
}
