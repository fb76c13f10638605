//! Managed resources, one file per Terraform type.

mod measurement_node;
mod qos_policy;
mod virtual_platform;
mod vm;

pub use measurement_node::MeasurementNodeResource;
pub use qos_policy::QosPolicyResource;
pub use virtual_platform::VirtualPlatformResource;
pub use vm::VmResource;
