//! The resolver's counters, serialized for `status`, and the named reasons a datagram
//! is dropped. Counting only: nothing here decides what happens to a packet.

use serde::{Deserialize, Serialize};

/// Why a datagram was dropped without a reply. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the 12-byte DNS header: nothing to answer to.
    ShortHeader,
    /// A response (QR=1) arrived on the query path; answering it could loop.
    NotAQuery,
    /// Our own reply could not be encoded (e.g. over 65535 bytes even for TCP).
    EncodeFailed,
    /// Upstream reply shorter than a header or with an unreadable question.
    ReplyMalformed,
    /// Upstream datagram with QR=0.
    ReplyNotAResponse,
    /// Upstream reply to a port with no query in flight (late, or spoofed).
    ReplyUnknownPort,
    /// Upstream reply from another address than the one asked.
    ReplyWrongSource,
    /// Upstream reply whose ID is not the one sent from that port.
    ReplyIdMismatch,
    /// Upstream reply whose question is not the one asked.
    ReplyQuestionMismatch,
}

/// Drop counters by reason.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDrops {
    pub short_header: u64,
    pub not_a_query: u64,
    pub encode_failed: u64,
    pub reply_malformed: u64,
    pub reply_not_a_response: u64,
    pub reply_unknown_port: u64,
    pub reply_wrong_source: u64,
    pub reply_id_mismatch: u64,
    pub reply_question_mismatch: u64,
}

impl DnsDrops {
    pub fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::ShortHeader => &mut self.short_header,
            DropReason::NotAQuery => &mut self.not_a_query,
            DropReason::EncodeFailed => &mut self.encode_failed,
            DropReason::ReplyMalformed => &mut self.reply_malformed,
            DropReason::ReplyNotAResponse => &mut self.reply_not_a_response,
            DropReason::ReplyUnknownPort => &mut self.reply_unknown_port,
            DropReason::ReplyWrongSource => &mut self.reply_wrong_source,
            DropReason::ReplyIdMismatch => &mut self.reply_id_mismatch,
            DropReason::ReplyQuestionMismatch => &mut self.reply_question_mismatch,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.short_header
            + self.not_a_query
            + self.encode_failed
            + self.reply_malformed
            + self.reply_not_a_response
            + self.reply_unknown_port
            + self.reply_wrong_source
            + self.reply_id_mismatch
            + self.reply_question_mismatch
    }
}

/// Counters of the DNS service. Every query is counted once in `queries` and once in
/// exactly one outcome: `local_answers`, `nodata`, `nxdomain`, `forwarded`,
/// `formerr`, `notimp`, `refused`, `badvers`, `servfail` (immediate refusals) or
/// a drop.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCounters {
    /// Client queries received (UDP and TCP).
    pub queries: u64,
    /// Of which over TCP.
    pub queries_tcp: u64,
    /// Authoritative answers with data (A, PTR, SOA).
    pub local_answers: u64,
    /// Authoritative NOERROR without data (known name, other type).
    pub nodata: u64,
    /// Authoritative NXDOMAIN (unknown name in the grid domain).
    pub nxdomain: u64,
    /// Local replies sent with TC=1 because they did not fit the client's UDP size.
    pub truncated: u64,
    /// Client queries handed to the forwarder.
    pub forwarded: u64,
    /// Queries sent to an upstream (first attempts and failovers).
    pub upstream_queries: u64,
    /// Upstream replies accepted and relayed to a client.
    pub upstream_replies: u64,
    /// Attempts that timed out (or were failed by the integrator).
    pub upstream_timeouts: u64,
    /// SERVFAIL replies: `forward_refused` + `upstream_failures`.
    pub servfail: u64,
    /// Queries answered SERVFAIL at once instead of being forwarded.
    pub forward_refused: u64,
    /// Of those, refused because `max_in_flight` queries were pending.
    pub in_flight_full: u64,
    /// Forwarded queries that every upstream failed (SERVFAIL after the last timeout).
    pub upstream_failures: u64,
    /// FORMERR replies (header readable, rest not).
    pub formerr: u64,
    /// NOTIMP replies (opcode other than QUERY).
    pub notimp: u64,
    /// REFUSED replies (zone transfer, or a class other than IN for a grid name).
    pub refused: u64,
    /// BADVERS replies (EDNS version other than 0).
    pub badvers: u64,
    pub drops: DnsDrops,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_serialize_with_named_drop_reasons() {
        let mut counters = DnsCounters {
            queries: 3,
            ..DnsCounters::default()
        };
        counters.drops.count(DropReason::ShortHeader);
        counters.drops.count(DropReason::ReplyIdMismatch);
        counters.drops.count(DropReason::ReplyIdMismatch);
        let json = serde_json::to_value(&counters).unwrap();
        assert_eq!(json["queries"], 3);
        assert_eq!(json["drops"]["short_header"], 1);
        assert_eq!(json["drops"]["reply_id_mismatch"], 2);
        assert_eq!(counters.drops.total(), 3);
        // `weft ctl status` reads them back.
        assert_eq!(
            serde_json::from_value::<DnsCounters>(json).unwrap(),
            counters
        );
    }
}
