//! Store of the wave-2 resources. See [`resources`] for the transaction model.

pub(crate) mod appliances;
pub(crate) mod desired;
pub(crate) mod platforms;
pub(crate) mod programs;
pub(crate) mod qos_policies;
pub(crate) mod resources;
pub(crate) mod tasks;
pub(crate) mod vms;

pub(crate) use resources::{Pools, ResourceError, ResourceStore};
