//! The appliance as a whole: config model, control protocol, services. `no_std` + `alloc`.
#![no_std]
extern crate alloc;

pub mod dns;
