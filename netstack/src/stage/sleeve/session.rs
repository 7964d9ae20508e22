//! One peer's sleeve state machine (docs/sleeve.md "Sessions", "Counters and nonces",
//! "Rekeying", "Batching").
//!
//! Owns the sending key (session, epoch, counter) and the receiving keys (current and
//! previous epoch, each with its replay window) for one peer. Sans-I/O: frames and
//! messages come in as bytes and time as an `Instant`. It never reuses a counter under
//! a key, never changes state for a message whose tag did not verify, and never panics
//! on received bytes.

use alloc::vec::Vec;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use smoltcp::time::{Duration, Instant};

use super::keys::{AeadKey, KeyDirection, KeyId, KeySource};
use super::replay::ReplayWindow;
use super::{OpenError, SealError};
use crate::base::NodeId;
use crate::wire::sleeve::{
    self as wire, Epoch, Frame, MessageType, Packet, Records, Repr, SessionId, HEADER_LEN,
    MAX_FRAME_LEN, MIN_MESSAGE_LEN, RECORD_HEADER_LEN, TAG_LEN,
};

/// Epochs of the current session accepted ahead of the current one.
pub const MAX_EPOCH_STEP: u32 = 8;
/// Upper bound on `rekey_after_packets`.
pub const MAX_REKEY_AFTER_PACKETS: u64 = 1 << 60;
/// Outer IPv4 (20) + UDP (8) bytes around every message.
pub const UDP_IPV4_OVERHEAD: usize = 28;
/// Underlay MTU minus overlay MTU: IPv4 + UDP + header + record + inner Ethernet + tag.
pub const OVERLAY_MTU_OVERHEAD: u16 =
    (UDP_IPV4_OVERHEAD + HEADER_LEN + RECORD_HEADER_LEN + 14 + TAG_LEN) as u16;
/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The overlay (inner IP) MTU sleeve leaves on an underlay of `underlay_mtu`.
pub const fn overlay_mtu(underlay_mtu: u16) -> u16 {
    underlay_mtu.saturating_sub(OVERLAY_MTU_OVERHEAD)
}

/// Tunables of a session (docs/sleeve.md gives the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest message (UDP payload) sealed, in bytes.
    pub max_datagram: usize,
    /// Zero bytes left in front of every sealed message for the outer headers.
    pub headroom: usize,
    /// Messages sealed under one epoch before the next epoch starts.
    pub rekey_after_packets: u64,
    /// Age of an epoch after which the next message starts a new one.
    pub rekey_after_time: Duration,
    /// How long the previous receiving epoch stays accepted after a newer one opened.
    pub old_key_grace: Duration,
    /// Silence of the peer's current session after which a lower session id is adopted
    /// (a peer whose clock went back across a reboot); until then it is `StaleSession`.
    pub session_takeover_idle: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::for_underlay_mtu(1500)
    }
}

impl SessionConfig {
    pub const fn for_underlay_mtu(underlay_mtu: u16) -> SessionConfig {
        SessionConfig {
            max_datagram: (underlay_mtu as usize).saturating_sub(UDP_IPV4_OVERHEAD),
            headroom: 0,
            rekey_after_packets: 1 << 30,
            rekey_after_time: Duration::from_secs(120),
            old_key_grace: Duration::from_secs(30),
            session_takeover_idle: Duration::from_secs(120),
        }
    }

    /// The largest message sealed (a UDP payload).
    pub fn max_message(&self) -> usize {
        self.max_datagram.min(MAX_UDP_PAYLOAD)
    }

    fn max_datagram(&self) -> usize {
        self.max_message()
    }

    /// Largest frame that fits in one message alone.
    pub fn max_frame_len(&self) -> usize {
        self.max_datagram()
            .saturating_sub(MIN_MESSAGE_LEN + RECORD_HEADER_LEN)
            .min(MAX_FRAME_LEN)
    }

    fn rekey_after_packets(&self) -> u64 {
        self.rekey_after_packets.clamp(1, MAX_REKEY_AFTER_PACKETS)
    }
}

