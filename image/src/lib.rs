//! The weft host tool as a library: one QEMU launcher, one control-socket client and
//! one namespace/link builder, shared by the `weft` binary and by `qemu-tests`.
//! Host `std` code only; it never runs inside the appliance.

pub mod bench;
pub mod build;
pub mod configfile;
pub mod control;
pub mod demo;
pub mod netns;
pub mod paths;
pub mod qemu;
pub mod sim;
pub mod stages;
pub mod status;
