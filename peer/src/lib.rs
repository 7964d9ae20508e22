//! weft's peer channel (issue 16; specification in docs/peer-tls.md): mutual TLS 1.3
//! between appliances over TCP 6783, the certificate rules that name a node of a grid,
//! and the per-direction sleeve keys exported from each connection.
//!
//! `no_std` + `alloc`, sans-I/O: bytes of a TCP stream come in and go out as buffers,
//! time comes in as arguments, randomness from a seeded [`rng::Csprng`]. It never opens
//! a socket, never reads a clock, and never hands out a key it did not derive from a
//! completed, verified handshake.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
extern crate alloc;

pub use pki_types;

pub mod channel;
pub mod config;
pub mod exporter;
pub mod identity;
pub mod keys;
pub mod mesh;
pub mod message;
pub mod provider;
pub mod rng;
#[cfg(test)]
pub(crate) mod testing;
