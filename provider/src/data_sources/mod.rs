//! Data sources, one file per Terraform type.

mod appliances;
mod node;
mod nodes;
pub(crate) mod results;

pub use appliances::AppliancesDataSource;
pub use node::NodeDataSource;
pub use nodes::NodesDataSource;
pub use results::ResultsDataSource;
