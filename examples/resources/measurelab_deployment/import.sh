# A deployment is imported by its controller id (`GET /v1/deployments` lists
# them; here the example's output). The controller reports the program by
# name, so configure `program = measurelab_program.NAME.name` for an import
# without a replacement. `wait_for` and `timeouts` only steer create: the
# first plan after an import takes them from the configuration, in place.
terraform import measurelab_deployment.hello "$(terraform output -raw hello_deployment_id)"
