//! X25519 key exchange for rustls (RFC 7748, RFC 8446 section 7.4.2), over
//! `x25519-dalek`, with ephemeral secrets from the seeded generator.

use alloc::boxed::Box;

use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};
use x25519_dalek::{EphemeralSecret, PublicKey};

use crate::rng::Csprng;

#[derive(Debug)]
pub struct X25519 {
    pub rng: &'static Csprng,
}

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let secret = self.rng.with(EphemeralSecret::random_from_rng);
        let public = PublicKey::from(&secret);
        Ok(Box::new(Active { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct Active {
    secret: EphemeralSecret,
    public: PublicKey,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&PublicKey::from(peer));
        // RFC 8446 section 7.4.2: an all-zero shared secret (a low-order point) aborts.
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}
