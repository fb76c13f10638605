//! Managed resources, one file per Terraform type. Each file says what is
//! particular to its type; `adapter` does the rest, once.

mod adapter;
mod api_token;
mod appliance;
mod deployment;
mod flow_export;
mod measurement_node;
mod measurement_task;
mod platform_peer;
mod program;
mod qos_policy;
mod tenant;
mod virtual_platform;
mod vm;

use adapter::Adapter;

/// `measurelab_api_token`.
pub type ApiTokenResource = Adapter<api_token::ApiTokens>;
/// `measurelab_appliance`.
pub type ApplianceResource = Adapter<appliance::Appliances>;
/// `measurelab_deployment`.
pub type DeploymentResource = Adapter<deployment::Deployments>;
/// `measurelab_measurement_node`.
pub type MeasurementNodeResource = Adapter<measurement_node::Nodes>;
/// `measurelab_measurement_task`.
pub type MeasurementTaskResource = Adapter<measurement_task::Tasks>;
/// `measurelab_platform_peer`.
pub type PlatformPeerResource = Adapter<platform_peer::Peers>;
/// `measurelab_program`.
pub type ProgramResource = Adapter<program::Programs>;
/// `measurelab_qos_policy`.
pub type QosPolicyResource = Adapter<qos_policy::QosPolicies>;
/// `measurelab_tenant`.
pub type TenantResource = Adapter<tenant::Tenants>;
/// `measurelab_virtual_platform`.
pub type VirtualPlatformResource = Adapter<virtual_platform::Platforms>;
/// `measurelab_vm`.
pub type VmResource = Adapter<vm::Vms>;
