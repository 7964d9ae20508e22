//! The anti-replay window for one receiving key (RFC 6479, docs/sleeve.md "Anti-replay window").
//!
//! Owns which counters were accepted. It never authenticates anything: the caller asks
//! `check` before decryption and calls `accept` only after the tag verified, so a forged
//! message can never move the window.

/// Counters this far behind the highest accepted one are refused as too old.
pub const WINDOW: u64 = 2048;

const WORD_BITS: u64 = u64::BITS as u64;
// RFC 6479 section 2: one word more than the window, so that sliding forward clears
// whole words and the window never shrinks below WINDOW.
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Already accepted once.
    Replayed,
    /// `WINDOW` or more behind the highest accepted counter.
    TooOld,
}

/// Sliding bitmap window over 64-bit counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    bitmap: [u64; WORDS],
    /// Highest accepted counter, `None` before the first.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub const fn new() -> Self {
        ReplayWindow {
            bitmap: [0; WORDS],
            highest: None,
        }
    }

    pub const fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % WORD_BITS))
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = Self::slot(counter);
        if self.bitmap[word] & bit != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Record `counter` as received (after authentication); refuses like `check`.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                // Clear the words the window slides over; at most all of them.
                let old_word = highest / WORD_BITS;
                let new_word = counter / WORD_BITS;
                let steps = (new_word - old_word).min(WORDS as u64);
                for i in 1..=steps {
                    let (word, _) = Self::slot((old_word + i) * WORD_BITS);
                    self.bitmap[word] = 0;
                }
                self.highest = Some(counter);
            }
            None => {
                self.bitmap = [0; WORDS];
                self.highest = Some(counter);
            }
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;

    #[test]
    fn in_order_then_duplicate() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            assert_eq!(w.accept(c), Ok(()), "{c}");
        }
        assert_eq!(w.check(4999), Err(ReplayError::Replayed));
        assert_eq!(w.check(4999 - WINDOW + 1), Err(ReplayError::Replayed));
        assert_eq!(w.check(4999 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
    }

    #[test]
    fn reorder_inside_window_is_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.accept(10_000), Ok(()));
        // Every counter inside the window, newest to oldest, exactly once.
        for c in (10_000 - WINDOW + 1..10_000).rev() {
            assert_eq!(w.accept(c), Ok(()), "{c}");
            assert_eq!(w.accept(c), Err(ReplayError::Replayed), "{c}");
        }
        assert_eq!(w.accept(10_000 - WINDOW), Err(ReplayError::TooOld));
    }

    #[test]
    fn boundary_is_exact() {
        let mut w = ReplayWindow::new();
        w.accept(WINDOW + 100).unwrap();
        assert_eq!(w.check(101), Ok(()));
        assert_eq!(w.check(100), Err(ReplayError::TooOld));
    }

    #[test]
    fn big_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for c in 0..64 * WORDS as u64 {
            w.accept(c).unwrap();
        }
        let far = 1u64 << 40;
        w.accept(far).unwrap();
        for c in far - WINDOW + 1..far {
            assert_eq!(w.check(c), Ok(()), "stale bit left for {c}");
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut w = ReplayWindow::new();
        w.accept(u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Replayed));
        assert_eq!(w.accept(u64::MAX - 1), Ok(()));
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        let mut w = ReplayWindow::new();
        w.accept(0).unwrap();
        assert_eq!(w.check(0), Err(ReplayError::Replayed));
    }

    #[test]
    fn check_does_not_change_state() {
        let mut w = ReplayWindow::new();
        w.accept(5).unwrap();
        let before = w.clone();
        for c in [0, 5, 6, 1 << 50] {
            let _ = w.check(c);
        }
        assert_eq!(w, before);
    }

    /// Random walks against a model that remembers every accepted counter.
    #[test]
    fn matches_model() {
        let mut rng = crate::base::test_rng::Rng::new(0x5eed);
        for round in 0..200 {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            let mut base = rng.next_u64() % 1_000_000;
            for _ in 0..2000 {
                // Mostly near the front, sometimes far behind, sometimes far ahead.
                let r = rng.next_u64();
                let c = match r % 10 {
                    0 => base.saturating_sub(rng.next_u64() % (3 * WINDOW)),
                    1 => {
                        base += rng.next_u64() % (5 * WINDOW);
                        base
                    }
                    _ => {
                        base += rng.next_u64() % 3;
                        base.saturating_sub(rng.next_u64() % 64)
                    }
                };
                let expect = match highest {
                    Some(h) if c <= h && h - c >= WINDOW => Err(ReplayError::TooOld),
                    _ if seen.contains(&c) => Err(ReplayError::Replayed),
                    _ => Ok(()),
                };
                assert_eq!(w.accept(c), expect, "round {round} counter {c}");
                if expect.is_ok() {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
