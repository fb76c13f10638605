//! Platform WireGuard gateways on this node (issue 11): what the
//! controller's [`DesiredGateway`] asks for, checked ([`spec`]), its
//! forwarding policy ([`rules`]) and the host pieces that run it ([`host`]).
//!
//! One gateway is:
//! - a network namespace `gw-<h>` (`h`: 8 hex digits of a hash of the node
//!   and the platform id, so agents sharing a host never collide) holding
//!   `eth0`, a veth whose host end `gwp<h>` the reconcile loop plugs into
//!   the integration bridge as an access port of the platform's VLAN (owned
//!   and marked like a VM port), with the gateway's `inside_address`;
//! - a `measurelab-wg` process (boringtun) started in the NODE's namespace,
//!   so its UDP socket listens on the node's public address, whose TUN
//!   `wg<h>` is then moved into the gateway namespace and gets the
//!   `tunnel_address`. Moving the TUN rather than a veth plus DNAT in the
//!   node namespace: the node's own namespace gets no forwarding, no NAT
//!   rule and no route towards a platform, so nothing there can leak
//!   between a peer and the node; the encrypted side is the only thing the
//!   node sees (the `ip link set ... netns` move is covered by the tests).
//! - `ip_forward` on in the gateway namespace only, and an nftables table
//!   there that forwards only tunnel network -> platform subnet (and the
//!   replies), and masquerades that traffic to `inside_address`: namespace
//!   VMs get no route via the platform gateway (`DesiredVm.gateway` is not
//!   applied), so they answer an on-link address.
//!
//! Ownership: a gateway is ours iff `<state_dir>/gateways/<platform>.json`
//! exists; it records the device process (pid and start time, the guard
//! against pid reuse), so a restarted agent adopts the running gateway
//! instead of restarting it.
//!
//! [`DesiredGateway`]: measurelab_api::node_v1::DesiredGateway

mod error;
pub mod host;
pub mod rules;
pub mod spec;

pub use error::GatewayError;

pub use host::{GatewayHost, GatewayRecord};
pub use spec::{GatewayNames, GatewaySpec};
