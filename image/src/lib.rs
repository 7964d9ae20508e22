//! The weft host tool as a library: one QEMU launcher and one namespace/link builder,
//! shared by the `weft` binary and by `qemu-tests` (the control client and config
//! documents are `weft-control`'s).
//! Host `std` code only; it never runs inside the appliance.

pub mod bench;
pub mod build;
pub mod ca;
pub mod demo;
pub mod gridhost;
pub mod install_cni;
pub mod netns;
pub mod paths;
pub mod process;
pub mod qemu;
pub mod stages;
pub mod status;
