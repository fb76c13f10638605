//! Managed resources, one file per Terraform type.

mod deployment;
mod measurement_node;
mod measurement_task;
mod program;
mod qos_policy;
mod virtual_platform;
mod vm;

pub use deployment::DeploymentResource;
pub use measurement_node::MeasurementNodeResource;
pub use measurement_task::MeasurementTaskResource;
pub use program::ProgramResource;
pub use qos_policy::QosPolicyResource;
pub use virtual_platform::VirtualPlatformResource;
pub use vm::VmResource;
