# Apply-level tests with a mocked provider (no lab): the outputs are wired to
# the right resources and the deployments get the arguments the programs
# expect. Run: terraform init && terraform test

mock_provider "measurelab" {
  mock_resource "measurelab_vm" {
    defaults = {
      address = "10.9.0.7"
    }
  }
  mock_resource "measurelab_virtual_platform" {
    defaults = {
      vlan_tag = 101
      subnet   = "10.9.0.0/24"
    }
  }
}

variables {
  name             = "lab"
  nodes            = ["n1", "n2"]
  point_count      = 3
  mcast_point_path = "tests/fixtures/fake-program"
  mcast_mscs_path  = "tests/fixtures/fake-program"
}

run "outputs_follow_the_resources" {
  override_resource {
    target = measurelab_measurement_task.once[0]
    values = {
      result_status       = "partial"
      result_source_point = "p1"
      result_json         = "{\"schema\":\"measurelab.mcast.result/v1\"}"
      receivers = [
        {
          name                 = "p2"
          status               = "ok"
          error                = ""
          packets_sent         = 3000
          packets_received     = 2970
          lost                 = 30
          duplicated           = 0
          reordered            = 1
          loss_ratio           = 0.01
          delay_min_ms         = 0.1
          delay_median_ms      = 0.2
          delay_mean_ms        = 0.25
          delay_p95_ms         = 0.4
          delay_max_ms         = 0.9
          ipdv_mean_ms         = 0.05
          pdv_ms               = 0.3
          jitter_ms            = 0.02
          clock_error_bound_ms = 0.5
        },
        {
          name                 = "p3"
          status               = "failed"
          error                = "no probes"
          packets_sent         = 3000
          packets_received     = 0
          lost                 = 3000
          duplicated           = 0
          reordered            = 0
          loss_ratio           = 1
          delay_min_ms         = 0
          delay_median_ms      = 0
          delay_mean_ms        = 0
          delay_p95_ms         = 0
          delay_max_ms         = 0
          ipdv_mean_ms         = 0
          pdv_ms               = 0
          jitter_ms            = 0
          clock_error_bound_ms = 0
        },
      ]
    }
  }

  assert {
    condition     = keys(output.receivers) == ["p2", "p3"]
    error_message = "receivers must be keyed by point name"
  }
  assert {
    condition     = output.receivers["p2"].loss_ratio == 0.01 && output.receivers["p3"].error == "no probes"
    error_message = "each receiver keeps its own row"
  }
  assert {
    condition     = output.result_status == "partial" && output.source_point == "p1"
    error_message = "result_status and source_point come from the once task"
  }
  assert {
    condition     = output.once_task_id == measurelab_measurement_task.once[0].id && output.periodic_task_id == null && output.periodic_task_name == null
    error_message = "once_task_id is the once task; no periodic task unless asked"
  }
  assert {
    condition     = output.platform == { name = "lab", vlan_tag = 101, subnet = "10.9.0.0/24" }
    error_message = "platform output must carry the platform's name, VLAN tag and subnet"
  }
  assert {
    condition     = length(output.vm_ids) == 4 && output.vm_ids[0] == output.mscs_vm_id
    error_message = "vm_ids lists the MSCS first, then every point"
  }
  assert {
    condition     = { for k, v in output.point_vms : k => v.node } == { p1 = "n1", p2 = "n2", p3 = "n1" }
    error_message = "point_vms maps each point to its node"
  }
}

run "deployments_get_the_program_arguments" {
  variables {
    point_control_port = 7500
  }

  assert {
    condition     = measurelab_program.point.name == "lab-mcast-point" && measurelab_program.mscs.name == "lab-mcast-mscs"
    error_message = "programs are named after the module's name"
  }
  assert {
    condition     = measurelab_deployment.point["p2"].args == tolist(["serve", "--listen", "10.9.0.7:7500", "--name", "p2", "--data-addr", "10.9.0.7", "--mscs", "10.9.0.7:7300"])
    error_message = "a point serves on its VM address and the control port, and registers with the MSCS's API"
  }
  assert {
    condition     = measurelab_deployment.point["p2"].vms == tolist([measurelab_vm.point["p2"].id]) && measurelab_deployment.point["p2"].program == measurelab_program.point.id
    error_message = "a point's deployment runs the point program on that point's VM"
  }
  assert {
    condition     = measurelab_deployment.mscs.vms == tolist([measurelab_vm.mscs.id]) && measurelab_deployment.mscs.program == measurelab_program.mscs.id
    error_message = "the MSCS deployment runs the MSCS program on the MSCS VM"
  }
  assert {
    condition     = measurelab_deployment.mscs.args == tolist(["--listen", "10.9.0.7:7300", "--state-file", "mscs-state.json", "--platform-api", "http://127.0.0.1:7079", "--platform-poll-seconds", "1", "--point-deadline-seconds", "15"])
    error_message = "the MSCS listens on its VM address for registrations and lists no point itself"
  }
}

run "periodic_only" {
  variables {
    run_once                  = false
    periodic_interval_seconds = 600
  }

  assert {
    condition     = output.once_task_id == null && output.receivers == {} && output.periodic_task_name == "lab-periodic"
    error_message = "without run_once there is no once task and no receivers; the periodic task is named after the module"
  }
}