/// How many frames of `lens` (their lengths, in order) one message of at most
/// `max_datagram` bytes carries: greedy, and always at least the first.
pub fn pack(lens: impl Iterator<Item = usize>, max_datagram: usize) -> usize {
    let mut take = 0;
    let mut len = MIN_MESSAGE_LEN;
    for frame in lens {
        let record = RECORD_HEADER_LEN + frame;
        if take > 0 && len + record > max_datagram {
            break;
        }
        len += record;
        take += 1;
    }
    take
}

fn elapsed(since: Instant, now: Instant) -> Duration {
    Duration::from_micros(
        now.total_micros()
            .saturating_sub(since.total_micros())
            .max(0) as u64,
    )
}

fn later(t: Instant, d: Duration) -> Instant {
    let micros = i64::try_from(d.total_micros()).unwrap_or(i64::MAX);
    Instant::from_micros(t.total_micros().saturating_add(micros))
}

fn cipher(key: &AeadKey) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(&(*key.as_bytes()).into())
}

// RFC 8439 / WireGuard: 32-bit zero then the 64-bit counter, little endian.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::from(n)
}

#[derive(Clone)]
struct TxKey {
    epoch: Epoch,
    next_counter: u64,
    started: Instant,
    cipher: ChaCha20Poly1305,
}

#[derive(Clone)]
struct RxKey {
    session: SessionId,
    epoch: Epoch,
    cipher: ChaCha20Poly1305,
    window: ReplayWindow,
}

#[derive(Clone)]
struct Previous {
    key: RxKey,
    until: Instant,
}

/// Which receiving key a message names.
enum Slot {
    Current,
    Previous,
    /// A newer epoch of the current session, or a session not seen before.
    Fresh {
        new_session: bool,
    },
}

/// A message that opened: who sent it, under which key, and its frames (borrowed from
/// the decrypted buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'b> {
    pub peer: NodeId,
    pub session: SessionId,
    pub epoch: Epoch,
    pub counter: u64,
    pub frames: Records<'b>,
}

/// Counts of events of one session, for status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Sending epochs started after the first.
    pub rekeys: u64,
    /// Newer receiving epochs installed.
    pub rx_epochs_installed: u64,
    /// New peer sessions adopted (the peer restarted).
    pub rx_sessions_adopted: u64,
    /// Messages of this peer refused after its session was found (the endpoint counts
    /// them all as well).
    pub refused: PeerSleeveRefused,
}

/// A peer's sleeve messages refused after its session was found, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerSleeveRefused {
    pub stale_session: u64,
    pub unknown_epoch: u64,
    pub key_unavailable: u64,
    pub replayed: u64,
    pub too_old: u64,
    pub auth_failed: u64,
    pub malformed: u64,
}

impl SessionStats {
    /// Counts a message of this peer refused for `reason`.
    pub(super) fn count_refused(&mut self, reason: super::OpenError) {
        use super::OpenError::*;
        let r = &mut self.refused;
        let c = match reason {
            StaleSession => &mut r.stale_session,
            UnknownEpoch => &mut r.unknown_epoch,
            KeyUnavailable => &mut r.key_unavailable,
            Replayed => &mut r.replayed,
            TooOld => &mut r.too_old,
            AuthFailed => &mut r.auth_failed,
            // Broken records of an authentic message; the header's refusals come
            // before a session is chosen and are never a session's.
            Truncated | BadVersion | UnknownType | UnknownPeer | Malformed => &mut r.malformed,
        };
        *c += 1;
    }
}

