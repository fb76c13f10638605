# Upload a local file for program distribution. The SHA-256 is computed at
# plan time: editing hello.sh plans a replacement (and replaces the
# deployments that use the program's id).
resource "measurelab_program" "hello" {
  name   = "hello"
  source = "${path.module}/hello.sh"
}

output "hello_sha256" {
  value = measurelab_program.hello.sha256
}
