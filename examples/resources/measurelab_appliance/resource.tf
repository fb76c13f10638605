# Upload a VM image (operator only). The provider hashes the files at plan
# time; the controller stores them by SHA-256 and every node verifies the
# digest before a VM boots the appliance. A rebuilt kernel or initrd plans a
# replacement. scripts/build-appliance.sh builds these files.
variable "appliance_dir" {
  type    = string
  default = "/var/lib/measurelab/appliances/measurelab-tiny"
}

resource "measurelab_appliance" "tiny" {
  name           = "tiny-stored"
  version        = "1"
  os             = "Debian kernel + busybox"
  kernel         = "${var.appliance_dir}/vmlinuz"
  initrd         = "${var.appliance_dir}/initrd.img"
  disk           = "${var.appliance_dir}/disk.img"
  min_memory_mib = 128
  backends       = ["libvirt", "namespace"]
}

output "tiny_kernel_sha256" {
  value = measurelab_appliance.tiny.kernel_sha256
}
