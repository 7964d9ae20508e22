//! Where sleeve keys come from (docs/sleeve.md, "Key schedule", "Key source").
//!
//! Owns the `KeySource` interface the data path asks for keys, `PskKeySource`, the
//! HKDF-SHA256 derivation from the grid secret, and `TlsKeySource`, the keys the peer
//! channel exported (docs/peer-tls.md). It never sees packets, never keeps a derived key
//! it handed out, and never exposes the grid secret.

use core::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::base::NodeId;
use crate::wire::sleeve::{Epoch, SessionId};

/// HKDF info prefix; the version is part of every key.
pub const KDF_LABEL: &[u8] = b"weft sleeve v1";
/// Shortest grid secret accepted (it is key material, not a password).
pub const MIN_SECRET_LEN: usize = 16;

/// Which way traffic flows, seen from the local appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDirection {
    /// local -> peer
    Send,
    /// peer -> local
    Receive,
}

/// Names one key: the sending side's session and epoch, between us and `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId {
    pub peer: NodeId,
    pub direction: KeyDirection,
    pub session: SessionId,
    pub epoch: Epoch,
}

/// A 256-bit ChaCha20-Poly1305 key; wiped when dropped.
#[derive(Clone)]
pub struct AeadKey([u8; 32]);

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl AeadKey {
    pub const fn from_bytes(bytes: [u8; 32]) -> AeadKey {
        AeadKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

/// Gives the data path its keys. The PSK source derives them; a later TLS key
/// exchange answers only for sessions it negotiated. `None`: no key (yet).
pub trait KeySource {
    fn key(&self, id: &KeyId) -> Option<AeadKey>;
}

impl<K: KeySource + ?Sized> KeySource for &K {
    fn key(&self, id: &KeyId) -> Option<AeadKey> {
        (**self).key(id)
    }
}

/// Why a grid secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`] bytes.
    TooShort,
}

/// The grid's pre-shared secret; wiped when dropped, never printed.
#[derive(Clone)]
pub struct GridSecret(alloc::vec::Vec<u8>);

impl Drop for GridSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl GridSecret {
    pub fn new(bytes: &[u8]) -> Result<GridSecret, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        Ok(GridSecret(bytes.to_vec()))
    }
}

impl fmt::Debug for GridSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GridSecret(..)")
    }
}

/// The key of one direction of a peer pair, for one session and epoch (RFC 5869):
/// HKDF-SHA256(IKM = secret, salt = session BE, info = label || sender || receiver || epoch).
pub fn derive_key(
    secret: &GridSecret,
    sender: NodeId,
    receiver: NodeId,
    session: SessionId,
    epoch: Epoch,
) -> Option<AeadKey> {
    let salt = session.0.to_be_bytes();
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), &secret.0);
    let mut okm = [0u8; 32];
    let info: [&[u8]; 4] = [
        KDF_LABEL,
        &u32::from(sender).to_be_bytes(),
        &u32::from(receiver).to_be_bytes(),
        &epoch.0.to_be_bytes(),
    ];
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: expand does not fail.
    hkdf.expand_multi_info(&info, &mut okm).ok()?;
    let key = AeadKey(okm);
    okm.zeroize();
    Some(key)
}

/// Keys derived from the grid secret for every peer, session and epoch.
#[derive(Debug, Clone)]
pub struct PskKeySource {
    local: NodeId,
    secret: GridSecret,
}

impl PskKeySource {
    pub fn new(local: NodeId, secret: GridSecret) -> PskKeySource {
        PskKeySource { local, secret }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }
}

impl KeySource for PskKeySource {
    fn key(&self, id: &KeyId) -> Option<AeadKey> {
        let (sender, receiver) = match id.direction {
            KeyDirection::Send => (self.local, id.peer),
            KeyDirection::Receive => (id.peer, self.local),
        };
        derive_key(&self.secret, sender, receiver, id.session, id.epoch)
    }
}

/// Keys from the peer channel's store (docs/peer-tls.md, "Key schedule"): it answers
/// only for sessions announced on an authenticated connection. Cloning shares the store.
#[derive(Clone)]
pub struct TlsKeySource(weft_peer::keys::SharedKeys);

impl TlsKeySource {
    pub fn new(keys: weft_peer::keys::SharedKeys) -> TlsKeySource {
        TlsKeySource(keys)
    }

    pub fn shared(&self) -> &weft_peer::keys::SharedKeys {
        &self.0
    }

    /// The data path sends to `peer` under `(session, epoch)`: the chain moves past it.
    pub fn sending_at(&self, peer: NodeId, session: SessionId, epoch: Epoch) {
        self.0
            .borrow_mut()
            .sending_at(u32::from(peer), session.0, epoch.0);
    }

    /// `peer`'s message under `(session, epoch)` authenticated: the chain moves past it.
    pub fn receiving_at(&self, peer: NodeId, session: SessionId, epoch: Epoch) {
        self.0
            .borrow_mut()
            .receiving_at(u32::from(peer), session.0, epoch.0);
    }
}

impl fmt::Debug for TlsKeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsKeySource(..)")
    }
}

