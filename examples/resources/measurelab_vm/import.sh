# A VM is imported by PLATFORM/NAME (or by its controller id).
terraform import 'measurelab_vm.probe["n1"]' probes/probe-n1
terraform import 'measurelab_vm.probe["n2"]' probes/probe-n2
