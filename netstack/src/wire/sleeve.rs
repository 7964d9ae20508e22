//! Sleeve message and record wire formats (docs/sleeve.md, "Message layout", "Records").
//!
//! Owns the byte layout only: a zero-copy `Packet<T>` view over a message with checked
//! lengths, its parsed `Repr`, and the records inside the (decrypted) payload. It never
//! does cryptography and never decides whether a message is acceptable beyond its shape.

use crate::base::{NodeId, Vni};

/// The only version this implementation speaks.
pub const VERSION: u8 = 1;
/// Clear header length; these bytes are the AEAD associated data.
pub const HEADER_LEN: usize = field::COUNTER.end;
/// Poly1305 tag length, at the end of every message.
pub const TAG_LEN: usize = 16;
/// Per-record header: reserved byte, 24-bit VNI, 16-bit frame length.
pub const RECORD_HEADER_LEN: usize = 6;
/// Smallest well-formed message: header and tag around an empty ciphertext.
pub const MIN_MESSAGE_LEN: usize = HEADER_LEN + TAG_LEN;

/// A sender's key session towards one receiver; the HKDF salt. Never reused by a sender,
/// and growing across its boots (docs/sleeve.md "Sessions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    /// The first session of a boot: wall-clock seconds at boot (Unix time, from the RTC
    /// or the host agent) in the high half, 32 bits of the seeded random source below.
    pub const fn first_of_boot(unix_secs: u32, random: u32) -> SessionId {
        SessionId(((unix_secs as u64) << 32) | random as u64)
    }

    /// The session after this one; `None` when the id space is used up.
    pub const fn next(self) -> Option<SessionId> {
        match self.0.checked_add(1) {
            Some(v) => Some(SessionId(v)),
            None => None,
        }
    }
}

/// Key epoch within a session; advanced by the sender on rekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u32);

/// Why bytes are not a well-formed sleeve message or record sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than header + tag.
    Truncated,
    /// Version field is not [`VERSION`].
    BadVersion(u8),
    /// Type field is not a known [`MessageType`].
    UnknownType(u8),
    /// Sender field names no node (0, or above `NodeId::MAX`).
    BadSender(u32),
    /// Records do not tile the payload (zero length, reserved bits, overrun, none).
    Malformed,
}

/// The message type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Records of L2 frames.
    Data,
}

impl MessageType {
    pub const fn to_u8(self) -> u8 {
        match self {
            MessageType::Data => 1,
        }
    }

    pub const fn from_u8(value: u8) -> Option<MessageType> {
        match value {
            1 => Some(MessageType::Data),
            _ => None,
        }
    }
}

mod field {
    use core::ops::Range;

    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const SENDER: Range<usize> = 4..8;
    pub const SESSION: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..20;
    pub const COUNTER: Range<usize> = 20..28;
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    u32::from_be_bytes(b)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

/// A read/write view of a sleeve message: header, ciphertext, tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checking; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap and check the length once, so that no accessor can go out of bounds.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < MIN_MESSAGE_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn reserved(&self) -> u16 {
        let d = &self.buffer.as_ref()[field::RESERVED];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// The sender field: a node number, 32 bits on the wire.
    pub fn sender(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::SENDER])
    }

    pub fn session(&self) -> SessionId {
        SessionId(be_u64(&self.buffer.as_ref()[field::SESSION]))
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(be_u32(&self.buffer.as_ref()[field::EPOCH]))
    }

    pub fn counter(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::COUNTER])
    }

    /// The clear header: the AEAD associated data.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// The encrypted records, between header and tag.
    pub fn ciphertext(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[HEADER_LEN..data.len() - TAG_LEN]
    }

    pub fn tag(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[data.len() - TAG_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    pub fn set_reserved(&mut self, value: u16) {
        self.buffer.as_mut()[field::RESERVED].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_sender(&mut self, value: u32) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_session(&mut self, value: SessionId) {
        self.buffer.as_mut()[field::SESSION].copy_from_slice(&value.0.to_be_bytes());
    }

    pub fn set_epoch(&mut self, value: Epoch) {
        self.buffer.as_mut()[field::EPOCH].copy_from_slice(&value.0.to_be_bytes());
    }

    pub fn set_counter(&mut self, value: u64) {
        self.buffer.as_mut()[field::COUNTER].copy_from_slice(&value.to_be_bytes());
    }

    /// Split into (header, ciphertext, tag) so the payload can be sealed or opened in
    /// place while the header is read as associated data.
    pub fn split_mut(&mut self) -> (&[u8], &mut [u8], &mut [u8]) {
        let data = self.buffer.as_mut();
        let tag_at = data.len() - TAG_LEN;
        let (header, rest) = data.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(tag_at - HEADER_LEN);
        (header, body, tag)
    }
}

/// The meaning of a sleeve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub msg_type: MessageType,
    pub sender: NodeId,
    pub session: SessionId,
    pub epoch: Epoch,
    pub counter: u64,
}

impl Repr {
    /// Parse a checked packet. Reserved bits are not interpreted (they are authenticated).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if packet.version() != VERSION {
            return Err(Error::BadVersion(packet.version()));
        }
        let msg_type =
            MessageType::from_u8(packet.msg_type()).ok_or(Error::UnknownType(packet.msg_type()))?;
        let sender =
            NodeId::try_from(packet.sender()).map_err(|()| Error::BadSender(packet.sender()))?;
        Ok(Repr {
            msg_type,
            sender,
            session: packet.session(),
            epoch: packet.epoch(),
            counter: packet.counter(),
        })
    }

    /// Write the header; the buffer must hold at least [`MIN_MESSAGE_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version(VERSION);
        packet.set_msg_type(self.msg_type.to_u8());
        packet.set_reserved(0);
        packet.set_sender(u32::from(self.sender));
        packet.set_session(self.session);
        packet.set_epoch(self.epoch);
        packet.set_counter(self.counter);
    }
}