impl KeySource for TlsKeySource {
    fn key(&self, id: &KeyId) -> Option<AeadKey> {
        let direction = match id.direction {
            KeyDirection::Send => weft_peer::keys::Direction::Send,
            KeyDirection::Receive => weft_peer::keys::Direction::Receive,
        };
        let key = self
            .0
            .borrow()
            .key(u32::from(id.peer), direction, id.session.0, id.epoch.0)?;
        Some(AeadKey::from_bytes(*key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn spec_secret() -> GridSecret {
        let bytes: alloc::vec::Vec<u8> = (0u8..32).collect();
        GridSecret::new(&bytes).unwrap()
    }

    const SESSION: SessionId = SessionId(0x0123_4567_89ab_cdef);

    /// docs/sleeve.md "Test vectors": both directions of the pair 1 <-> 2.
    #[test]
    fn spec_vector_key_derivation() {
        let one = PskKeySource::new(NodeId::new(1).unwrap(), spec_secret());
        let two = PskKeySource::new(NodeId::new(2).unwrap(), spec_secret());
        let k12 = hex32("e7eac567189a1bd25b0ea51fbafc2ea9982dd4166ddd2fe1d087f88546113a82");
        let k21 = hex32("3470ed852040c7a9a7d858f7515a66404d755e21f5f660095d7fbfb6bbfee6ca");
        let id = |peer, direction| KeyId {
            peer: NodeId::new(peer).unwrap(),
            direction,
            session: SESSION,
            epoch: Epoch(7),
        };
        assert_eq!(
            one.key(&id(2, KeyDirection::Send)).unwrap().as_bytes(),
            &k12
        );
        assert_eq!(
            two.key(&id(1, KeyDirection::Receive)).unwrap().as_bytes(),
            &k12
        );
        assert_eq!(
            two.key(&id(1, KeyDirection::Send)).unwrap().as_bytes(),
            &k21
        );
        assert_eq!(
            one.key(&id(2, KeyDirection::Receive)).unwrap().as_bytes(),
            &k21
        );
    }

    /// Changing any one input gives a different key.
    #[test]
    fn every_input_separates_keys() {
        let s = spec_secret();
        let key = |s: &GridSecret, a, b, session, epoch| {
            *derive_key(
                s,
                NodeId::new(a).unwrap(),
                NodeId::new(b).unwrap(),
                session,
                Epoch(epoch),
            )
            .unwrap()
            .as_bytes()
        };
        let base = key(&s, 1, 2, SESSION, 7);
        let other = GridSecret::new(&[0x55; 32]).unwrap();
        let variants = [
            key(&other, 1, 2, SESSION, 7),
            key(&s, 3, 2, SESSION, 7),
            key(&s, 1, 3, SESSION, 7),
            key(&s, 2, 1, SESSION, 7),
            key(&s, 1, 2, SessionId(SESSION.0 + 1), 7),
            key(&s, 1, 2, SESSION, 8),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i}");
        }
    }

    #[test]
    fn short_secret_is_refused() {
        assert_eq!(
            GridSecret::new(&[1; MIN_SECRET_LEN - 1]).err(),
            Some(SecretError::TooShort)
        );
        assert!(GridSecret::new(&[1; MIN_SECRET_LEN]).is_ok());
    }

    #[test]
    fn secrets_and_keys_are_not_printed() {
        let s = alloc::format!("{:?}", spec_secret());
        assert_eq!(s, "GridSecret(..)");
        let k = derive_key(
            &spec_secret(),
            NodeId::new(1).unwrap(),
            NodeId::new(2).unwrap(),
            SESSION,
            Epoch(0),
        )
        .unwrap();
        assert_eq!(alloc::format!("{k:?}"), "AeadKey(..)");
    }

    /// The TLS source answers as the store does, per direction, and moving a chain on
    /// makes older epochs unanswerable.
    #[test]
    fn tls_keys_answer_for_installed_sessions_only() {
        use weft_peer::keys::{Chain, TlsKeys};
        let store = TlsKeys::shared();
        let source = TlsKeySource::new(store.clone());
        let two = NodeId::new(2).unwrap();
        let id = |direction, session, epoch| KeyId {
            peer: two,
            direction,
            session: SessionId(session),
            epoch: Epoch(epoch),
        };
        assert!(source.key(&id(KeyDirection::Send, 10, 0)).is_none());
        store
            .borrow_mut()
            .install_tx(2, Chain::from_secret(10, [1; 32]));
        store
            .borrow_mut()
            .install_rx(2, Chain::from_secret(20, [2; 32]));
        let send0 = source.key(&id(KeyDirection::Send, 10, 0)).unwrap();
        assert!(source.key(&id(KeyDirection::Receive, 10, 0)).is_none());
        assert!(source.key(&id(KeyDirection::Receive, 20, 0)).is_some());
        source.sending_at(two, SessionId(10), Epoch(0));
        assert!(source.key(&id(KeyDirection::Send, 10, 0)).is_none());
        assert_ne!(
            source
                .key(&id(KeyDirection::Send, 10, 1))
                .unwrap()
                .as_bytes(),
            send0.as_bytes()
        );
        source.receiving_at(two, SessionId(20), Epoch(3));
        assert!(source.key(&id(KeyDirection::Receive, 20, 3)).is_none());
        assert!(source.key(&id(KeyDirection::Receive, 20, 4)).is_some());
    }
}
