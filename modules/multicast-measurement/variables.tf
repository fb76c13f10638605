variable "name" {
  description = "Prefix for everything the module creates: the platform, the programs and the tasks (a DNS label, at most 40 characters)."
  type        = string
  default     = "mcast"
  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS label of at most 40 characters: lowercase letters, digits and '-', not starting or ending with '-'."
  }
}

variable "nodes" {
  description = "Measurement nodes the platform spans. The MSCS VM goes on `mscs_node` (default: the first); the points are spread round robin over all nodes."
  type        = list(string)
  validation {
    condition     = length(var.nodes) >= 1 && length(distinct(var.nodes)) == length(var.nodes)
    error_message = "nodes must list at least one node, each once."
  }
}

variable "mscs_node" {
  description = "Node of the MSCS VM; default: the first of `nodes`."
  type        = string
  default     = null
  validation {
    condition     = var.mscs_node == null || can(regex("^[A-Za-z0-9._-]+$", var.mscs_node))
    error_message = "mscs_node must be a node name."
  }
}

variable "point_count" {
  description = "Number of measurement-point VMs (one sends, the others receive), at least 2."
  type        = number
  default     = 4
  validation {
    condition     = var.point_count >= 2 && var.point_count <= 64 && floor(var.point_count) == var.point_count
    error_message = "point_count must be a whole number from 2 to 64: a run needs one source and at least one receiver."
  }
}

variable "appliance" {
  description = "Appliance (VM image) of every VM; `namespace` runs the VMs as network-namespace slivers."
  type        = string
  default     = "namespace"
}

variable "backend" {
  description = "VM backend: `namespace` or `libvirt`."
  type        = string
  default     = "namespace"
  validation {
    condition     = contains(["namespace", "libvirt"], var.backend)
    error_message = "backend must be \"namespace\" or \"libvirt\"."
  }
}

variable "vm_memory_mib" {
  description = "Memory of each VM in MiB. The guest agent holds a delivered program (and its base64 text) in memory while writing it, so a VM needs room for about twice the largest binary (mcast-mscs: ~18 MiB stripped)."
  type        = number
  default     = 128
  validation {
    condition     = var.vm_memory_mib >= 64
    error_message = "vm_memory_mib must be at least 64: program delivery of the mcast binaries needs it."
  }
}

variable "vm_vcpus" {
  description = "Virtual CPUs of each VM."
  type        = number
  default     = 1
  validation {
    condition     = var.vm_vcpus >= 1 && var.vm_vcpus <= 64
    error_message = "vm_vcpus must be from 1 to 64."
  }
}

variable "qos" {
  description = "Optional bandwidth limit applied to every point VM: `ingress_max_kbps` (traffic into the VM) and optional `egress_max_kbps` (out of it). null: no limit."
  type = object({
    ingress_max_kbps = number
    egress_max_kbps  = optional(number)
  })
  default = null
  validation {
    condition     = var.qos == null || try(var.qos.ingress_max_kbps > 0 && coalesce(var.qos.egress_max_kbps, 1) > 0, false)
    error_message = "qos rates must be positive (kbit/s)."
  }
}

variable "mcast_point_path" {
  description = "Local path of the `mcast-point` binary to upload (for example target/release/mcast-point)."
  type        = string
  validation {
    condition     = fileexists(var.mcast_point_path)
    error_message = "mcast_point_path must name an existing file (build it with `cargo build --release -p measurelab-mcast`)."
  }
}

variable "mcast_mscs_path" {
  description = "Local path of the `mcast-mscs` binary to upload."
  type        = string
  validation {
    condition     = fileexists(var.mcast_mscs_path)
    error_message = "mcast_mscs_path must name an existing file (build it with `cargo build --release -p measurelab-mcast`)."
  }
}

variable "point_control_port" {
  description = "TCP port each point listens on for the MSCS's control connection."
  type        = number
  default     = 7400
  validation {
    condition     = var.point_control_port >= 1024 && var.point_control_port <= 65535
    error_message = "point_control_port must be from 1024 to 65535."
  }
}

