//! DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): each message is preceded by its
//! length as two bytes. Splits a connection's byte stream into messages and frames
//! replies; it never interprets the messages themselves.

use alloc::vec::Vec;

/// The largest message a 2-byte length can announce.
pub const MAX_MESSAGE: usize = u16::MAX as usize;

/// Reassembles messages from one TCP connection's stream.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    buffer: Vec<u8>,
}

/// The stream holds more unread bytes than one full message and its prefix; the
/// caller is not draining messages, so the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Appends received bytes. Call `next_message` until `None` after each push.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if self.buffer.len() + bytes.len() > 2 * (MAX_MESSAGE + 2) {
            return Err(Overflow);
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete message, without its length prefix.
    pub fn next_message(&mut self) -> Option<Vec<u8>> {
        let prefix = self.buffer.get(..2)?;
        let length = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        let message = self.buffer.get(2..2 + length)?.to_vec();
        self.buffer.drain(..2 + length);
        Some(message)
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// `message` with its 2-byte length prefix; `None` if it is longer than 65535 bytes.
pub fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let length = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_at_any_byte_boundary() {
        let messages: [&[u8]; 3] = [b"first message", b"", b"third"];
        let mut stream = Vec::new();
        for message in messages {
            stream.extend(frame(message).unwrap());
        }
        for chunk in 1..=stream.len() {
            let mut decoder = StreamDecoder::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece).unwrap();
                while let Some(message) = decoder.next_message() {
                    out.push(message);
                }
            }
            assert_eq!(out, messages.map(<[u8]>::to_vec).to_vec(), "chunk {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn frame_prefixes_big_endian_length_and_refuses_oversize() {
        assert_eq!(frame(&[0xaa; 258]).unwrap()[..3], [0x01, 0x02, 0xaa]);
        assert!(frame(&alloc::vec![0; MAX_MESSAGE]).is_some());
        assert!(frame(&alloc::vec![0; MAX_MESSAGE + 1]).is_none());
    }

    #[test]
    fn undrained_stream_overflows_instead_of_growing() {
        let mut decoder = StreamDecoder::new();
        // Announce a full-size message and never complete it, then keep pushing.
        decoder.push(&[0xff, 0xff]).unwrap();
        let chunk = alloc::vec![0u8; 4096];
        let mut pushed = 2;
        while decoder.push(&chunk).is_ok() {
            pushed += chunk.len();
            assert!(pushed <= 2 * (MAX_MESSAGE + 2));
        }
        assert_eq!(decoder.buffered(), pushed);
    }
}
