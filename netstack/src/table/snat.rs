//! The external ports of masquerade: endpoint-independent mappings (RFC 4787 REQ-1),
//! one port per inside endpoint and SNAT address for as long as any of its flows
//! lives, with port preservation when it is free (RFC 4787 section 4.2.1).
//!
//! State only: it never sees a packet and never reuses the port of a live mapping.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::wire::Ipv4Address;

use crate::base::ports::SNAT_PORTS;
use crate::base::{Endpoint, Proto};
use crate::table::conntrack::Flow;

/// Endpoint-independent SNAT mappings: one external port per inside endpoint
/// (and SNAT address) for as long as any of its flows lives.
pub struct SnatPorts {
    range: (u16, u16),
    /// (SNAT address, proto, inside endpoint) -> (external port, live flows).
    by_inside: BTreeMap<(Ipv4Address, Proto, Endpoint), (u16, u32)>,
    /// (SNAT address, proto) -> bitmap of external ports in use.
    used: BTreeMap<(Ipv4Address, Proto), Vec<u64>>,
    seed: u64,
}

impl SnatPorts {
    /// Mappings taken from `range` (inclusive; Docker's when empty or starting at 0);
    /// `seed` keys where the search for a free port starts.
    pub fn new(range: (u16, u16), seed: u64) -> SnatPorts {
        let (lo, hi) = range;
        SnatPorts {
            range: if lo <= hi && lo > 0 {
                range
            } else {
                SNAT_PORTS
            },
            by_inside: BTreeMap::new(),
            used: BTreeMap::new(),
            seed,
        }
    }

    fn span(&self) -> u32 {
        (self.range.1 - self.range.0) as u32 + 1
    }

    /// The external port of `inside` behind `addr`, allocating one if it has
    /// none; takes a reference that `release` gives back.
    pub fn acquire(
        &mut self,
        addr: Ipv4Address,
        proto: Proto,
        inside: Endpoint,
        taken: impl Fn(u16) -> bool,
    ) -> Option<u16> {
        if let Some((port, refs)) = self.by_inside.get_mut(&(addr, proto, inside)) {
            *refs += 1;
            return Some(*port);
        }
        let span = self.span();
        let words = span.div_ceil(64) as usize;
        let (lo, hi) = self.range;
        let bits = self
            .used
            .entry((addr, proto))
            .or_insert_with(|| vec![0; words]);
        let is_free = |bits: &[u64], port: u16| {
            let i = (port - lo) as usize;
            bits[i / 64] & (1 << (i % 64)) == 0 && !taken(port)
        };
        // Keep the inside port when it is free (port preservation, RFC 4787
        // §4.2.1), else start at a keyed position so ports are hard to guess.
        let port = if (lo..=hi).contains(&inside.port) && is_free(bits, inside.port) {
            Some(inside.port)
        } else {
            let h = (u32::from(inside.addr) as u64) << 16 | inside.port as u64;
            let start = ((h ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 % span;
            (0..span)
                .map(|k| lo + ((start + k) % span) as u16)
                .find(|&p| is_free(bits, p))
        }?;
        let i = (port - lo) as usize;
        bits[i / 64] |= 1 << (i % 64);
        self.by_inside.insert((addr, proto, inside), (port, 1));
        Some(port)
    }

    pub fn release(&mut self, addr: Ipv4Address, proto: Proto, inside: Endpoint) {
        let key = (addr, proto, inside);
        let Some((port, refs)) = self.by_inside.get_mut(&key) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let port = *port;
        self.by_inside.remove(&key);
        if let Some(bits) = self.used.get_mut(&(addr, proto)) {
            let i = (port - self.range.0) as usize;
            bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Gives back the mapping a removed flow held, if it was source-translated.
    pub fn release_flow(&mut self, flow: &Flow) {
        let (orig, reply) = (flow.original(), flow.reply());
        if reply.dst != orig.src {
            self.release(reply.dst.addr, orig.proto, orig.src);
        }
    }

    pub fn len(&self) -> usize {
        self.by_inside.len()
    }
}

impl SnatPorts {
    /// Whether no mapping is held.
    pub fn is_empty(&self) -> bool {
        self.by_inside.is_empty()
    }
}
