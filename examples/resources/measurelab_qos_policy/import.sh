# A QoS policy is imported by its name (or id).
terraform import measurelab_qos_policy.probe_20m probe-20m
