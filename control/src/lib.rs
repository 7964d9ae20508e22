//! The host end of the appliance's control socket, shared by every host program that
//! talks to an appliance (the `weft` tool, the agent, the CNI plugin, the tests): one
//! client, config documents kept as their author wrote them, and the real appliance
//! logic behind a unix socket for tests without a VM. Host `std` code only.

pub mod capture;
pub mod client;
pub mod document;
pub mod sim;
