//! The TCP state machine of a tracked flow as a middlebox sees it: the flags of a
//! segment, what they mean for the machine, and the transition for a segment seen in
//! one direction. Pure functions of values; it never sees a packet or a table.

use serde::Serialize;

use crate::base::Direction;
use crate::wire::l4::TcpFlags;

/// TCP connection states as a middlebox sees them (both directions' flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    SynSent,
    SynRecv,
    Established,
    /// One side sent FIN.
    FinWait,
    /// The other side acknowledged that FIN; data may still flow its way.
    CloseWait,
    /// Both sides sent FIN; waiting for the last ACK.
    LastAck,
    TimeWait,
    /// Reset.
    Closed,
}

/// A TCP segment's meaning for the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    Syn,
    SynAck,
    /// FIN (with ACK).
    Fin,
    Ack,
    Rst,
}

impl TcpEvent {
    /// Classifies flags; `None` for combinations no TCP sends (SYN+FIN, SYN+RST,
    /// FIN without ACK, no SYN/ACK/RST at all) — the same set Linux refuses.
    pub fn classify(flags: TcpFlags) -> Option<TcpEvent> {
        let TcpFlags { syn, ack, fin, rst } = flags;
        match (syn, ack, fin, rst) {
            (true, false, false, false) => Some(TcpEvent::Syn),
            (true, true, false, false) => Some(TcpEvent::SynAck),
            (false, _, false, true) => Some(TcpEvent::Rst),
            (false, true, true, false) => Some(TcpEvent::Fin),
            (false, true, false, false) => Some(TcpEvent::Ack),
            _ => None,
        }
    }
}

/// FIN bookkeeping kept beside the TCP state: which sides sent FIN, and who sent
/// the latest one (the ACK that completes a close comes from the other side).
const FIN_ORIGINAL: u8 = 1;
const FIN_REPLY: u8 = 2;
const LAST_FIN_REPLY: u8 = 4;

fn fin_bit(dir: Direction) -> u8 {
    match dir {
        Direction::Original => FIN_ORIGINAL,
        Direction::Reply => FIN_REPLY,
    }
}

pub(super) fn last_fin(fins: u8) -> Direction {
    if fins & LAST_FIN_REPLY != 0 {
        Direction::Reply
    } else {
        Direction::Original
    }
}

fn with_last_fin(fins: u8, dir: Direction) -> u8 {
    let fins = fins | fin_bit(dir);
    match dir {
        Direction::Original => fins & !LAST_FIN_REPLY,
        Direction::Reply => fins | LAST_FIN_REPLY,
    }
}

/// The TCP transition for `event` seen in `dir`: the new state and FIN bits.
/// Events that make no sense in a state leave it unchanged (a middlebox is
/// liberal: the endpoints sort out their own confusion).
#[inline]
pub fn tcp_transition(
    state: TcpState,
    fins: u8,
    dir: Direction,
    event: TcpEvent,
) -> (TcpState, u8) {
    use Direction::*;
    use TcpState::*;
    let stay = (state, fins);
    match (event, state) {
        (TcpEvent::Rst, _) => (Closed, fins),
        (TcpEvent::Syn, SynSent) if dir == Original => stay,
        // A new connection reusing the tuple of a finished one.
        (TcpEvent::Syn, TimeWait | Closed) if dir == Original => (SynSent, 0),
        // Simultaneous open.
        (TcpEvent::Syn, SynSent) => (SynRecv, fins),
        (TcpEvent::Syn, _) => stay,
        (TcpEvent::SynAck, SynSent | SynRecv) if dir == Reply => (SynRecv, fins),
        (TcpEvent::SynAck, _) => stay,
        (TcpEvent::Ack, SynRecv) if dir == Original => (Established, fins),
        (TcpEvent::Ack, FinWait) if dir != last_fin(fins) => (CloseWait, fins),
        (TcpEvent::Ack, LastAck) if dir != last_fin(fins) => (TimeWait, fins),
        (TcpEvent::Ack, _) => stay,
        (TcpEvent::Fin, SynRecv | Established) => (FinWait, with_last_fin(fins, dir)),
        (TcpEvent::Fin, FinWait | CloseWait) if dir != last_fin(fins) => {
            (LastAck, with_last_fin(fins, dir))
        }
        (TcpEvent::Fin, _) => stay,
    }
}
