//! ICMP errors about translated flows: an error that quotes a packet of a flow is
//! translated back to the endpoint that sent it (RFC 5508 section 4.2, RFC 5382 REQ-9),
//! the outer addresses, the quoted packet and every checksum. Errors do not refresh
//! flows and never open one.

use smoltcp::time::Instant;
use smoltcp::wire::Icmpv4Packet;

use super::{Nat, NatDrop, NatVerdict};
use crate::wire::l4::{self, Parsed, Quote};
use crate::wire::rewrite;

impl Nat {
    /// Translates an ICMP error that quotes a packet of a translated flow back
    /// to the endpoint that sent it (RFC 5508 §4.2, RFC 5382 REQ-9): outer
    /// addresses, the quoted header and every checksum. Errors do not refresh
    /// the flow.
    pub(super) fn icmp_error(&mut self, frame: &mut [u8], p: &Parsed, now: Instant) -> NatVerdict {
        let icmp_at = p.l4();
        let pkt_end = p.end;
        let quoted_at =
            icmp_at + Icmpv4Packet::new_unchecked(&frame[icmp_at..pkt_end]).header_len();
        let Some(q) = frame.get(quoted_at..pkt_end) else {
            return self.drop(NatDrop::Malformed);
        };
        let quoted = match l4::parse_quote(q) {
            Quote::Malformed => return self.drop(NatDrop::Malformed),
            Quote::Untracked => {
                self.stats.passed += 1;
                return NatVerdict::Pass;
            }
            Quote::Ok { tuple, .. } => tuple,
        };
        // The quoted packet left us translated; its reverse is the tuple the
        // flow expects in the direction the error travels.
        let Some((id, dir)) = self.ct.lookup(&quoted.reversed(), now) else {
            self.stats.passed += 1;
            return NatVerdict::Pass;
        };
        let Some(flow) = self.ct.get(id) else {
            return self.drop(NatDrop::Malformed);
        };
        // What the sender of the quoted packet sent, before translation.
        let sent = *flow.tuple(dir.opposite());
        let outer_src = p.tuple.src.addr;
        let outer_dst = p.tuple.dst.addr;
        let new_dst = if outer_dst == quoted.src.addr {
            sent.src.addr
        } else {
            outer_dst
        };
        let new_src = if outer_src == quoted.dst.addr {
            sent.dst.addr
        } else {
            outer_src
        };
        // Quoted packet first: its bytes are covered by the ICMP checksum.
        let inner = rewrite::flow(&mut frame[quoted_at..pkt_end], quoted.proto, &sent);
        rewrite::icmp_checksum(&mut frame[icmp_at..pkt_end], inner);
        // Outer header: addresses and header checksum (ICMP has no pseudo-header).
        rewrite::addresses(&mut frame[p.ip..pkt_end], new_src, new_dst);
        self.stats.icmp_errors_translated += 1;
        NatVerdict::Forward {
            to: self.side_of(new_dst),
        }
    }
}
