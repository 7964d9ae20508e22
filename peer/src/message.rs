//! The peer channel's messages after the handshake (docs/peer-tls.md, "Messages"): the
//! application data inside the TLS connection.
//!
//! ```text
//!  0               1               2               3
//! +---------------+---------------+-------------------------------+
//! |  version = 1  |     type      |         body length (16)      |
//! +---------------+---------------+-------------------------------+
//! |                     body (length bytes) ...                   |
//! ```
//!
//! Owns the layout (a zero-copy [`Packet`] view and the parsed [`Message`]) and the
//! reassembly of messages from the stream ([`Reader`]). It never buffers more than one
//! message's worth of bytes, never panics on input, and refuses anything not in the
//! layout before reading on.

use alloc::vec::Vec;

/// Version of the message layout.
pub const VERSION: u8 = 1;
/// Header bytes before the body.
pub const HEADER_LEN: usize = 4;
/// The largest body any message has; a longer announced body is refused at once.
pub const MAX_BODY: usize = 8;

mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
}

const TYPE_KEYS: u8 = 1;
const TYPE_KEYS_ACK: u8 = 2;
const TYPE_PING: u8 = 3;
const TYPE_PONG: u8 = 4;

/// Why bytes from the peer are not a message. Each closes the channel and is counted
/// (`bad_message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageError {
    /// Fewer bytes than the header, or than the header says.
    Truncated,
    /// Version other than 1.
    BadVersion(u8),
    /// A type this version does not define.
    UnknownType(u8),
    /// A body length other than the type's.
    BadLength { msg_type: u8, len: u16 },
}

impl core::fmt::Display for MessageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MessageError::Truncated => f.write_str("truncated message"),
            MessageError::BadVersion(v) => write!(f, "message version {v}, expected 1"),
            MessageError::UnknownType(t) => write!(f, "unknown message type {t}"),
            MessageError::BadLength { msg_type, len } => {
                write!(f, "message type {msg_type} with a {len}-byte body")
            }
        }
    }
}

impl core::error::Error for MessageError {}

/// A zero-copy view of one message.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view whose accessors stay in bounds: the header and the body it announces are
    /// there (trailing bytes are the next message's).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, MessageError> {
        let p = Packet::new_unchecked(buffer);
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(p.body_len()) {
            return Err(MessageError::Truncated);
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn body_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Header plus body.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.body_len())
    }

    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_header(&mut self, msg_type: u8, body_len: u16) {
        let b = self.buffer.as_mut();
        b[field::VERSION] = VERSION;
        b[field::TYPE] = msg_type;
        b[field::LENGTH].copy_from_slice(&body_len.to_be_bytes());
    }

    fn body_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// One message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// "I seal sleeve traffic to you under `session`, keyed from this connection."
    Keys {
        session: u64,
    },
    /// "I hold the receiving keys of your `session`: switch to it."
    KeysAck {
        session: u64,
    },
    /// Liveness probe; answered with `Pong` carrying the same token.
    Ping {
        token: u64,
    },
    Pong {
        token: u64,
    },
}

impl Message {
    fn type_and_value(&self) -> (u8, u64) {
        match *self {
            Message::Keys { session } => (TYPE_KEYS, session),
            Message::KeysAck { session } => (TYPE_KEYS_ACK, session),
            Message::Ping { token } => (TYPE_PING, token),
            Message::Pong { token } => (TYPE_PONG, token),
        }
    }

    /// The message of a checked view.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Message, MessageError> {
        if packet.version() != VERSION {
            return Err(MessageError::BadVersion(packet.version()));
        }
        let msg_type = packet.msg_type();
        if !(TYPE_KEYS..=TYPE_PONG).contains(&msg_type) {
            return Err(MessageError::UnknownType(msg_type));
        }
        let value: [u8; 8] = packet
            .body()
            .try_into()
            .map_err(|_| MessageError::BadLength {
                msg_type,
                len: packet.body_len(),
            })?;
        let value = u64::from_be_bytes(value);
        Ok(match msg_type {
            TYPE_KEYS => Message::Keys { session: value },
            TYPE_KEYS_ACK => Message::KeysAck { session: value },
            TYPE_PING => Message::Ping { token: value },
            _ => Message::Pong { token: value },
        })
    }

    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 8
    }

    /// Write the message into `packet` (at least [`Message::buffer_len`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (msg_type, value) = self.type_and_value();
        packet.set_header(msg_type, 8);
        packet.body_mut().copy_from_slice(&value.to_be_bytes());
    }

    /// Append the message's bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.buffer_len(), 0);
        self.emit(&mut Packet::new_unchecked(&mut out[start..]));
    }
}