/// One L2 frame of one overlay network, as carried in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub vni: Vni,
    pub bytes: &'a [u8],
}

impl Frame<'_> {
    /// Bytes this frame takes in a payload, record header included.
    pub const fn record_len(&self) -> usize {
        RECORD_HEADER_LEN + self.bytes.len()
    }
}

/// Largest frame a record can describe (16-bit length).
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// The header of a record carrying `len` bytes of network `vni`. The caller ensures
/// `1 <= len <= MAX_FRAME_LEN`.
pub fn record_header(vni: Vni, len: usize) -> [u8; RECORD_HEADER_LEN] {
    let vni = vni.to_be_bytes();
    let len = (len as u16).to_be_bytes();
    [0, vni[0], vni[1], vni[2], len[0], len[1]]
}

/// Append one record to `out`. The caller ensures `1 <= frame.bytes.len() <= MAX_FRAME_LEN`.
pub fn emit_record(frame: &Frame<'_>, out: &mut alloc::vec::Vec<u8>) {
    out.extend_from_slice(&record_header(frame.vni, frame.bytes.len()));
    out.extend_from_slice(frame.bytes);
}

/// Parse the record at the start of `data`: the frame and the rest.
fn parse_record(data: &[u8]) -> Result<(Frame<'_>, &[u8]), Error> {
    let (head, rest) = data
        .split_at_checked(RECORD_HEADER_LEN)
        .ok_or(Error::Malformed)?;
    if head[0] != 0 {
        return Err(Error::Malformed);
    }
    let vni = Vni::from_be_bytes([head[1], head[2], head[3]]);
    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    if len == 0 {
        return Err(Error::Malformed);
    }
    let (bytes, rest) = rest.split_at_checked(len).ok_or(Error::Malformed)?;
    Ok((Frame { vni, bytes }, rest))
}

/// A validated sequence of records (a decrypted payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Records<'a> {
    data: &'a [u8],
    count: usize,
}

impl<'a> Records<'a> {
    /// Check that `data` is one or more well-formed records, back to back.
    pub fn new_checked(data: &'a [u8]) -> Result<Records<'a>, Error> {
        let mut rest = data;
        let mut count = 0;
        while !rest.is_empty() {
            rest = parse_record(rest)?.1;
            count += 1;
        }
        if count == 0 {
            return Err(Error::Malformed);
        }
        Ok(Records { data, count })
    }

    pub const fn len(&self) -> usize {
        self.count
    }

    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter { rest: self.data }
    }

    /// When there is exactly one record: its network and where its frame lies in the
    /// records' bytes (for a frame delivered where it was decrypted).
    pub fn single(&self) -> Option<(Vni, core::ops::Range<usize>)> {
        if self.count != 1 {
            return None;
        }
        let (frame, _) = parse_record(self.data).ok()?;
        Some((
            frame.vni,
            RECORD_HEADER_LEN..RECORD_HEADER_LEN + frame.bytes.len(),
        ))
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = Frame<'a>;
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> RecordIter<'a> {
        self.iter()
    }
}

