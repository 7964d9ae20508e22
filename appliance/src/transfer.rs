//! A configuration document sent in parts, for documents longer than one request line:
//! `apply-begin` announces its size, `apply-part`s carry its text in order, and
//! `apply-commit` hands the whole text over to be parsed and applied as one `apply`.
//!
//! It owns the text of at most one unfinished document and the rules of its arrival
//! (order, size). It never holds more than the size announced at `apply-begin`, which
//! its caller checked against the heap first, and the whole size is reserved at once so
//! the text never moves or doubles while it grows. It never parses or applies anything:
//! an unfinished document changes nothing, and dropping one (a disconnect, a second
//! `apply-begin`, `apply-abort`) leaves no trace but a counter.

use alloc::string::String;
use core::fmt;

/// Why a transfer step was refused. A refused step changes nothing, except that
/// `commit` ends the transfer whatever its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// A part or commit with no `apply-begin` before it (on this connection).
    NotBegun,
    /// A part that does not start where the received text ends.
    WrongOffset { expected: u64, got: u64 },
    /// A part that would take the text past the size announced.
    PastEnd { end: u64, announced: u64 },
    /// A commit before the announced size arrived; the text is dropped.
    Incomplete { received: u64, announced: u64 },
    /// The heap would not give the announced size in one piece.
    NoRoom { bytes: u64 },
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotBegun => {
                f.write_str("no document transfer on this connection: send apply-begin first")
            }
            TransferError::WrongOffset { expected, got } => write!(
                f,
                "the part starts at byte {got}, but {expected} bytes have arrived; \
                 parts go in order, each starting where the last one ended"
            ),
            TransferError::PastEnd { end, announced } => write!(
                f,
                "the part ends at byte {end}, past the {announced} bytes announced by apply-begin"
            ),
            TransferError::Incomplete {
                received,
                announced,
            } => write!(
                f,
                "{received} of the {announced} bytes announced have arrived; the unfinished \
                 document is discarded and nothing changed"
            ),
            TransferError::NoRoom { bytes } => write!(
                f,
                "the heap cannot hold a document of {bytes} bytes in one piece"
            ),
        }
    }
}

impl core::error::Error for TransferError {}

/// The unfinished document of one connection, if any.
#[derive(Debug, Default)]
pub struct Transfer {
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    announced: u64,
    text: String,
}

impl Transfer {
    pub fn new() -> Transfer {
        Transfer::default()
    }

    /// Starts a document of `bytes` bytes (UTF-8 text), reserving all of it now; an
    /// unfinished one is dropped first. Returns the bytes of the dropped one, if any.
    pub fn begin(&mut self, bytes: u64) -> Result<Option<u64>, TransferError> {
        let dropped = self.abort();
        let size = usize::try_from(bytes).map_err(|_| TransferError::NoRoom { bytes })?;
        let mut text = String::new();
        text.try_reserve_exact(size)
            .map_err(|_| TransferError::NoRoom { bytes })?;
        self.open = Some(Open {
            announced: bytes,
            text,
        });
        Ok(dropped)
    }

    /// Appends the part that starts at byte `offset`; returns the bytes received so far.
    pub fn part(&mut self, offset: u64, text: &str) -> Result<u64, TransferError> {
        let open = self.open.as_mut().ok_or(TransferError::NotBegun)?;
        let received = open.text.len() as u64;
        if offset != received {
            return Err(TransferError::WrongOffset {
                expected: received,
                got: offset,
            });
        }
        let end = received.saturating_add(text.len() as u64);
        if end > open.announced {
            return Err(TransferError::PastEnd {
                end,
                announced: open.announced,
            });
        }
        // Within the reservation: no reallocation.
        open.text.push_str(text);
        Ok(end)
    }

    /// Ends the transfer: the whole text when every announced byte arrived.
    pub fn commit(&mut self) -> Result<String, TransferError> {
        let open = self.open.take().ok_or(TransferError::NotBegun)?;
        let received = open.text.len() as u64;
        if received != open.announced {
            return Err(TransferError::Incomplete {
                received,
                announced: open.announced,
            });
        }
        Ok(open.text)
    }

    /// Drops the unfinished document; returns the bytes it had received, if there was one.
    pub fn abort(&mut self) -> Option<u64> {
        self.open.take().map(|o| o.text.len() as u64)
    }

