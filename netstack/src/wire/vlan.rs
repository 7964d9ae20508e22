//! IEEE 802.1Q tags on the container link: the VLAN id type, and taking a tag off a
//! received frame or putting one on a frame to send. This is how several overlay
//! networks share one link (one VLAN per network, at most one untagged). It only reads
//! and writes the four tag bytes; it never decides which network a VLAN belongs to.

use alloc::vec::Vec;

use byteorder::{ByteOrder, NetworkEndian};
use smoltcp::wire::{EthernetProtocol, ETHERNET_HEADER_LEN};

use crate::base::VlanId;
use crate::wire::buffer::PacketBuf;

/// The 802.1Q TPID (the EtherType of a tagged frame).
pub const TPID: u16 = 0x8100;
/// Bytes a tag adds to a frame.
pub const TAG_LEN: usize = 4;

mod field {
    use core::ops::Range;

    /// The destination and source MAC addresses, ahead of a tag.
    pub const ADDRESSES: Range<usize> = 0..12;
    /// The EtherType of an untagged frame, or the TPID of a tagged one.
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// The tag control information after the TPID: priority, DEI and VLAN id.
    pub const TCI: Range<usize> = 14..16;
}

const VID_MASK: u16 = 0x0fff;

/// 802.1ad (an S-tag) and pre-standard QinQ: tags all the same to a bridge.
const TPID_8021AD: u16 = 0x88a8;
const TPID_QINQ: u16 = 0x9100;

/// Whether `ethertype` is the TPID of an 802.1Q (0x8100), 802.1ad (0x88a8) or
/// pre-standard QinQ (0x9100) tag.
pub fn is_tag(ethertype: EthernetProtocol) -> bool {
    matches!(u16::from(ethertype), TPID | TPID_8021AD | TPID_QINQ)
}

/// Whether `frame` carries an 802.1Q tag: its EtherType field is the TPID.
pub fn has_tag(frame: &[u8]) -> bool {
    frame
        .get(field::ETHERTYPE)
        .is_some_and(|t| NetworkEndian::read_u16(t) == TPID)
}

/// The length of the L3 packet of a `frame_len`-byte frame whose EtherType field says
/// `ethertype`: after the Ethernet header and one 802.1Q tag.
pub fn l3_len(ethertype: EthernetProtocol, frame_len: usize) -> usize {
    let header = if u16::from(ethertype) == TPID {
        ETHERNET_HEADER_LEN + TAG_LEN
    } else {
        ETHERNET_HEADER_LEN
    };
    frame_len.saturating_sub(header)
}

/// The VLAN a received frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    /// No tag, or a priority-only tag (VID 0), which 802.1Q treats as untagged.
    Untagged,
    Vlan(VlanId),
    /// VID 4095, reserved: never a network.
    Reserved,
}

/// Why a frame could not be read as (possibly tagged) Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

/// The tag of `frame` and the frame without it (borrowed when there was none).
/// A frame with a tag but no room for an EtherType after it is `Truncated`.
pub fn untag(frame: &[u8]) -> Result<(Tag, Untagged<'_>), Truncated> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(Truncated);
    }
    if NetworkEndian::read_u16(&frame[field::ETHERTYPE]) != TPID {
        return Ok((Tag::Untagged, Untagged::Borrowed(frame)));
    }
    if frame.len() < ETHERNET_HEADER_LEN + TAG_LEN {
        return Err(Truncated);
    }
    let tag = tag_of(NetworkEndian::read_u16(&frame[field::TCI]));
    let mut out = Vec::with_capacity(frame.len() - TAG_LEN);
    out.extend_from_slice(&frame[..field::ADDRESSES.end]);
    out.extend_from_slice(&frame[field::ADDRESSES.end + TAG_LEN..]);
    Ok((tag, Untagged::Owned(out)))
}

/// The tag of the frame in `buf`, taken off where the frame lies: the MAC addresses
/// move up by the tag's four bytes, which become headroom. Refused as [`untag`] refuses.
pub fn untag_in_place(buf: &mut PacketBuf) -> Result<Tag, Truncated> {
    let frame = buf.frame_mut();
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(Truncated);
    }
    if NetworkEndian::read_u16(&frame[field::ETHERTYPE]) != TPID {
        return Ok(Tag::Untagged);
    }
    if frame.len() < ETHERNET_HEADER_LEN + TAG_LEN {
        return Err(Truncated);
    }
    let tag = tag_of(NetworkEndian::read_u16(&frame[field::TCI]));
    frame.copy_within(field::ADDRESSES, TAG_LEN);
    buf.pull_front(TAG_LEN);
    Ok(tag)
}

/// What the tag control information `tci` says.
fn tag_of(tci: u16) -> Tag {
    match tci & VID_MASK {
        0 => Tag::Untagged,
        VID_MASK => Tag::Reserved,
        // 1..=4094 by the two arms above.
        id => VlanId::new(id).map_or(Tag::Reserved, Tag::Vlan),
    }
}