/// Reassembles messages from the decrypted stream, whatever the record boundaries.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Take `bytes` from the stream and return the messages they complete, in order. An
    /// error ends the stream: nothing after it is read.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Message>, MessageError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            // Never hold more than the longest message: complete the header, check it,
            // then complete the body.
            let want = if self.buf.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                Packet::new_unchecked(&self.buf[..]).total_len()
            };
            let take = (want - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == HEADER_LEN {
                check_header(&Packet::new_unchecked(&self.buf[..]))?;
            }
            if self.buf.len() >= HEADER_LEN {
                if let Ok(packet) = Packet::new_checked(&self.buf[..]) {
                    out.push(Message::parse(&packet)?);
                    self.buf.clear();
                }
            }
        }
        Ok(out)
    }

    /// Bytes of an unfinished message held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Refuse a header before waiting for its body.
fn check_header<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<(), MessageError> {
    if packet.version() != VERSION {
        return Err(MessageError::BadVersion(packet.version()));
    }
    if !(TYPE_KEYS..=TYPE_PONG).contains(&packet.msg_type()) {
        return Err(MessageError::UnknownType(packet.msg_type()));
    }
    if usize::from(packet.body_len()) > MAX_BODY || packet.body_len() != 8 {
        return Err(MessageError::BadLength {
            msg_type: packet.msg_type(),
            len: packet.body_len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [u8; 12] = [1, 1, 0, 8, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

    #[test]
    fn parse_emit_round_trip_with_real_bytes() {
        let p = Packet::new_checked(&KEYS[..]).unwrap();
        let m = Message::parse(&p).unwrap();
        assert_eq!(
            m,
            Message::Keys {
                session: 0x0123_4567_89ab_cdef
            }
        );
        let mut out = Vec::new();
        m.write_to(&mut out);
        assert_eq!(out, KEYS);
        for m in [
            Message::KeysAck { session: 7 },
            Message::Ping { token: u64::MAX },
            Message::Pong { token: 0 },
        ] {
            let mut b = Vec::new();
            m.write_to(&mut b);
            assert_eq!(Message::parse(&Packet::new_checked(&b[..]).unwrap()), Ok(m));
        }
    }

    #[test]
    fn refusals_name_the_reason() {
        assert_eq!(
            Packet::new_checked(&KEYS[..11]).err(),
            Some(MessageError::Truncated)
        );
        assert_eq!(
            Packet::new_checked(&KEYS[..3]).err(),
            Some(MessageError::Truncated)
        );
        let mut b = KEYS;
        b[0] = 2;
        assert_eq!(
            Message::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(MessageError::BadVersion(2))
        );
        let mut b = KEYS;
        b[1] = 9;
        assert_eq!(
            Message::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(MessageError::UnknownType(9))
        );
        let b = [1, 3, 0, 2, 0, 0];
        assert_eq!(
            Message::parse(&Packet::new_checked(&b[..]).unwrap()),
            Err(MessageError::BadLength {
                msg_type: 3,
                len: 2
            })
        );
    }

    #[test]
    fn reader_reassembles_across_any_split() {
        let mut stream = Vec::new();
        Message::Keys { session: 5 }.write_to(&mut stream);
        Message::Ping { token: 6 }.write_to(&mut stream);
        Message::KeysAck { session: 7 }.write_to(&mut stream);
        for chunk in 1..=stream.len() {
            let mut r = Reader::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                got.extend(r.push(piece).unwrap());
            }
            assert_eq!(
                got,
                [
                    Message::Keys { session: 5 },
                    Message::Ping { token: 6 },
                    Message::KeysAck { session: 7 }
                ]
            );
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn reader_refuses_a_long_body_without_buffering_it() {
        let mut r = Reader::new();
        assert_eq!(
            r.push(&[1, 1, 0xff, 0xff]),
            Err(MessageError::BadLength {
                msg_type: 1,
                len: 0xffff
            })
        );
        let mut r = Reader::new();
        assert_eq!(r.push(&[1, 0x7f]).unwrap(), []);
        assert_eq!(r.push(&[0, 8]), Err(MessageError::UnknownType(0x7f)));
        assert!(r.pending() <= HEADER_LEN);
    }
}
