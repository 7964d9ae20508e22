//! Building reply messages with hickory-proto: response headers derived from a request,
//! error replies, and the fit to a UDP payload size (TC=1 when too big).
//! It never decides which reply a query gets; the server and forwarder do.

use alloc::vec::Vec;

use hickory_proto::op::{Edns, Message, Metadata, Query, ResponseCode};
use hickory_proto::ProtoError;

/// The plain DNS UDP limit without EDNS (RFC 1035 §2.3.4).
pub const UDP_DEFAULT_PAYLOAD: u16 = 512;

/// What a reply needs to know about the request it answers.
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    pub metadata: Metadata,
    pub query: Option<Query>,
    /// The client's EDNS payload size if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

impl RequestHead {
    pub fn of(request: &Message) -> RequestHead {
        RequestHead {
            metadata: request.metadata,
            query: request.queries.first().cloned(),
            edns_payload: request.edns.as_ref().map(Edns::max_payload),
        }
    }

    /// The largest UDP reply the client takes (RFC 6891 §6.2.5: below 512 means 512),
    /// capped at what this server sends.
    pub fn udp_limit(&self, server_max: u16) -> u16 {
        let client = self
            .edns_payload
            .unwrap_or(UDP_DEFAULT_PAYLOAD)
            .max(UDP_DEFAULT_PAYLOAD);
        client.min(server_max.max(UDP_DEFAULT_PAYLOAD))
    }
}

/// A response to `head` with its question and, if the client spoke EDNS, an OPT
/// record advertising `advertise` (RFC 6891 §6.1.1: a responder MUST include one).
pub(crate) fn response(head: &RequestHead, rcode: ResponseCode, advertise: u16) -> Message {
    let mut metadata = Metadata::response_from_request(&head.metadata);
    // We recurse for clients (by forwarding), so RA is always on.
    metadata.recursion_available = true;
    metadata.response_code = rcode;
    let mut message = Message::response(metadata.id, metadata.op_code);
    message.metadata = metadata;
    if let Some(query) = &head.query {
        message.add_query(query.clone());
    }
    if head.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(advertise.max(UDP_DEFAULT_PAYLOAD));
        edns.set_version(0);
        message.set_edns(edns);
    }
    message
}

/// Encodes `message`; when it is longer than `limit`, encodes instead the header,
/// question and OPT with TC=1 (RFC 2181 §9: no partial RRsets), so the client retries
/// over TCP. Returns the bytes and whether they were truncated.
pub(crate) fn encode_within(
    message: &Message,
    limit: usize,
) -> Result<(Vec<u8>, bool), ProtoError> {
    let bytes = message.to_vec()?;
    if bytes.len() <= limit {
        return Ok((bytes, false));
    }
    // Header (12) + one question (<= 259) + OPT (11) always fits 512.
    let truncated = message.truncate().to_vec()?;
    Ok((truncated, true))
}
