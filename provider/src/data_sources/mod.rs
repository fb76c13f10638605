//! Data sources, one file per Terraform type.

mod node;
mod nodes;

pub use node::NodeDataSource;
pub use nodes::NodesDataSource;
