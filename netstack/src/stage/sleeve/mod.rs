//! Sleeve: the encrypted overlay transport (issue 4; specification in docs/sleeve.md).
//!
//! Owns sealing L2 frames into authenticated, encrypted UDP payloads for a peer and
//! opening them again: the replay window (`replay`), where keys come from (`keys`), one
//! peer's state machine (`session`) and the endpoint over all peers with its drop
//! counters (`Sleeve`, here); the message format is `wire::sleeve`. It never does I/O, never reads a clock
//! and never chooses between sleeve and VXLAN (the overlay does).

pub mod keys;
pub mod replay;
pub mod session;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use smoltcp::time::Instant;

use crate::wire::sleeve as wire;

use crate::base::NodeId;

pub use keys::{
    AeadKey, GridSecret, KeyDirection, KeyId, KeySource, PskKeySource, SecretError, TlsKeySource,
};
pub use replay::ReplayError;
pub use session::{
    overlay_mtu, pack, Opened, PeerSleeveRefused, Session, SessionConfig, SessionStats,
};
pub use wire::{Epoch, Frame, SessionId};

/// Why a received message was refused. Each variant is a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenError {
    /// Shorter than header + tag.
    Truncated,
    /// Version is not 1.
    BadVersion,
    /// Message type unknown.
    UnknownType,
    /// Sender is not a configured peer.
    UnknownPeer,
    /// Session id lower than the peer's current one (a recording of an older boot).
    StaleSession,
    /// Epoch neither current, previous within grace, nor a little ahead.
    UnknownEpoch,
    /// The key source has no key for it.
    KeyUnavailable,
    /// Counter already accepted under that key.
    Replayed,
    /// Counter behind the replay window.
    TooOld,
    /// Tag did not verify: tampered, forged, wrong secret or wrong receiver.
    AuthFailed,
    /// Authentic, but the records are not well formed (a peer bug).
    Malformed,
}

impl OpenError {
    pub const ALL: [OpenError; 11] = [
        OpenError::Truncated,
        OpenError::BadVersion,
        OpenError::UnknownType,
        OpenError::UnknownPeer,
        OpenError::StaleSession,
        OpenError::UnknownEpoch,
        OpenError::KeyUnavailable,
        OpenError::Replayed,
        OpenError::TooOld,
        OpenError::AuthFailed,
        OpenError::Malformed,
    ];

    /// Counter name, as shown in status.
    pub const fn name(self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::BadVersion => "bad_version",
            OpenError::UnknownType => "unknown_type",
            OpenError::UnknownPeer => "unknown_peer",
            OpenError::StaleSession => "stale_session",
            OpenError::UnknownEpoch => "unknown_epoch",
            OpenError::KeyUnavailable => "key_unavailable",
            OpenError::Replayed => "replayed",
            OpenError::TooOld => "too_old",
            OpenError::AuthFailed => "auth_failed",
            OpenError::Malformed => "malformed",
        }
    }
}

impl From<wire::Error> for OpenError {
    fn from(e: wire::Error) -> Self {
        match e {
            wire::Error::Truncated => OpenError::Truncated,
            wire::Error::BadVersion(_) => OpenError::BadVersion,
            wire::Error::UnknownType(_) => OpenError::UnknownType,
            // No configured peer can have a number that is no node's.
            wire::Error::BadSender(_) => OpenError::UnknownPeer,
            wire::Error::Malformed => OpenError::Malformed,
        }
    }
}

impl From<ReplayError> for OpenError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replayed => OpenError::Replayed,
            ReplayError::TooOld => OpenError::TooOld,
        }
    }
}

/// Why frames were not sealed. Nothing was sent and no counter was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealError {
    /// No session for that peer.
    UnknownPeer,
    /// A frame of zero bytes.
    EmptyFrame,
    /// A frame that does not fit in one message (the overlay MTU should prevent it).
    FrameTooBig,
    /// The key source has no sending key.
    KeyUnavailable,
    /// The session used every epoch; a new session is needed.
    EpochsExhausted,
}

impl SealError {
    pub const fn name(self) -> &'static str {
        match self {
            SealError::UnknownPeer => "unknown_peer",
            SealError::EmptyFrame => "empty_frame",
            SealError::FrameTooBig => "frame_too_big",
            SealError::KeyUnavailable => "key_unavailable",
            SealError::EpochsExhausted => "epochs_exhausted",
        }
    }
}

/// Why a peer was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerError {
    /// It already is a peer (its state is kept).
    AlreadyPeer,
    /// No session id is left (the id space of this boot is used up).
    SessionsExhausted,
}