/// Sleeve state for one peer: both directions.
///
/// `Clone` exists so that the appliance can build a changed overlay aside and swap it in;
/// only one copy may ever seal (the other is dropped), or nonces would repeat.
#[derive(Clone)]
pub struct Session {
    local: NodeId,
    peer: NodeId,
    config: SessionConfig,
    tx_session: SessionId,
    tx: Option<TxKey>,
    rx_current: Option<RxKey>,
    rx_previous: Option<Previous>,
    /// When a message of the peer last authenticated.
    rx_last: Instant,
    stats: SessionStats,
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("tx_session", &self.tx_session)
            .field("tx_epoch", &self.tx_epoch())
            .field(
                "rx",
                &self.rx_current.as_ref().map(|k| (k.session, k.epoch)),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl Session {
    /// `tx_session` must never have been used by this node towards `peer` before
    /// (docs/sleeve.md "Sessions"); the sending key is derived at the first seal.
    pub fn new(
        local: NodeId,
        peer: NodeId,
        tx_session: SessionId,
        config: SessionConfig,
    ) -> Session {
        Session {
            local,
            peer,
            config,
            tx_session,
            tx: None,
            rx_current: None,
            rx_previous: None,
            rx_last: Instant::ZERO,
            stats: SessionStats::default(),
        }
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    pub(super) fn count_refused(&mut self, reason: super::OpenError) {
        self.stats.count_refused(reason);
    }

    pub fn tx_session(&self) -> SessionId {
        self.tx_session
    }

    /// The sending epoch, once a message was sealed.
    pub fn tx_epoch(&self) -> Option<Epoch> {
        self.tx.as_ref().map(|t| t.epoch)
    }

    /// When the sending epoch began.
    pub fn tx_epoch_started(&self) -> Option<Instant> {
        self.tx.as_ref().map(|t| t.started)
    }

    /// The peer's current session and epoch, once a message opened.
    pub fn rx_current(&self) -> Option<(SessionId, Epoch)> {
        self.rx_current.as_ref().map(|k| (k.session, k.epoch))
    }

    /// Start sending under a new session (epoch 0); `tx_session` must be fresh.
    pub fn restart_tx(&mut self, tx_session: SessionId) {
        self.tx_session = tx_session;
        self.tx = None;
    }

    fn key(
        &self,
        keys: &impl KeySource,
        direction: KeyDirection,
        session: SessionId,
        epoch: Epoch,
    ) -> Option<ChaCha20Poly1305> {
        let id = KeyId {
            peer: self.peer,
            direction,
            session,
            epoch,
        };
        keys.key(&id).map(|k| cipher(&k))
    }

    /// The sending key for the next message, starting a new epoch when one is due.
    fn tx_key(&mut self, keys: &impl KeySource, now: Instant) -> Result<&mut TxKey, SealError> {
        let epoch = match &self.tx {
            None => Some(Epoch(0)),
            Some(tx) => {
                let used_up = tx.next_counter >= self.config.rekey_after_packets();
                let aged = elapsed(tx.started, now) >= self.config.rekey_after_time;
                if used_up || aged {
                    match tx.epoch.0.checked_add(1) {
                        Some(next) => Some(Epoch(next)),
                        // Keep refusing until the caller restarts with a new session.
                        None if used_up => return Err(SealError::EpochsExhausted),
                        None => None,
                    }
                } else {
                    None
                }
            }
        };
        if let Some(epoch) = epoch {
            let cipher = self
                .key(keys, KeyDirection::Send, self.tx_session, epoch)
                .ok_or(SealError::KeyUnavailable)?;
            if self.tx.is_some() {
                self.stats.rekeys += 1;
            }
            self.tx = Some(TxKey {
                epoch,
                next_counter: 0,
                started: now,
                cipher,
            });
        }
        self.tx.as_mut().ok_or(SealError::KeyUnavailable)
    }

    /// Seal `frames` (in order) into as few messages as fit `max_datagram`. Each returned
    /// buffer is `headroom` zero bytes followed by one message. Frame checks happen
    /// before any counter is taken; a key refused at a rekey mid-call drops the whole
    /// call (the counters already taken are simply never used again).
    pub fn seal(
        &mut self,
        keys: &impl KeySource,
        frames: &[Frame<'_>],
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, SealError> {
        self.check_frames(frames.iter().map(|f| f.bytes.len()))?;
        let max_datagram = self.config.max_datagram();
        let headroom = self.config.headroom;
        let mut out = Vec::new();
        let mut rest = frames;
        while !rest.is_empty() {
            let take = pack(rest.iter().map(|f| f.bytes.len()), max_datagram);
            let (batch, next) = rest.split_at(take);
            rest = next;
            let len = MIN_MESSAGE_LEN + batch.iter().map(|f| f.record_len()).sum::<usize>();
            let mut buf = Vec::with_capacity(headroom + len);
            buf.resize(headroom + HEADER_LEN, 0);
            for f in batch {
                wire::emit_record(f, &mut buf);
            }
            buf.resize(headroom + len, 0);
            self.seal_message(keys, &mut buf[headroom..], now)?;
            out.push(buf);
        }
        Ok(out)
    }

    /// Refuses a call whose frames (their lengths) cannot all be sealed: an empty one,
    /// or one too big for a message alone.
    pub fn check_frames(&self, lens: impl Iterator<Item = usize>) -> Result<(), SealError> {
        let max_frame = self.config.max_frame_len();
        for len in lens {
            if len == 0 {
                return Err(SealError::EmptyFrame);
            }
            if len > max_frame {
                return Err(SealError::FrameTooBig);
            }
        }
        Ok(())
    }

    /// Seal one message where it lies: `message` is the clear header's room, the records
    /// (well formed, in the clear) and the tag's room, [`MIN_MESSAGE_LEN`] bytes beyond
    /// the records. The header is written, the records encrypted in place and the tag
    /// written after them; nothing is allocated or copied. Takes the next counter.
    pub fn seal_message(
        &mut self,
        keys: &impl KeySource,
        message: &mut [u8],
        now: Instant,
    ) -> Result<(), SealError> {
        if message.len() <= MIN_MESSAGE_LEN {
            return Err(SealError::EmptyFrame);
        }
        if message.len() > self.config.max_datagram() {
            return Err(SealError::FrameTooBig);
        }
        let (local, sender_session) = (self.local, self.tx_session);
        let tx = self.tx_key(keys, now)?;
        let counter = tx.next_counter;
        tx.next_counter += 1;
        let mut packet = Packet::new_unchecked(message);
        Repr {
            msg_type: MessageType::Data,
            sender: local,
            session: sender_session,
            epoch: tx.epoch,
            counter,
        }
        .emit(&mut packet);
        let (header, body, tag_out) = packet.split_mut();
        let tag = tx
            .cipher
            .encrypt_inout_detached(&nonce(counter), header, body.into())
            .map_err(|_| SealError::FrameTooBig)?;
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    fn expire_previous(&mut self, now: Instant) {
        if self.rx_previous.as_ref().is_some_and(|p| now >= p.until) {
            self.rx_previous = None;
        }
    }

    fn select(&self, repr: &Repr, now: Instant) -> Result<Slot, OpenError> {
        if let Some(cur) = &self.rx_current {
            if cur.session == repr.session {
                if cur.epoch == repr.epoch {
                    return Ok(Slot::Current);
                }
                if let Some(prev) = &self.rx_previous {
                    if prev.key.session == repr.session && prev.key.epoch == repr.epoch {
                        return Ok(Slot::Previous);
                    }
                }
                if repr.epoch > cur.epoch && repr.epoch.0 - cur.epoch.0 <= MAX_EPOCH_STEP {
                    return Ok(Slot::Fresh { new_session: false });
                }
                return Err(OpenError::UnknownEpoch);
            }
            // Session ids grow across the peer's boots (docs/sleeve.md "Sessions"): a
            // lower one is a recording of an older boot unless the current went silent.
            if repr.session < cur.session
                && elapsed(self.rx_last, now) < self.config.session_takeover_idle
            {
                return Err(OpenError::StaleSession);
            }
        }
        Ok(Slot::Fresh { new_session: true })
    }

    /// Authenticate and decrypt one message in place; on success the frames borrow
    /// `datagram`. On any error but `Malformed` (authentic, so its counter is spent) the
    /// session state is unchanged.
    pub fn open<'b>(
        &mut self,
        keys: &impl KeySource,
        datagram: &'b mut [u8],
        now: Instant,
    ) -> Result<Opened<'b>, OpenError> {
        let repr = Repr::parse(&Packet::new_checked(&*datagram)?)?;
        if repr.sender != self.peer {
            return Err(OpenError::UnknownPeer);
        }
        self.expire_previous(now);
        let slot = self.select(&repr, now)?;
        let mut fresh = None;
        let (cipher, window) = match slot {
            Slot::Current => self.rx_current.as_ref().map(|k| (&k.cipher, &k.window)),
            Slot::Previous => self
                .rx_previous
                .as_ref()
                .map(|p| (&p.key.cipher, &p.key.window)),
            Slot::Fresh { .. } => {
                let cipher = self
                    .key(keys, KeyDirection::Receive, repr.session, repr.epoch)
                    .ok_or(OpenError::KeyUnavailable)?;
                let new = fresh.insert(RxKey {
                    session: repr.session,
                    epoch: repr.epoch,
                    cipher,
                    window: ReplayWindow::new(),
                });
                Some((&new.cipher, &new.window))
            }
        }
        .ok_or(OpenError::UnknownEpoch)?;
        window.check(repr.counter)?;

        let (header, rest) = datagram.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        // The tag is verified before anything is decrypted; on failure `body` is untouched.
        cipher
            .decrypt_inout_detached(
                &nonce(repr.counter),
                header,
                (&mut *body).into(),
                &Tag::from(tag_bytes),
            )
            .map_err(|_| OpenError::AuthFailed)?;

        // Authentic from here on: record the counter and install a fresh key.
        match slot {
            Slot::Current => {
                if let Some(k) = self.rx_current.as_mut() {
                    k.window.accept(repr.counter)?;
                }
            }
            Slot::Previous => {
                if let Some(p) = self.rx_previous.as_mut() {
                    p.key.window.accept(repr.counter)?;
                }
            }
            Slot::Fresh { new_session } => {
                let mut key = fresh.ok_or(OpenError::KeyUnavailable)?;
                key.window.accept(repr.counter)?;
                let old = self.rx_current.replace(key);
                if new_session {
                    self.rx_previous = None;
                    self.stats.rx_sessions_adopted += 1;
                } else {
                    self.rx_previous = old.map(|key| Previous {
                        key,
                        until: later(now, self.config.old_key_grace),
                    });
                    self.stats.rx_epochs_installed += 1;
                }
            }
        }
        self.rx_last = now;
        let body: &'b [u8] = body;
        let frames = Records::new_checked(body)?;
        Ok(Opened {
            peer: repr.sender,
            session: repr.session,
            epoch: repr.epoch,
            counter: repr.counter,
            frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::Vni;
    use crate::stage::sleeve::keys::{GridSecret, PskKeySource};
    use alloc::vec;

    fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }

    // docs/sleeve.md "Test vectors", made with Python's `cryptography`.
    const SPEC_MESSAGE: &str = "01010000000000010123456789abcdef00000007000000000000002a
        8b7e9342938049c01bce8d0e471e561441224c4543d55999d7881301c65fa327
        49746e49529d1f85fa21ff72fe86b5500799bd890bc2637e6deb05e950d9146c";
    const SPEC_FRAME: &str = "ffffffffffff02420a5100020806000108000604000102420a510002
        0a5100020000000000000a510001";
    const SPEC_SESSION: SessionId = SessionId(0x0123_4567_89ab_cdef);

    fn keys(local: u16) -> PskKeySource {
        let secret: Vec<u8> = (0u8..32).collect();
        PskKeySource::new(
            NodeId::new(local).unwrap(),
            GridSecret::new(&secret).unwrap(),
        )
    }

    #[test]
    fn spec_vector_seal() {
        let keys = keys(1);
        let mut s = Session::new(
            NodeId::new(1).unwrap(),
            NodeId::new(2).unwrap(),
            SPEC_SESSION,
            SessionConfig::default(),
        );
        // Put the sender at epoch 7, counter 42, as in the vector.
        let key = keys
            .key(&KeyId {
                peer: NodeId::new(2).unwrap(),
                direction: KeyDirection::Send,
                session: SPEC_SESSION,
                epoch: Epoch(7),
            })
            .unwrap();
        s.tx = Some(TxKey {
            epoch: Epoch(7),
            next_counter: 42,
            started: Instant::ZERO,
            cipher: cipher(&key),
        });
        let frame = unhex(SPEC_FRAME);
        let out = s
            .seal(
                &keys,
                &[Frame {
                    vni: Vni::new(100).unwrap(),
                    bytes: &frame,
                }],
                Instant::ZERO,
            )
            .unwrap();
        assert_eq!(out, vec![unhex(SPEC_MESSAGE)]);
        assert_eq!(s.tx.as_ref().map(|t| t.next_counter), Some(43));
    }

    #[test]
    fn spec_vector_open() {
        let keys = keys(2);
        let mut s = Session::new(
            NodeId::new(2).unwrap(),
            NodeId::new(1).unwrap(),
            SessionId(5),
            SessionConfig::default(),
        );
        let mut msg = unhex(SPEC_MESSAGE);
        let opened = s.open(&keys, &mut msg, Instant::ZERO).unwrap();
        assert_eq!(
            (opened.session, opened.epoch, opened.counter),
            (SPEC_SESSION, Epoch(7), 42)
        );
        let frames: Vec<_> = opened.frames.iter().collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].vni.get(), 100);
        assert_eq!(frames[0].bytes, &unhex(SPEC_FRAME)[..]);
    }

    /// An authentic message whose records are broken is `Malformed`, and its counter is
    /// spent (a second copy is a replay).
    #[test]
    fn authentic_but_malformed_records() {
        let tx_keys = keys(1);
        let rx_keys = keys(2);
        let key = tx_keys
            .key(&KeyId {
                peer: NodeId::new(2).unwrap(),
                direction: KeyDirection::Send,
                session: SessionId(9),
                epoch: Epoch(0),
            })
            .unwrap();
        // One record claiming 10 bytes but carrying 3.
        let plaintext = [0u8, 0, 0, 1, 0, 10, 0xaa, 0xbb, 0xcc];
        let mut msg = vec![0u8; MIN_MESSAGE_LEN + plaintext.len()];
        let mut packet = Packet::new_unchecked(&mut msg[..]);
        Repr {
            msg_type: MessageType::Data,
            sender: NodeId::new(1).unwrap(),
            session: SessionId(9),
            epoch: Epoch(0),
            counter: 0,
        }
        .emit(&mut packet);
        let (header, body, tag_out) = packet.split_mut();
        body.copy_from_slice(&plaintext);
        let tag = cipher(&key)
            .encrypt_inout_detached(&nonce(0), header, body.into())
            .unwrap();
        tag_out.copy_from_slice(&tag);

        let mut rx = Session::new(
            NodeId::new(2).unwrap(),
            NodeId::new(1).unwrap(),
            SessionId(1),
            SessionConfig::default(),
        );
        let mut copy = msg.clone();
        assert_eq!(
            rx.open(&rx_keys, &mut copy, Instant::ZERO).err(),
            Some(OpenError::Malformed)
        );
        let mut copy = msg.clone();
        assert_eq!(
            rx.open(&rx_keys, &mut copy, Instant::ZERO).err(),
            Some(OpenError::Replayed)
        );
    }

    #[test]
    fn epochs_exhausted_is_an_error_not_a_wrap() {
        let keys = keys(1);
        let config = SessionConfig {
            rekey_after_packets: 1,
            ..SessionConfig::default()
        };
        let mut s = Session::new(
            NodeId::new(1).unwrap(),
            NodeId::new(2).unwrap(),
            SessionId(3),
            config,
        );
        let frame = [1u8; 20];
        let frames = [Frame {
            vni: Vni::new(1).unwrap(),
            bytes: &frame,
        }];
        s.seal(&keys, &frames, Instant::ZERO).unwrap();
        if let Some(tx) = s.tx.as_mut() {
            tx.epoch = Epoch(u32::MAX);
        }
        assert_eq!(
            s.seal(&keys, &frames, Instant::ZERO),
            Err(SealError::EpochsExhausted)
        );
        assert_eq!(
            s.seal(&keys, &frames, Instant::ZERO),
            Err(SealError::EpochsExhausted)
        );
        s.restart_tx(SessionId(4));
        let out = s.seal(&keys, &frames, Instant::ZERO).unwrap();
        let h = Repr::parse(&Packet::new_checked(&out[0][..]).unwrap()).unwrap();
        assert_eq!((h.session, h.epoch, h.counter), (SessionId(4), Epoch(0), 0));
    }
}
