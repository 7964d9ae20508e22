//! weft's packet path. `no_std` + `alloc`; never touches hardware, never reads a clock.
#![no_std]
extern crate alloc;

pub mod checksum;
pub mod conntrack;
pub mod health;
pub mod lb;
pub mod maglev;
pub mod nat;