/// Named counters of one sleeve endpoint (status / metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SleeveMetrics {
    pub sealed_messages: u64,
    pub sealed_frames: u64,
    /// Frames that shared a message with an earlier frame (`sealed_frames` less
    /// `sealed_messages`): what batching saved in datagrams.
    pub frames_batched: u64,
    pub opened_messages: u64,
    pub opened_frames: u64,
    pub seal_refused: u64,
    pub drop_truncated: u64,
    pub drop_bad_version: u64,
    pub drop_unknown_type: u64,
    pub drop_unknown_peer: u64,
    pub drop_stale_session: u64,
    pub drop_unknown_epoch: u64,
    pub drop_key_unavailable: u64,
    pub drop_replayed: u64,
    pub drop_too_old: u64,
    pub drop_auth_failed: u64,
    pub drop_malformed: u64,
}

impl SleeveMetrics {
    fn drop_counter(&mut self, e: OpenError) -> &mut u64 {
        match e {
            OpenError::Truncated => &mut self.drop_truncated,
            OpenError::BadVersion => &mut self.drop_bad_version,
            OpenError::UnknownType => &mut self.drop_unknown_type,
            OpenError::UnknownPeer => &mut self.drop_unknown_peer,
            OpenError::StaleSession => &mut self.drop_stale_session,
            OpenError::UnknownEpoch => &mut self.drop_unknown_epoch,
            OpenError::KeyUnavailable => &mut self.drop_key_unavailable,
            OpenError::Replayed => &mut self.drop_replayed,
            OpenError::TooOld => &mut self.drop_too_old,
            OpenError::AuthFailed => &mut self.drop_auth_failed,
            OpenError::Malformed => &mut self.drop_malformed,
        }
    }

    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: OpenError) -> u64 {
        let mut copy = *self;
        *copy.drop_counter(reason)
    }

    /// All drops, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        OpenError::ALL.iter().map(|e| self.dropped(*e)).sum()
    }
}

/// The sleeve endpoint of one appliance: a session per configured peer, one key source,
/// drop counters. `Clone`: see [`Session`] (only one copy may seal).
#[derive(Clone)]
pub struct Sleeve<K: KeySource> {
    local: NodeId,
    keys: K,
    config: SessionConfig,
    /// The sending session the next new peer session gets; `None` once used up.
    next_session: Option<SessionId>,
    peers: BTreeMap<NodeId, Session>,
    metrics: SleeveMetrics,
}

