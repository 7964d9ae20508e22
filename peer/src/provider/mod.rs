//! weft's rustls `CryptoProvider`: exactly what the peer channel negotiates, over the
//! RustCrypto crates the rest of the appliance already uses (docs/peer-tls.md, "Crypto
//! provider"): TLS 1.3 with TLS13_CHACHA20_POLY1305_SHA256, X25519 key exchange, Ed25519
//! certificates and signatures, randomness from [`Csprng`].
//!
//! Owns the glue between rustls's provider traits and those crates. It never offers a
//! second suite, group or signature scheme, never accepts TLS 1.2, and never draws
//! randomness from anywhere but the seeded generator it was given.

mod aead;
mod hash;
mod kx;
mod sign;

use alloc::boxed::Box;
use alloc::vec;

use rustls::crypto::CryptoProvider;

use crate::rng::Csprng;

pub use aead::TLS13_CHACHA20_POLY1305_SHA256;
pub use sign::{Ed25519Keys, ED25519_ALGORITHMS};

/// The provider: one suite, one group, one signature scheme, randomness from `rng`.
/// Leaks one small key-exchange object (rustls holds `&'static` parts): make one per
/// boot, not per connection.
pub fn provider(rng: &'static Csprng) -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![TLS13_CHACHA20_POLY1305_SHA256],
        kx_groups: vec![Box::leak(Box::new(kx::X25519 { rng }))],
        signature_verification_algorithms: ED25519_ALGORITHMS,
        secure_random: rng,
        key_provider: &Ed25519Keys,
    }
}

#[cfg(test)]
mod tests;