/// Iterator over the frames of validated [`Records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        // Validated by `Records::new_checked`; an error here only ends the iteration.
        let (frame, rest) = parse_record(self.rest).ok()?;
        self.rest = rest;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    // The clear header of the spec's test vector (docs/sleeve.md): sender 1,
    // session 0x0123456789abcdef, epoch 7, counter 42.
    static HEADER: [u8; 28] = [
        0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a,
    ];

    fn repr() -> Repr {
        Repr {
            msg_type: MessageType::Data,
            sender: NodeId::new(1).unwrap(),
            session: SessionId(0x0123_4567_89ab_cdef),
            epoch: Epoch(7),
            counter: 42,
        }
    }

    fn message(body: &[u8]) -> Vec<u8> {
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&[0xee; TAG_LEN]);
        bytes
    }

    #[test]
    fn parse_real_header() {
        let bytes = message(&[1, 2, 3]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(repr()));
        assert_eq!(packet.header(), &HEADER[..]);
        assert_eq!(packet.ciphertext(), &[1, 2, 3]);
        assert_eq!(packet.tag(), &[0xee; TAG_LEN]);
        assert_eq!(packet.reserved(), 0);
    }

    #[test]
    fn emit_real_header() {
        let mut bytes = [0xffu8; MIN_MESSAGE_LEN];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        assert_eq!(&bytes[..HEADER_LEN], &HEADER[..]);
    }

    #[test]
    fn round_trip_edge_values() {
        for (sender, session, epoch, counter) in [
            (1, 0, 0, 0),
            (NodeId::MAX, u64::MAX, u32::MAX, u64::MAX),
            (127, 1 << 63, 1 << 31, (1 << 60) - 1),
        ] {
            let r = Repr {
                msg_type: MessageType::Data,
                sender: NodeId::new(sender).unwrap(),
                session: SessionId(session),
                epoch: Epoch(epoch),
                counter,
            };
            let mut bytes = [0u8; MIN_MESSAGE_LEN + 5];
            r.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            assert_eq!(
                Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
                Ok(r)
            );
        }
    }

    #[test]
    fn the_sender_field_is_32_bits_and_names_a_node() {
        for raw in [0, u32::from(NodeId::MAX) + 1, 0x0001_0001, u32::MAX] {
            let mut bytes = message(&[]);
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            packet.set_sender(raw);
            assert_eq!(packet.sender(), raw);
            assert_eq!(Repr::parse(&packet), Err(Error::BadSender(raw)));
        }
    }

    #[test]
    fn every_short_length_is_truncated() {
        let bytes = message(&[]);
        assert_eq!(bytes.len(), MIN_MESSAGE_LEN);
        assert!(Packet::new_checked(&bytes[..]).is_ok());
        for len in 0..MIN_MESSAGE_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..len]).err(),
                Some(Error::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn version_and_type_are_checked() {
        let mut bytes = message(&[]);
        bytes[0] = 2;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(Error::BadVersion(2)));
        bytes[0] = 1;
        bytes[1] = 0;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(Error::UnknownType(0)));
    }

    #[test]
    fn reserved_bits_are_not_interpreted() {
        let mut bytes = message(&[]);
        bytes[2] = 0x80;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p), Ok(repr()));
        assert_eq!(p.reserved(), 0x8000);
    }

    #[test]
    fn records_round_trip() {
        let f1 = [0xaau8; 60];
        let f2 = [0xbbu8; 1];
        let frames = [
            Frame {
                vni: Vni::new(100).unwrap(),
                bytes: &f1,
            },
            Frame {
                vni: Vni::new(Vni::MAX).unwrap(),
                bytes: &f2,
            },
        ];
        let mut out = Vec::new();
        for f in &frames {
            emit_record(f, &mut out);
        }
        assert_eq!(&out[..6], &[0, 0, 0, 100, 0, 60]);
        assert_eq!(&out[66..72], &[0, 0xff, 0xff, 0xff, 0, 1]);
        let records = Records::new_checked(&out).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records.iter().collect::<Vec<_>>(), frames);
    }

    #[test]
    fn one_record_says_where_its_frame_lies() {
        let f = [0xaau8; 60];
        let frame = Frame {
            vni: Vni::new(100).unwrap(),
            bytes: &f,
        };
        let mut out = Vec::new();
        emit_record(&frame, &mut out);
        let records = Records::new_checked(&out).unwrap();
        let (vni, at) = records.single().unwrap();
        assert_eq!((vni, &out[at]), (frame.vni, &f[..]));
        emit_record(&frame, &mut out);
        assert_eq!(Records::new_checked(&out).unwrap().single(), None);
    }

    #[test]
    fn malformed_records() {
        let cases: [&[u8]; 6] = [
            &[],                          // no record
            &[0, 0, 0, 1, 0],             // short record header
            &[0, 0, 0, 1, 0, 0],          // zero length
            &[1, 0, 0, 1, 0, 1, 9],       // reserved byte set
            &[0, 0, 0, 1, 0, 2, 9],       // frame runs past the end
            &[0, 0, 0, 1, 0, 1, 9, 0, 0], // trailing garbage
        ];
        for case in cases {
            assert_eq!(
                Records::new_checked(case),
                Err(Error::Malformed),
                "{case:?}"
            );
        }
    }
}