/// Puts a tag for `vlan` (priority 0) on the frame in `buf` where it lies, out of the
/// buffer's headroom: the MAC addresses move down four bytes and the tag goes after
/// them. False (nothing changed) without four bytes of headroom; a frame shorter than
/// the two MAC addresses stays as it is, as with [`tag`].
pub fn tag_in_place(buf: &mut PacketBuf, vlan: VlanId) -> bool {
    if buf.len() < field::ADDRESSES.end {
        return true;
    }
    let Some(frame) = buf.push_front(TAG_LEN) else {
        return false;
    };
    frame.copy_within(TAG_LEN..TAG_LEN + field::ADDRESSES.end, 0);
    NetworkEndian::write_u16(&mut frame[field::ETHERTYPE], TPID);
    NetworkEndian::write_u16(&mut frame[field::TCI], vlan.get());
    true
}

/// A frame with its tag removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untagged<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for Untagged<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Untagged::Borrowed(b) => b,
            Untagged::Owned(v) => v,
        }
    }
}

/// `frame` with an 802.1Q tag for `vlan` (priority 0) after its MAC addresses; `None`
/// keeps it as it is. Frames shorter than the two MAC addresses are returned unchanged.
pub fn tag(frame: Vec<u8>, vlan: Option<VlanId>) -> Vec<u8> {
    let Some(vlan) = vlan else {
        return frame;
    };
    if frame.len() < field::ADDRESSES.end {
        return frame;
    }
    let mut out = Vec::with_capacity(frame.len() + TAG_LEN);
    out.extend_from_slice(&frame[..field::ADDRESSES.end]);
    let mut header = [0u8; TAG_LEN];
    NetworkEndian::write_u16(&mut header[..2], TPID);
    NetworkEndian::write_u16(&mut header[2..], vlan.get());
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[field::ADDRESSES.end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An ARP request from 02:00:00:00:00:01 as `ip link add ... type vlan id 100`
    /// sends it: TPID 0x8100, TCI 0x0064, then the ARP EtherType.
    const TAGGED: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x81, 0x00, 0x00, 0x64, 0x08,
        0x06,
    ];
    const UNTAGGED: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06,
    ];

    #[test]
    fn untag_and_tag_round_trip() {
        let (t, inner) = untag(&TAGGED).unwrap();
        assert_eq!(t, Tag::Vlan(VlanId::new(100).unwrap()));
        assert_eq!(inner.as_ref(), &UNTAGGED[..]);
        assert_eq!(tag(UNTAGGED.to_vec(), VlanId::new(100)), TAGGED.to_vec());
        assert_eq!(tag(UNTAGGED.to_vec(), None), UNTAGGED.to_vec());
        let (t, inner) = untag(&UNTAGGED).unwrap();
        assert_eq!(t, Tag::Untagged);
        assert!(matches!(inner, Untagged::Borrowed(_)));
        // Every VID and priority bits survive a round trip; the PCP/DEI bits are ignored.
        for id in VlanId::MIN..=VlanId::MAX {
            let vlan = VlanId::new(id).unwrap();
            let mut tagged = tag(UNTAGGED.to_vec(), Some(vlan));
            tagged[14] |= 0xe0 | 0x10;
            let (t, inner) = untag(&tagged).unwrap();
            assert_eq!(t, Tag::Vlan(vlan));
            assert_eq!(inner.as_ref(), &UNTAGGED[..]);
        }
    }

    #[test]
    fn in_place_matches_the_copying_functions() {
        let mut buf = PacketBuf::from_frame(&TAGGED);
        assert_eq!(
            untag_in_place(&mut buf),
            Ok(Tag::Vlan(VlanId::new(100).unwrap()))
        );
        assert_eq!(buf.frame(), &UNTAGGED[..]);
        assert!(tag_in_place(&mut buf, VlanId::new(100).unwrap()));
        assert_eq!(buf.frame(), &TAGGED[..]);
        let mut plain = PacketBuf::from_frame(&UNTAGGED);
        assert_eq!(untag_in_place(&mut plain), Ok(Tag::Untagged));
        assert_eq!(plain.frame(), &UNTAGGED[..]);
        for len in ETHERNET_HEADER_LEN..TAGGED.len() {
            let mut short = PacketBuf::from_frame(&TAGGED[..len]);
            assert_eq!(untag_in_place(&mut short), Err(Truncated), "{len}");
            assert_eq!(short.frame(), &TAGGED[..len]);
        }
        let mut tight = PacketBuf::from_vec(UNTAGGED.to_vec());
        assert!(!tag_in_place(&mut tight, VlanId::new(5).unwrap()));
        assert_eq!(tight.frame(), &UNTAGGED[..]);
    }

    #[test]
    fn priority_and_reserved_tags() {
        let mut f = TAGGED;
        f[14..16].copy_from_slice(&[0xa0, 0x00]);
        assert_eq!(untag(&f).unwrap().0, Tag::Untagged);
        f[14..16].copy_from_slice(&[0x0f, 0xff]);
        assert_eq!(untag(&f).unwrap().0, Tag::Reserved);
    }

    #[test]
    fn short_frames_are_refused_not_read_past() {
        for len in 0..ETHERNET_HEADER_LEN {
            assert_eq!(untag(&TAGGED[..len]), Err(Truncated));
        }
        for len in ETHERNET_HEADER_LEN..TAGGED.len() {
            assert_eq!(untag(&TAGGED[..len]), Err(Truncated), "{len}");
        }
        assert_eq!(tag(vec![1, 2, 3], VlanId::new(5)), vec![1, 2, 3]);
    }
}