variable "mscs_port" {
  description = "TCP port of the MSCS's HTTP API on its VM address; the points register there."
  type        = number
  default     = 7300
  validation {
    condition     = var.mscs_port >= 1024 && var.mscs_port <= 65535 && var.mscs_port != var.point_control_port
    error_message = "mscs_port must be from 1024 to 65535 and differ from point_control_port."
  }
}

variable "point_deadline_seconds" {
  description = "A point not heard from for this many seconds leaves the MSCS's rotation (and shows as missing in results) until it is heard again. Points heartbeat three times per deadline."
  type        = number
  default     = 15
  validation {
    condition     = var.point_deadline_seconds >= 1 && var.point_deadline_seconds <= 3600
    error_message = "point_deadline_seconds must be from 1 to 3600."
  }
}

variable "group" {
  description = "IPv4 multicast group of the probes (224.0.0.0/4)."
  type        = string
  default     = "239.192.0.1"
  validation {
    condition = can(regex("^(\\d{1,3})\\.(\\d{1,3})\\.(\\d{1,3})\\.(\\d{1,3})$", var.group)) && alltrue([
      for octet in split(".", var.group) : tonumber(octet) <= 255
    ]) && tonumber(split(".", var.group)[0]) >= 224 && tonumber(split(".", var.group)[0]) <= 239
    error_message = "group must be an IPv4 multicast address in 224.0.0.0/4, for example 239.192.0.1."
  }
}

variable "port" {
  description = "UDP port of the probes."
  type        = number
  default     = 50001
  validation {
    condition     = var.port >= 1024 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number from 1024 to 65535."
  }
}

variable "rate_pps" {
  description = "Probe rate in packets per second."
  type        = number
  default     = 100
  validation {
    condition     = var.rate_pps >= 1 && var.rate_pps <= 100000 && floor(var.rate_pps) == var.rate_pps
    error_message = "rate_pps must be a whole number from 1 to 100000."
  }
}

variable "packet_size_bytes" {
  description = "UDP payload size of a probe in bytes."
  type        = number
  default     = 200
  validation {
    condition     = var.packet_size_bytes >= 64 && var.packet_size_bytes <= 8972 && floor(var.packet_size_bytes) == var.packet_size_bytes
    error_message = "packet_size_bytes must be a whole number from 64 (the probe header) to 8972 (a 9000-byte jumbo frame)."
  }
}

variable "ttl" {
  description = "Multicast TTL."
  type        = number
  default     = 8
  validation {
    condition     = var.ttl >= 1 && var.ttl <= 255
    error_message = "ttl must be from 1 to 255."
  }
}

variable "duration_seconds" {
  description = "Length of one run (the paper: 30 s)."
  type        = number
  default     = 30
  validation {
    condition     = var.duration_seconds >= 1 && var.duration_seconds <= 3600
    error_message = "duration_seconds must be from 1 to 3600."
  }
}

variable "source_point" {
  description = "Point that sends in the once task (p1, p2, ...); null: round robin."
  type        = string
  default     = null
}

variable "run_once" {
  description = "Submit a once task whose result the apply waits for and returns in the outputs."
  type        = bool
  default     = true
}

variable "periodic_interval_seconds" {
  description = "When set, also submit a periodic task: a run every this many seconds, the source taking turns over the points (the paper: 300 s)."
  type        = number
  default     = null
  validation {
    condition     = var.periodic_interval_seconds == null || try(var.periodic_interval_seconds >= 10 && var.periodic_interval_seconds <= 604800, false)
    error_message = "periodic_interval_seconds must be from 10 to 604800 (7 days)."
  }
  validation {
    condition     = var.periodic_interval_seconds == null || try(var.periodic_interval_seconds > var.duration_seconds, false)
    error_message = "periodic_interval_seconds must be longer than duration_seconds: runs of a periodic task cannot overlap."
  }
}

variable "result_timeout" {
  description = "How long the apply waits for the once task's result (a duration such as \"5m\")."
  type        = string
  default     = "5m"
  validation {
    condition     = can(regex("^([0-9]+[hms])+$", var.result_timeout))
    error_message = "result_timeout must be a duration such as \"90s\", \"5m\" or \"1h\"."
  }
}
