//! Sleeve keys from the peer channel (docs/peer-tls.md, "Key schedule"): per direction
//! of a peer pair, an exporter secret of the TLS connection that announced the sending
//! session, and from it a one-way chain of epoch secrets, each epoch's AEAD key derived
//! from its chain secret.
//!
//! ```text
//! chain(0)     = TLS-Exporter("EXPERIMENTAL weft sleeve v1",
//!                             sender (4, BE) || receiver (4, BE) || session (8, BE), 32)
//! chain(e + 1) = HKDF-Expand-Label(chain(e), "weft sleeve next", "", 32)
//! key(e)       = HKDF-Expand-Label(chain(e), "weft sleeve key", "", 32)
//! ```
//!
//! Owns the chain secrets. A chain only moves forward: moving it to epoch `e` wipes every
//! secret before `e`, so nothing kept can recompute an older key. It never derives more
//! than [`MAX_AHEAD`] epochs past its position, never answers for a session it was not
//! given, and never prints a secret.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;

use zeroize::Zeroizing;

use crate::exporter::{hkdf_expand_label, ExportError, ExporterCapture};
use crate::identity::NodeId;

/// The exporter label (RFC 5705 section 4: private labels begin with "EXPERIMENTAL").
pub const EXPORTER_LABEL: &[u8] = b"EXPERIMENTAL weft sleeve v1";
const NEXT_LABEL: &[u8] = b"weft sleeve next";
const KEY_LABEL: &[u8] = b"weft sleeve key";
/// How far past its position a chain derives (sleeve accepts 8 epochs ahead).
pub const MAX_AHEAD: u32 = 16;
/// Receiving chains kept per peer: the peer's current session and the one it announced
/// last (its next connection's), so a switch never leaves a gap.
pub const RX_CHAINS: usize = 2;

/// Which way traffic flows, seen from the local appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// local -> peer
    Send,
    /// peer -> local
    Receive,
}

/// The exporter context of one direction's chain.
pub fn context(sender: NodeId, receiver: NodeId, session: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..4].copy_from_slice(&sender.to_be_bytes());
    c[4..8].copy_from_slice(&receiver.to_be_bytes());
    c[8..].copy_from_slice(&session.to_be_bytes());
    c
}

/// One direction's chain for one session, positioned at `epoch`.
pub struct Chain {
    session: u64,
    epoch: u32,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("session", &self.session)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

fn expand(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes from a 32-byte PRK with a short label: cannot fail.
    let _ = hkdf_expand_label(secret, label, &[], out.as_mut());
    out
}

impl Chain {
    /// Chain 0 of `session` from `sender` to `receiver`, exported from the connection
    /// whose exporter secret `capture` holds.
    pub fn export(
        capture: &ExporterCapture,
        sender: NodeId,
        receiver: NodeId,
        session: u64,
    ) -> Result<Chain, ExportError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        capture.export(
            EXPORTER_LABEL,
            &context(sender, receiver, session),
            secret.as_mut(),
        )?;
        Ok(Chain {
            session,
            epoch: 0,
            secret,
        })
    }

    /// A chain at epoch 0 from a known secret (tests, fuzzing).
    pub fn from_secret(session: u64, secret: [u8; 32]) -> Chain {
        Chain {
            session,
            epoch: 0,
            secret: Zeroizing::new(secret),
        }
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// The first epoch this chain can still derive.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The key of `epoch`; `None` before the chain's position (wiped) or more than
    /// [`MAX_AHEAD`] past it.
    pub fn key(&self, epoch: u32) -> Option<Zeroizing<[u8; 32]>> {
        let steps = epoch.checked_sub(self.epoch)?;
        if steps > MAX_AHEAD {
            return None;
        }
        let mut secret = Zeroizing::new(*self.secret);
        for _ in 0..steps {
            secret = expand(&secret, NEXT_LABEL);
        }
        Some(expand(&secret, KEY_LABEL))
    }

    /// Move to `epoch` (never back), wiping the secrets before it. A jump beyond
    /// [`MAX_AHEAD`] is refused (the caller moves only to epochs it used).
    pub fn advance_to(&mut self, epoch: u32) -> bool {
        let Some(steps) = epoch.checked_sub(self.epoch) else {
            return false;
        };
        if steps > MAX_AHEAD {
            return false;
        }
        for _ in 0..steps {
            self.secret = expand(&self.secret, NEXT_LABEL);
        }
        self.epoch = epoch;
        true
    }
}

/// One peer's chains: the sending one this node announced (once acknowledged) and up to
/// [`RX_CHAINS`] receiving ones the peer announced.
#[derive(Debug, Default)]
pub struct PeerChains {
    tx: Option<Chain>,
    rx: Vec<Chain>,
}

impl PeerChains {
    pub fn tx(&self) -> Option<&Chain> {
        self.tx.as_ref()
    }