impl<K: KeySource> core::fmt::Debug for Sleeve<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sleeve")
            .field("local", &self.local)
            .field("peers", &self.peers)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl<K: KeySource> Sleeve<K> {
    /// `first_session`: [`SessionId::first_of_boot`] with this boot's wall-clock time and
    /// a value of the seeded random source. Sending sessions are `first, first + 1, ...`,
    /// so none repeats across reboots or peer re-adds and they grow (docs/sleeve.md
    /// "Sessions").
    pub fn new(
        local: NodeId,
        keys: K,
        config: SessionConfig,
        first_session: SessionId,
    ) -> Sleeve<K> {
        Sleeve {
            local,
            keys,
            config,
            next_session: Some(first_session),
            peers: BTreeMap::new(),
            metrics: SleeveMetrics::default(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn keys(&self) -> &K {
        &self.keys
    }

    pub fn metrics(&self) -> &SleeveMetrics {
        &self.metrics
    }

    /// The sending session the next new peer (or restart) gets: a replacement endpoint
    /// for the same grid secret must start at or above it, never below.
    pub fn next_session(&self) -> Option<SessionId> {
        self.next_session
    }

    fn take_session(&mut self) -> Option<SessionId> {
        let id = self.next_session?;
        self.next_session = id.next();
        Some(id)
    }

    /// Start talking to `peer` under a new sending session.
    pub fn add_peer(&mut self, peer: NodeId) -> Result<(), PeerError> {
        if self.peers.contains_key(&peer) {
            return Err(PeerError::AlreadyPeer);
        }
        let session = self.take_session().ok_or(PeerError::SessionsExhausted)?;
        self.peers
            .insert(peer, Session::new(self.local, peer, session, self.config));
        Ok(())
    }

    /// Forget `peer` and its keys; `false` if it was not a peer.
    pub fn remove_peer(&mut self, peer: NodeId) -> bool {
        self.peers.remove(&peer).is_some()
    }

    /// Seal to `peer` under `session` from now on (epoch 0): a session whose keys the
    /// key source just received (the peer channel's switch). `false`: not a peer.
    pub fn restart_tx(&mut self, peer: NodeId, session: SessionId) -> bool {
        match self.peers.get_mut(&peer) {
            Some(s) => {
                s.restart_tx(session);
                true
            }
            None => false,
        }
    }

    pub fn peer(&self, peer: NodeId) -> Option<&Session> {
        self.peers.get(&peer)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Session> {
        self.peers.values()
    }

    /// Seal `frames` for `peer` into UDP payloads (each after `config.headroom` bytes),
    /// batching as many as fit; send them to the peer's underlay address, port 6783.
    pub fn seal(
        &mut self,
        peer: NodeId,
        frames: &[Frame<'_>],
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, SealError> {
        let result = self.seal_inner(peer, frames, now);
        match &result {
            Ok(messages) => {
                self.metrics.sealed_messages += messages.len() as u64;
                self.metrics.sealed_frames += frames.len() as u64;
                self.metrics.frames_batched += frames.len().saturating_sub(messages.len()) as u64;
            }
            Err(_) => self.metrics.seal_refused += 1,
        }
        result
    }

    fn seal_inner(
        &mut self,
        peer: NodeId,
        frames: &[Frame<'_>],
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, SealError> {
        let session = self.peers.get_mut(&peer).ok_or(SealError::UnknownPeer)?;
        match session.seal(&self.keys, frames, now) {
            Err(SealError::EpochsExhausted) => {
                let fresh = self.next_session.ok_or(SealError::EpochsExhausted)?;
                self.next_session = fresh.next();
                session.restart_tx(fresh);
                session.seal(&self.keys, frames, now)
            }
            other => other,
        }
    }

    /// The session settings every peer's session gets.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Refuses frames (their lengths) that no message for `peer` can carry; counted as
    /// a refused seal like [`Sleeve::seal`]'s own checks.
    pub fn check_frames(
        &mut self,
        peer: NodeId,
        lens: impl Iterator<Item = usize>,
    ) -> Result<(), SealError> {
        let result = match self.peers.get(&peer) {
            Some(session) => session.check_frames(lens),
            None => Err(SealError::UnknownPeer),
        };
        if result.is_err() {
            self.metrics.seal_refused += 1;
        }
        result
    }

    /// Seal one message for `peer` where it lies (see [`Session::seal_message`]):
    /// `message` holds `frames` well-formed records between room for the header and
    /// room for the tag. Counted as [`Sleeve::seal`] counts.
    pub fn seal_message(
        &mut self,
        peer: NodeId,
        message: &mut [u8],
        frames: usize,
        now: Instant,
    ) -> Result<(), SealError> {
        let result = match self.peers.get_mut(&peer) {
            None => Err(SealError::UnknownPeer),
            Some(session) => match session.seal_message(&self.keys, message, now) {
                Err(SealError::EpochsExhausted) => match self.next_session {
                    None => Err(SealError::EpochsExhausted),
                    Some(fresh) => {
                        self.next_session = fresh.next();
                        session.restart_tx(fresh);
                        session.seal_message(&self.keys, message, now)
                    }
                },
                other => other,
            },
        };
        match result {
            Ok(()) => {
                self.metrics.sealed_messages += 1;
                self.metrics.sealed_frames += frames as u64;
                self.metrics.frames_batched += frames.saturating_sub(1) as u64;
            }
            Err(_) => self.metrics.seal_refused += 1,
        }
        result
    }

    /// Open one received UDP payload (to port 6783) in place. Refusals are counted by
    /// reason in `metrics()`.
    pub fn open<'b>(
        &mut self,
        datagram: &'b mut [u8],
        now: Instant,
    ) -> Result<Opened<'b>, OpenError> {
        let result = self.open_inner(datagram, now);
        match &result {
            Ok(opened) => {
                self.metrics.opened_messages += 1;
                self.metrics.opened_frames += opened.frames.len() as u64;
            }
            Err(e) => *self.metrics.drop_counter(*e) += 1,
        }
        result
    }

    fn open_inner<'b>(
        &mut self,
        datagram: &'b mut [u8],
        now: Instant,
    ) -> Result<Opened<'b>, OpenError> {
        let repr = wire::Repr::parse(&wire::Packet::new_checked(&*datagram)?)?;
        let session = self
            .peers
            .get_mut(&repr.sender)
            .ok_or(OpenError::UnknownPeer)?;
        let opened = session.open(&self.keys, datagram, now);
        if let Err(e) = &opened {
            session.count_refused(*e);
        }
        opened
    }
}

#[cfg(test)]
mod tests;
