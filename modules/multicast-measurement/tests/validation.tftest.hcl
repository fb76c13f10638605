# Plan-level tests: no lab needed (the provider is mocked, so nothing talks to
# a controller). Run: terraform init && terraform test

mock_provider "measurelab" {}

variables {
  nodes            = ["n1", "n2", "n3"]
  mcast_point_path = "tests/fixtures/fake-program"
  mcast_mscs_path  = "tests/fixtures/fake-program"
}

run "points_round_robin_over_nodes" {
  command = plan

  variables {
    point_count = 4
  }

  assert {
    condition     = [for k in ["p1", "p2", "p3", "p4"] : measurelab_vm.point[k].node] == ["n1", "n2", "n3", "n1"]
    error_message = "points must be placed round robin over the nodes"
  }
  assert {
    condition     = measurelab_vm.mscs.node == "n1"
    error_message = "the MSCS goes on the first node by default"
  }
  assert {
    condition     = length(measurelab_measurement_task.once) == 1 && length(measurelab_measurement_task.periodic) == 0
    error_message = "by default one once task and no periodic task"
  }
  assert {
    condition     = length(measurelab_qos_policy.points) == 0
    error_message = "no QoS policy unless qos is set"
  }
}

run "periodic_and_qos_are_optional" {
  command = plan

  variables {
    periodic_interval_seconds = 300
    qos                       = { ingress_max_kbps = 20000 }
    mscs_node                 = "n3"
  }

  assert {
    condition     = measurelab_measurement_task.periodic[0].schedule == "periodic" && measurelab_measurement_task.periodic[0].interval_seconds == 300
    error_message = "the periodic task runs every periodic_interval_seconds"
  }
  assert {
    condition     = measurelab_qos_policy.points[0].ingress_max_kbps == 20000
    error_message = "qos becomes the points' policy"
  }
  assert {
    condition     = measurelab_vm.mscs.node == "n3"
    error_message = "mscs_node places the MSCS"
  }
}

run "group_must_be_multicast" {
  command = plan
  variables {
    group = "10.1.2.3"
  }
  expect_failures = [var.group]
}

run "group_octets_must_be_bytes" {
  command = plan
  variables {
    group = "239.300.0.1"
  }
  expect_failures = [var.group]
}

run "one_point_is_not_enough" {
  command = plan
  variables {
    point_count = 1
  }
  expect_failures = [var.point_count]
}

run "rate_must_be_positive" {
  command = plan
  variables {
    rate_pps = 0
  }
  expect_failures = [var.rate_pps]
}

run "packet_must_hold_the_probe_header" {
  command = plan
  variables {
    packet_size_bytes = 20
  }
  expect_failures = [var.packet_size_bytes]
}

run "nodes_must_be_distinct" {
  command = plan
  variables {
    nodes = ["n1", "n1"]
  }
  expect_failures = [var.nodes]
}

run "binaries_must_exist" {
  command = plan
  variables {
    mcast_point_path = "tests/fixtures/no-such-binary"
  }
  expect_failures = [var.mcast_point_path]
}

run "periodic_runs_cannot_overlap" {
  command = plan
  variables {
    duration_seconds          = 60
    periodic_interval_seconds = 30
  }
  expect_failures = [var.periodic_interval_seconds]
}

run "qos_rates_are_positive" {
  command = plan
  variables {
    qos = { ingress_max_kbps = 0 }
  }
  expect_failures = [var.qos]
}

run "backend_is_known" {
  command = plan
  variables {
    backend = "xen"
  }
  expect_failures = [var.backend]
}

run "vm_memory_fits_program_delivery" {
  command = plan
  variables {
    vm_memory_mib = 63
  }
  expect_failures = [var.vm_memory_mib]
}

run "vm_memory_lower_limit_is_allowed" {
  command = plan
  variables {
    vm_memory_mib = 64
  }
  assert {
    condition     = measurelab_vm.mscs.memory_mib == 64 && measurelab_vm.point["p1"].memory_mib == 64
    error_message = "vm_memory_mib sizes every VM"
  }
}

run "vcpus_are_bounded" {
  command = plan
  variables {
    vm_vcpus = 65
  }
  expect_failures = [var.vm_vcpus]
}

run "name_is_a_dns_label" {
  command = plan
  variables {
    name = "Mcast_Lab"
  }
  expect_failures = [var.name]
}

run "control_port_is_unprivileged" {
  command = plan
  variables {
    point_control_port = 80
  }
  expect_failures = [var.point_control_port]
}

run "mscs_port_differs_from_the_control_port" {
  command = plan
  variables {
    mscs_port = 7400
  }
  expect_failures = [var.mscs_port]
}

run "point_deadline_is_bounded" {
  command = plan
  variables {
    point_deadline_seconds = 0
  }
  expect_failures = [var.point_deadline_seconds]
}

run "ttl_fits_a_byte" {
  command = plan
  variables {
    ttl = 256
  }
  expect_failures = [var.ttl]
}

run "duration_is_bounded" {
  command = plan
  variables {
    duration_seconds = 3601
  }
  expect_failures = [var.duration_seconds]
}

run "result_timeout_is_a_duration" {
  command = plan
  variables {
    result_timeout = "5 minutes"
  }
  expect_failures = [var.result_timeout]
}