    pub fn rx(&self) -> &[Chain] {
        &self.rx
    }
}

/// One key store shared by the peer channel (which installs chains) and the sleeve data
/// path (which derives keys and moves the chains on). Single-threaded, as the appliance
/// is; every borrow is short and never held across a call into the other side.
pub type SharedKeys = Rc<RefCell<TlsKeys>>;

/// The sleeve keys of every peer the channel negotiated with.
#[derive(Debug, Default)]
pub struct TlsKeys {
    peers: BTreeMap<NodeId, PeerChains>,
}

impl TlsKeys {
    pub fn new() -> TlsKeys {
        TlsKeys::default()
    }

    /// A new, empty store to share.
    pub fn shared() -> SharedKeys {
        Rc::new(RefCell::new(TlsKeys::new()))
    }

    /// The key for `peer`, `direction`, the sender's `session` and `epoch`.
    pub fn key(
        &self,
        peer: NodeId,
        direction: Direction,
        session: u64,
        epoch: u32,
    ) -> Option<Zeroizing<[u8; 32]>> {
        let chains = self.peers.get(&peer)?;
        let chain = match direction {
            Direction::Send => chains.tx.as_ref().filter(|c| c.session == session)?,
            Direction::Receive => chains.rx.iter().find(|c| c.session == session)?,
        };
        chain.key(epoch)
    }

    /// Use `chain` for sending to `peer` from now on (the previous sending chain is
    /// wiped).
    pub fn install_tx(&mut self, peer: NodeId, chain: Chain) {
        self.peers.entry(peer).or_default().tx = Some(chain);
    }

    /// Accept `chain` for `peer`'s traffic; the oldest receiving chain beyond
    /// [`RX_CHAINS`] is wiped. A chain for a session already held replaces it.
    pub fn install_rx(&mut self, peer: NodeId, chain: Chain) {
        let rx = &mut self.peers.entry(peer).or_default().rx;
        rx.retain(|c| c.session != chain.session);
        rx.push(chain);
        if rx.len() > RX_CHAINS {
            rx.remove(0);
        }
    }

    /// The data path's sending key for `peer` is now at `(session, epoch)`: the sending
    /// chain moves to `epoch + 1` (the current key lives in the data path only).
    pub fn sending_at(&mut self, peer: NodeId, session: u64, epoch: u32) {
        if let Some(tx) = self.peers.get_mut(&peer).and_then(|p| p.tx.as_mut()) {
            if tx.session == session {
                tx.advance_to(epoch.saturating_add(1));
            }
        }
    }

    /// The data path authenticated `peer`'s traffic of `(session, epoch)` and holds that
    /// key (and the previous one) itself: the chain moves to `epoch + 1`, and receiving
    /// chains of other sessions than `session` and the newest are wiped.
    pub fn receiving_at(&mut self, peer: NodeId, session: u64, epoch: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let newest = p.rx.last().map(|c| c.session);
        p.rx.retain(|c| c.session == session || Some(c.session) == newest);
        if let Some(c) = p.rx.iter_mut().find(|c| c.session == session) {
            c.advance_to(epoch.saturating_add(1));
        }
    }

