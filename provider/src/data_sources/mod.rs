//! Data sources, one file per Terraform type.

mod appliances;
mod deployment_outputs;
mod flows;
mod listing;
mod lookup;
mod measurement_task;
mod measurement_tasks;
mod node;
mod nodes;
mod platform_points;
pub(crate) mod results;
mod tenant_usage;
mod views;
mod virtual_platform;
mod virtual_platforms;
mod vm;
mod vm_usage;
pub(crate) mod vms;

pub use appliances::AppliancesDataSource;
pub use deployment_outputs::DeploymentOutputsDataSource;
pub use flows::FlowsDataSource;
pub use measurement_task::MeasurementTaskDataSource;
pub use measurement_tasks::MeasurementTasksDataSource;
pub use node::NodeDataSource;
pub use nodes::NodesDataSource;
pub use platform_points::PlatformPointsDataSource;
pub use results::ResultsDataSource;
pub use tenant_usage::TenantUsageDataSource;
pub use virtual_platform::VirtualPlatformDataSource;
pub use virtual_platforms::VirtualPlatformsDataSource;
pub use vm::VmDataSource;
pub use vm_usage::VmUsageDataSource;
pub use vms::VmsDataSource;