    /// Whether a document is under way.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The heap bytes the unfinished document holds (its whole announced size).
    pub fn held_bytes(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.text.capacity() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn parts_in_order_give_the_text_back_whole() {
        let mut t = Transfer::new();
        assert_eq!(t.begin(11), Ok(None));
        assert!(t.is_open());
        assert_eq!(t.held_bytes(), 11);
        assert_eq!(t.part(0, "hello"), Ok(5));
        assert_eq!(t.part(5, ""), Ok(5));
        assert_eq!(t.part(5, " wörl"), Ok(11));
        assert_eq!(t.commit().as_deref(), Ok("hello wörl"));
        assert!(!t.is_open());
        assert_eq!(t.held_bytes(), 0);
    }

    #[test]
    fn steps_out_of_order_are_refused_and_change_nothing() {
        let mut t = Transfer::new();
        assert_eq!(t.part(0, "x"), Err(TransferError::NotBegun));
        assert_eq!(t.commit(), Err(TransferError::NotBegun));
        assert_eq!(t.abort(), None);
        t.begin(6).unwrap();
        assert_eq!(
            t.part(1, "abc"),
            Err(TransferError::WrongOffset {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(t.part(0, "abc"), Ok(3));
        // A part sent twice (a retry that was not needed) is refused; the text is intact.
        assert_eq!(
            t.part(0, "abc"),
            Err(TransferError::WrongOffset {
                expected: 3,
                got: 0
            })
        );
        assert_eq!(
            t.part(3, "defg"),
            Err(TransferError::PastEnd {
                end: 7,
                announced: 6
            })
        );
        assert_eq!(t.part(3, "def"), Ok(6));
        assert_eq!(t.commit().as_deref(), Ok("abcdef"));
        // After a commit there is nothing to add to.
        assert_eq!(t.part(6, "x"), Err(TransferError::NotBegun));
    }

    #[test]
    fn an_early_commit_ends_the_transfer() {
        let mut t = Transfer::new();
        t.begin(4).unwrap();
        t.part(0, "ab").unwrap();
        assert_eq!(
            t.commit(),
            Err(TransferError::Incomplete {
                received: 2,
                announced: 4
            })
        );
        assert!(!t.is_open());
        assert_eq!(t.part(2, "cd"), Err(TransferError::NotBegun));
    }

    #[test]
    fn a_second_begin_replaces_the_unfinished_document() {
        let mut t = Transfer::new();
        t.begin(4).unwrap();
        t.part(0, "ab").unwrap();
        assert_eq!(t.begin(2), Ok(Some(2)));
        assert_eq!(t.part(0, "xy"), Ok(2));
        assert_eq!(t.commit().as_deref(), Ok("xy"));
        t.begin(3).unwrap();
        assert_eq!(t.abort(), Some(0));
        assert!(!t.is_open());
    }

    #[test]
    fn a_size_the_heap_cannot_give_is_refused() {
        let mut t = Transfer::new();
        assert_eq!(
            t.begin(u64::MAX),
            Err(TransferError::NoRoom { bytes: u64::MAX })
        );
        assert!(!t.is_open());
        // An empty document is a transfer like any other (its commit will be refused
        // as not JSON by the parser, not here).
        assert_eq!(t.begin(0), Ok(None));
        assert_eq!(t.commit().as_deref(), Ok(""));
    }

    /// A model of the rules against random sequences of steps: the text is always the
    /// concatenation of the accepted parts, and never exceeds what was announced.
    #[test]
    fn random_step_sequences_follow_the_model() {
        let mut rng = weft_netstack::base::test_rng::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = move |n: u64| rng.below(n);
        for _ in 0..2_000 {
            let mut t = Transfer::new();
            let mut model: Option<(u64, Vec<u8>)> = None;
            for _ in 0..12 {
                match next(5) {
                    0 => {
                        let bytes = next(12);
                        t.begin(bytes).unwrap();
                        model = Some((bytes, Vec::new()));
                    }
                    1 | 2 => {
                        let len = next(5) as usize;
                        let text: String = (0..len).map(|i| (b'a' + i as u8) as char).collect();
                        let at = match (&model, next(4)) {
                            (Some((_, m)), 0) => m.len() as u64 + 1,
                            (Some((_, m)), _) => m.len() as u64,
                            (None, _) => 0,
                        };
                        let got = t.part(at, &text);
                        match &mut model {
                            None => assert_eq!(got, Err(TransferError::NotBegun)),
                            Some((announced, m)) => {
                                let fits = m.len() + len <= *announced as usize;
                                if at == m.len() as u64 && fits {
                                    m.extend_from_slice(text.as_bytes());
                                    assert_eq!(got, Ok(m.len() as u64));
                                } else {
                                    assert!(got.is_err());
                                }
                            }
                        }
                    }
                    3 => {
                        let got = t.commit();
                        match model.take() {
                            None => assert_eq!(got, Err(TransferError::NotBegun)),
                            Some((announced, m)) if m.len() as u64 == announced => {
                                assert_eq!(got.unwrap().as_bytes(), &m[..])
                            }
                            Some(_) => {
                                assert!(matches!(got, Err(TransferError::Incomplete { .. })))
                            }
                        }
                    }
                    _ => {
                        assert_eq!(t.abort(), model.take().map(|(_, m)| m.len() as u64));
                    }
                }
                assert_eq!(t.is_open(), model.is_some());
            }
        }
    }
}