    /// Forget `peer` and wipe its chains.
    pub fn remove(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Keep only the peers `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.peers.retain(|n, _| keep(*n));
    }

    pub fn peer(&self, peer: NodeId) -> Option<&PeerChains> {
        self.peers.get(&peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;

    fn capture(secret: u8) -> ExporterCapture {
        let c = ExporterCapture::default();
        c.log("EXPORTER_SECRET", &[0; 32], &[secret; 32]);
        c
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// docs/peer-tls.md "Test vectors" (Python's `cryptography`, independent of ours).
    #[test]
    fn spec_vector_chain_and_keys() {
        let capture = ExporterCapture::default();
        let ems: alloc::vec::Vec<u8> = (0u8..32).collect();
        capture.log("EXPORTER_SECRET", &[0; 32], &ems);
        assert_eq!(
            context(1, 2, 0x0123_4567_89ab_cdef),
            [0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        let mut chain = Chain::export(&capture, 1, 2, 0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(
            *chain.secret,
            hex32("c01067529fcb59709966f314fe5c02716e334291a3854bc3bfcf184c961e24ce")
        );
        let key0 = hex32("99994a9885b12619f5b90ca0b5eead689190fcf74fad9d90291af206a802bf0e");
        let key1 = hex32("4628fd926b99a92a18e82698f76e3604ebf8f7a43d77177095315a571bc776e4");
        assert_eq!(*chain.key(0).unwrap(), key0);
        assert_eq!(*chain.key(1).unwrap(), key1);
        chain.advance_to(1);
        assert_eq!(
            *chain.secret,
            hex32("de1076b313bceb31ec158dfe0e659ba2ac79e0aec1b84b62e85b487a76f79d62")
        );
        assert_eq!(*chain.key(1).unwrap(), key1);
    }

    #[test]
    fn both_ends_of_a_connection_derive_the_same_chain_per_direction() {
        let conn = capture(1);
        let a_to_b = Chain::export(&conn, 1, 2, 77).unwrap();
        let b_from_a = Chain::export(&conn, 1, 2, 77).unwrap();
        let b_to_a = Chain::export(&conn, 2, 1, 77).unwrap();
        assert_eq!(*a_to_b.key(0).unwrap(), *b_from_a.key(0).unwrap());
        assert_ne!(*a_to_b.key(0).unwrap(), *b_to_a.key(0).unwrap());
        let other_session = Chain::export(&conn, 1, 2, 78).unwrap();
        assert_ne!(*a_to_b.key(0).unwrap(), *other_session.key(0).unwrap());
        let other_conn = Chain::export(&capture(2), 1, 2, 77).unwrap();
        assert_ne!(*a_to_b.key(0).unwrap(), *other_conn.key(0).unwrap());
    }

    #[test]
    fn epochs_differ_and_a_moved_chain_derives_the_same_later_keys() {
        let mut chain = Chain::from_secret(5, [3; 32]);
        let keys: Vec<[u8; 32]> = (0..=4).map(|e| *chain.key(e).unwrap()).collect();
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j]);
            }
        }
        assert!(chain.advance_to(3));
        assert_eq!(chain.key(2), None, "older epochs are gone");
        assert_eq!(*chain.key(3).unwrap(), keys[3]);
        assert_eq!(*chain.key(4).unwrap(), keys[4]);
        assert!(!chain.advance_to(2), "never back");
        assert_eq!(chain.key(3 + MAX_AHEAD + 1), None);
        assert!(chain.key(3 + MAX_AHEAD).is_some());
        assert!(!chain.advance_to(3 + MAX_AHEAD + 1));
    }

    #[test]
    fn keys_answer_only_for_installed_sessions_and_directions() {
        let mut keys = TlsKeys::new();
        assert!(keys.key(2, Direction::Send, 10, 0).is_none());
        keys.install_tx(2, Chain::from_secret(10, [1; 32]));
        keys.install_rx(2, Chain::from_secret(20, [2; 32]));
        assert!(keys.key(2, Direction::Send, 10, 0).is_some());
        assert!(keys.key(2, Direction::Send, 20, 0).is_none());
        assert!(keys.key(2, Direction::Receive, 20, 0).is_some());
        assert!(keys.key(2, Direction::Receive, 10, 0).is_none());
        assert!(keys.key(3, Direction::Receive, 20, 0).is_none());
        keys.remove(2);
        assert!(keys.key(2, Direction::Receive, 20, 0).is_none());
    }

    #[test]
    fn receiving_keeps_the_current_and_the_announced_session_only() {
        let mut keys = TlsKeys::new();
        keys.install_rx(2, Chain::from_secret(20, [2; 32]));
        keys.install_rx(2, Chain::from_secret(21, [3; 32]));
        keys.install_rx(2, Chain::from_secret(22, [4; 32]));
        assert!(
            keys.key(2, Direction::Receive, 20, 0).is_none(),
            "oldest dropped"
        );
        // The data path moved to session 21 epoch 2: 21's chain moves on, 22 stays.
        keys.receiving_at(2, 21, 2);
        assert!(keys.key(2, Direction::Receive, 21, 2).is_none());
        assert!(keys.key(2, Direction::Receive, 21, 3).is_some());
        assert!(keys.key(2, Direction::Receive, 22, 0).is_some());
        // Then to 22: 21 goes.
        keys.receiving_at(2, 22, 0);
        assert!(keys.key(2, Direction::Receive, 21, 3).is_none());
        assert!(keys.key(2, Direction::Receive, 22, 1).is_some());
    }

    #[test]
    fn sending_moves_the_chain_past_the_epoch_in_use() {
        let mut keys = TlsKeys::new();
        keys.install_tx(2, Chain::from_secret(10, [1; 32]));
        let k1 = *keys.key(2, Direction::Send, 10, 1).unwrap();
        keys.sending_at(2, 10, 0);
        assert!(keys.key(2, Direction::Send, 10, 0).is_none());
        assert_eq!(*keys.key(2, Direction::Send, 10, 1).unwrap(), k1);
        keys.sending_at(2, 99, 5); // another session: ignored
        assert!(keys.key(2, Direction::Send, 10, 1).is_some());
    }

    #[test]
    fn chains_are_not_printed() {
        let chain = Chain::from_secret(5, [0xab; 32]);
        let s = alloc::format!("{chain:?}");
        assert!(!s.contains("171"), "{s}");
        assert!(s.contains("session: 5"));
    }
}
