//! Managed resources, one file per Terraform type.

mod measurement_node;

pub use measurement_node::MeasurementNodeResource;
