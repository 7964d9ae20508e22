//! The connection-tracking table: lookups in both directions, the TCP state machine,
//! timeouts and sweeping, the capacity policy and the index under churn.

use super::index::EMPTY;
use super::tcp::last_fin;
use super::*;
use crate::base::test_rng::Rng;
use crate::base::{Endpoint, Proto};
use crate::wire::l4::TcpFlags;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::time::Duration;
use smoltcp::wire::Ipv4Address;

fn ep(a: u8, port: u16) -> Endpoint {
    Endpoint::new(Ipv4Address::new(10, 0, 0, a), port)
}

fn tcp(a: u8, ap: u16, b: u8, bp: u16) -> FlowTuple {
    FlowTuple::new(Proto::Tcp, ep(a, ap), ep(b, bp))
}

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs as i64)
}

fn nop() -> impl FnMut(&Flow) {
    |_: &Flow| {}
}

fn drive(ct: &mut Conntrack, id: FlowId, steps: &[(Direction, TcpEvent, TcpState)]) {
    for (i, &(dir, ev, want)) in steps.iter().enumerate() {
        let got = ct.update(id, dir, Some(ev), t(i as u64 + 1));
        assert_eq!(got, Some(FlowState::Tcp(want)), "step {i}: {dir:?} {ev:?}");
    }
}

#[test]
fn flags_classify_like_a_tcp_sends_them() {
    let f = |syn, ack, fin, rst| TcpEvent::classify(TcpFlags { syn, ack, fin, rst });
    assert_eq!(f(true, false, false, false), Some(TcpEvent::Syn));
    assert_eq!(f(true, true, false, false), Some(TcpEvent::SynAck));
    assert_eq!(f(false, true, true, false), Some(TcpEvent::Fin));
    assert_eq!(f(false, true, false, false), Some(TcpEvent::Ack));
    assert_eq!(f(false, false, false, true), Some(TcpEvent::Rst));
    assert_eq!(f(false, true, false, true), Some(TcpEvent::Rst));
    assert_eq!(f(true, false, true, false), None, "SYN+FIN");
    assert_eq!(f(true, false, false, true), None, "SYN+RST");
    assert_eq!(f(false, false, true, false), None, "FIN without ACK");
    assert_eq!(f(false, false, false, false), None, "no flags");
}

#[test]
fn tcp_open_and_orderly_close_then_reuse() {
    use Direction::*;
    use TcpState::*;
    let mut ct = Conntrack::new(ConntrackConfig::default(), 1);
    let id = ct
        .insert(tcp(1, 1000, 2, 80), tcp(2, 80, 1, 1000), t(0), &mut nop())
        .unwrap();
    assert_eq!(ct.get(id).unwrap().state(), FlowState::Tcp(SynSent));
    drive(
        &mut ct,
        id,
        &[
            (Reply, TcpEvent::SynAck, SynRecv),
            (Original, TcpEvent::Ack, Established),
            (Reply, TcpEvent::Ack, Established),
            (Original, TcpEvent::Fin, FinWait),
            // The FIN sender's own ACKs do not acknowledge its FIN.
            (Original, TcpEvent::Ack, FinWait),
            (Reply, TcpEvent::Ack, CloseWait),
            (Reply, TcpEvent::Ack, CloseWait),
            (Reply, TcpEvent::Fin, LastAck),
            (Reply, TcpEvent::Ack, LastAck),
            (Original, TcpEvent::Ack, TimeWait),
            (Original, TcpEvent::Syn, SynSent),
        ],
    );
}

#[test]
fn tcp_simultaneous_close_and_resets() {
    use Direction::*;
    use TcpState::*;
    let mut ct = Conntrack::new(ConntrackConfig::default(), 1);
    let id = ct
        .insert(tcp(1, 1000, 2, 80), tcp(2, 80, 1, 1000), t(0), &mut nop())
        .unwrap();
    drive(
        &mut ct,
        id,
        &[
            (Reply, TcpEvent::SynAck, SynRecv),
            (Original, TcpEvent::Ack, Established),
            (Reply, TcpEvent::Fin, FinWait),
            (Original, TcpEvent::Fin, LastAck),
            // The last FIN came from the original side: the reply side acks it.
            (Original, TcpEvent::Ack, LastAck),
            (Reply, TcpEvent::Ack, TimeWait),
            (Reply, TcpEvent::Syn, TimeWait),
            (Reply, TcpEvent::Rst, Closed),
            (Original, TcpEvent::Syn, SynSent),
            (Original, TcpEvent::Rst, Closed),
        ],
    );
    // SYN retransmits and a stray SYN+ACK from the opener change nothing.
    let id2 = ct
        .insert(tcp(1, 1001, 2, 80), tcp(2, 80, 1, 1001), t(0), &mut nop())
        .unwrap();
    drive(
        &mut ct,
        id2,
        &[
            (Original, TcpEvent::Syn, SynSent),
            (Original, TcpEvent::SynAck, SynSent),
            (Original, TcpEvent::Ack, SynSent),
            (Reply, TcpEvent::Syn, SynRecv),
        ],
    );
}

#[test]
fn both_tuples_find_one_flow() {
    let mut ct = Conntrack::new(ConntrackConfig::default(), 7);
    let orig = tcp(1, 1000, 200, 8080);
    let reply = tcp(5, 80, 1, 1000); // DNAT: 200:8080 -> 5:80
    let id = ct.insert(orig, reply, t(0), &mut nop()).unwrap();
    assert_eq!(ct.lookup(&orig, t(1)), Some((id, Direction::Original)));
    assert_eq!(ct.lookup(&reply, t(1)), Some((id, Direction::Reply)));
    assert_eq!(ct.lookup(&orig.reversed(), t(1)), None);
    assert_eq!(
        ct.insert(orig, tcp(6, 80, 1, 1000), t(1), &mut nop()),
        Err(InsertError::Clash)
    );
    assert_eq!(
        ct.insert(tcp(3, 1, 4, 2), reply, t(1), &mut nop()),
        Err(InsertError::Clash)
    );
    assert_eq!(ct.stats().refused_clash, 2);
}

#[test]
fn timeouts_follow_state() {
    let timeouts = Timeouts::default();
    assert!(timeouts.tcp_established >= Duration::from_secs(7440));
    assert!(timeouts.udp >= Duration::from_secs(120));
    assert_eq!(timeouts.udp, Duration::from_secs(300));
    assert!(timeouts.tcp_time_wait < timeouts.tcp_transitory);

    let mut ct = Conntrack::new(ConntrackConfig::default(), 3);
    let o = tcp(1, 1000, 2, 80);
    let id = ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
    // SYN_SENT is transitory: gone after 4 minutes idle.
    assert!(ct.lookup(&o, t(239)).is_some());
    assert!(ct.lookup(&o, t(240)).is_none());
    // Established at 100 s: lives 2 h 4 min from its last packet.
    ct.update(id, Direction::Reply, Some(TcpEvent::SynAck), t(100));
    ct.update(id, Direction::Original, Some(TcpEvent::Ack), t(100));
    let deadline = Instant::from_secs(100) + timeouts.tcp_established;
    assert!(ct.lookup(&o, deadline - Duration::from_micros(1)).is_some());
    assert!(ct.lookup(&o, deadline).is_none());
    assert_eq!(ct.next_expiry(), Some(deadline));

    let u = FlowTuple::new(Proto::Udp, ep(1, 53), ep(2, 53));
    ct.insert(u, u.reversed(), t(0), &mut nop()).unwrap();
    assert!(ct.lookup(&u.reversed(), t(299)).is_some());
    assert!(ct.lookup(&u.reversed(), t(300)).is_none());

    let mut gone = vec![];
    let n = ct.expire(deadline, usize::MAX, &mut |f: &Flow| {
        gone.push(*f.original())
    });
    assert_eq!(n, 2);
    assert!(gone.contains(&o) && gone.contains(&u));
    assert!(ct.is_empty());
    assert_eq!(ct.stats().expired, 2);
}

#[test]
fn full_table_refuses_new_keeps_established_and_evicts_closed_first() {
    let cfg = ConntrackConfig {
        capacity: 4,
        ..ConntrackConfig::default()
    };
    let mut ct = Conntrack::new(cfg, 9);
    let mut ids = vec![];
    for p in 0..4u16 {
        let o = tcp(1, 1000 + p, 2, 80);
        let id = ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
        ct.update(id, Direction::Reply, Some(TcpEvent::SynAck), t(1));
        ct.update(id, Direction::Original, Some(TcpEvent::Ack), t(1));
        ids.push(id);
    }
    let new = tcp(1, 2000, 2, 80);
    assert_eq!(
        ct.insert(new, new.reversed(), t(2), &mut nop()),
        Err(InsertError::Full)
    );
    assert_eq!(ct.stats().refused_full, 1);
    // Existing flows keep working.
    for p in 0..4u16 {
        let (id, dir) = ct.lookup(&tcp(2, 80, 1, 1000 + p), t(3)).unwrap();
        assert_eq!(dir, Direction::Reply);
        assert_eq!(
            ct.update(id, dir, Some(TcpEvent::Ack), t(3)),
            Some(FlowState::Tcp(TcpState::Established))
        );
    }
    // A reset flow makes room; the established ones stay.
    ct.update(ids[2], Direction::Original, Some(TcpEvent::Rst), t(4));
    let mut evicted = vec![];
    let id = ct
        .insert(new, new.reversed(), t(5), &mut |f: &Flow| {
            evicted.push(*f.original())
        })
        .unwrap();
    assert_eq!(evicted, vec![tcp(1, 1002, 2, 80)]);
    assert_eq!(ct.stats().evicted, 1);
    assert!(ct.get(id).is_some());
    for p in [0u16, 1, 3] {
        assert!(ct.lookup(&tcp(1, 1000 + p, 2, 80), t(5)).is_some());
    }
}

#[test]
fn flows_listing_filters_and_limits() {
    let mut ct = Conntrack::new(ConntrackConfig::default(), 2);
    for p in 0..10u16 {
        let o = tcp(1, 1000 + p, 2, 80);
        ct.insert(o, o.reversed(), t(0), &mut nop()).unwrap();
        let u = FlowTuple::new(Proto::Udp, ep(3, 2000 + p), ep(4, 53));
        ct.insert(u, u.reversed(), t(0), &mut nop()).unwrap();
    }
    let all = ct.flows(&FlowFilter::default(), usize::MAX, t(1));
    assert_eq!(all.len(), 20);
    let udp = FlowFilter {
        proto: Some(Proto::Udp),
        ..FlowFilter::default()
    };
    assert_eq!(ct.flows(&udp, 3, t(1)).len(), 3);
    assert!(ct
        .flows(&udp, 100, t(1))
        .iter()
        .all(|f| f.proto == Proto::Udp));
    let by_port = FlowFilter {
        port: Some(1004),
        ..FlowFilter::default()
    };
    let one = ct.flows(&by_port, 100, t(1));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].original, tcp(1, 1004, 2, 80));
    assert_eq!(one[0].expires_in_secs, 239);
    let by_addr = FlowFilter {
        addr: Some(Ipv4Address::new(10, 0, 0, 4)),
        ..FlowFilter::default()
    };
    assert_eq!(ct.flows(&by_addr, 100, t(1)).len(), 10);
}

#[test]
fn index_matches_a_map_through_inserts_and_removals() {
    use alloc::collections::BTreeMap;
    // A small table so that clusters form, wrap around the end and fingerprints
    // share home buckets; few distinct fingerprints so that equal ones meet.
    for seed in 1..=20u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut index = Index::with_entries(24);
        let mut model: BTreeMap<u32, u32> = BTreeMap::new();
        for step in 0..4000 {
            let e = rng.below(40) as u32;
            let fp = match rng.below(3) {
                0 => (e % 5) | 0xffff_0000,
                1 => e * 7,
                _ => e.wrapping_mul(0x9e37_79b9),
            };
            match model.get(&e) {
                Some(&have) if rng.below(2) == 0 => {
                    index.remove(have, e);
                    model.remove(&e);
                }
                None if model.len() < 24 => {
                    index.insert(fp, e);
                    model.insert(e, fp);
                }
                _ => {}
            }
            for probe in 0..40u32 {
                let want = model.get(&probe).copied();
                let got = want.and_then(|fp| index.find(fp, |x| x == probe));
                assert_eq!(got.is_some(), want.is_some(), "seed {seed} step {step}");
            }
            let used = index.buckets.iter().filter(|&&b| b != EMPTY).count();
            assert_eq!(used, model.len());
        }
    }
}

/// A probe made before the table changed still gives what a plain lookup gives: flows
/// removed, their slots taken by other flows, a probed tuple opened after its probe.
#[test]
fn probes_stay_exact_when_flows_come_and_go_after_them() {
    let mut ct = Conntrack::new(ConntrackConfig::default(), 9);
    let orig = |i: u16| tcp(1, 1000 + i, 2, 80);
    let reply = |i: u16| tcp(2, 80, 1, 1000 + i);
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(ct.insert(orig(i), reply(i), t(0), &mut nop()).unwrap());
    }
    let tuples: Vec<FlowTuple> = (0..10).flat_map(|i| [orig(i), reply(i)]).collect();
    let mut probes = [Probe::NONE; 20];
    ct.probe(&tuples, &mut probes);
    // Flows 0 and 1 go; their slots are reused, one by flow 9 (probed as a miss) and
    // one by flow 0's tuples swapped around (the same slot, the other direction).
    assert!(ct.remove(ids[0], &mut nop()));
    assert!(ct.remove(ids[1], &mut nop()));
    ct.insert(orig(9), reply(9), t(0), &mut nop()).unwrap();
    ct.insert(reply(0), orig(0), t(0), &mut nop()).unwrap();
    for (tuple, probe) in tuples.iter().zip(probes) {
        assert_eq!(
            ct.lookup_probed(tuple, probe, t(1)),
            ct.lookup(tuple, t(1)),
            "{tuple:?}"
        );
    }
    assert!(ct.lookup_probed(&orig(9), probes[18], t(1)).is_some());
    assert_eq!(ct.lookup_probed(&orig(1), probes[2], t(1)), None);
    assert_eq!(
        ct.lookup_probed(&orig(0), probes[0], t(1)).map(|(_, d)| d),
        Some(Direction::Reply)
    );
}

#[test]
fn table_bytes_is_what_a_new_table_allocates() {
    for capacity in [1, 16, 1000, 65_536] {
        let ct = Conntrack::new(
            ConntrackConfig {
                capacity,
                ..ConntrackConfig::default()
            },
            1,
        );
        let held = ct.flows.capacity() * core::mem::size_of::<Flow>()
            + ct.index.buckets.len() * core::mem::size_of::<u64>();
        assert_eq!(
            Conntrack::table_bytes(capacity),
            held,
            "capacity {capacity}"
        );
    }
}

#[test]
fn a_flow_is_one_cache_line_and_the_table_stays_within_128_bytes_a_flow() {
    assert_eq!(core::mem::size_of::<Flow>(), 64);
    assert_eq!(core::mem::align_of::<Flow>(), 64);
    for capacity in [1usize, 16, 1000, 65_536, 1 << 20] {
        let ct = Conntrack::new(
            ConntrackConfig {
                capacity,
                ..ConntrackConfig::default()
            },
            1,
        );
        assert!(
            ct.bytes_per_flow() <= 128,
            "{capacity}: {}",
            ct.bytes_per_flow()
        );
    }
}

/// The obvious table: a list scanned end to end.
struct Model {
    flows: Vec<MFlow>,
    capacity: usize,
    timeouts: Timeouts,
    clock: u64,
    refused_full: u64,
}

struct MFlow {
    orig: FlowTuple,
    reply: FlowTuple,
    state: FlowState,
    fins: u8,
    last_seen: Instant,
    touched: u64,
}

impl MFlow {
    fn tuple(&self, dir: Direction) -> &FlowTuple {
        match dir {
            Direction::Original => &self.orig,
            Direction::Reply => &self.reply,
        }
    }
}

impl Model {
    fn live(&self, now: Instant) -> impl Iterator<Item = (usize, &MFlow)> {
        self.flows
            .iter()
            .enumerate()
            .filter(move |(_, f)| now < f.last_seen + self.timeouts.of(f.state.class()))
    }
    fn lookup(&self, t: &FlowTuple, now: Instant) -> Option<(usize, Direction)> {
        self.live(now).find_map(|(i, f)| {
            if f.orig == *t {
                Some((i, Direction::Original))
            } else if f.reply == *t {
                Some((i, Direction::Reply))
            } else {
                None
            }
        })
    }
    fn insert(
        &mut self,
        orig: FlowTuple,
        reply: FlowTuple,
        now: Instant,
    ) -> Result<(), InsertError> {
        let timeouts = self.timeouts;
        self.flows
            .retain(|f| now < f.last_seen + timeouts.of(f.state.class()));
        let clash = self
            .flows
            .iter()
            .any(|f| [f.orig, f.reply].iter().any(|x| *x == orig || *x == reply));
        if clash || orig == reply {
            return Err(InsertError::Clash);
        }
        if self.flows.len() >= self.capacity {
            // Closed first, then TIME_WAIT, then the other non-established TCP states.
            let order: [&dyn Fn(FlowState) -> bool; 3] = [
                &|s| s == FlowState::Tcp(TcpState::Closed),
                &|s| s == FlowState::Tcp(TcpState::TimeWait),
                &|s| matches!(s, FlowState::Tcp(st) if st != TcpState::Established),
            ];
            let victim = order.iter().find_map(|is| {
                self.flows
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| is(f.state))
                    .min_by_key(|(_, f)| f.touched)
                    .map(|(i, _)| i)
            });
            match victim {
                Some(i) => {
                    self.flows.remove(i);
                }
                None => {
                    self.refused_full += 1;
                    return Err(InsertError::Full);
                }
            }
        }
        self.clock += 1;
        self.flows.push(MFlow {
            orig,
            reply,
            state: FlowState::initial(orig.proto),
            fins: 0,
            last_seen: now,
            touched: self.clock,
        });
        Ok(())
    }
    fn update(
        &mut self,
        i: usize,
        dir: Direction,
        ev: Option<TcpEvent>,
        now: Instant,
    ) -> FlowState {
        self.clock += 1;
        let f = &mut self.flows[i];
        if let (FlowState::Tcp(s), Some(ev)) = (f.state, ev) {
            let (s, fins) = tcp_transition(s, f.fins, dir, ev);
            f.state = FlowState::Tcp(s);
            f.fins = fins;
        }
        f.last_seen = now;
        f.touched = self.clock;
        f.state
    }
}

#[test]
fn random_packet_sequences_match_the_model() {
    const EVENTS: [TcpEvent; 5] = [
        TcpEvent::Syn,
        TcpEvent::SynAck,
        TcpEvent::Ack,
        TcpEvent::Fin,
        TcpEvent::Rst,
    ];
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let timeouts = Timeouts {
            tcp_established: Duration::from_secs(60),
            tcp_transitory: Duration::from_secs(20),
            tcp_time_wait: Duration::from_secs(10),
            tcp_closed: Duration::from_secs(12),
            udp: Duration::from_secs(30),
            icmp: Duration::from_secs(15),
        };
        let capacity = 1 + rng.below(12) as usize;
        let refresh = Duration::ZERO;
        let mut ct = Conntrack::new(
            ConntrackConfig {
                capacity,
                timeouts,
                refresh,
            },
            seed,
        );
        let mut model = Model {
            flows: vec![],
            capacity,
            timeouts,
            clock: 0,
            refused_full: 0,
        };
        let mut now = Instant::from_secs(0);
        for step in 0..3000 {
            now += Duration::from_millis(match rng.below(40) {
                0 => 25_000,
                1..=10 => rng.below(2000),
                _ => 0,
            });
            // Half the packets move a live TCP flow on (from the side that
            // can), so that closing states and their eviction order are
            // reached; the rest are random.
            let live_tcp: Vec<usize> = model
                .live(now)
                .filter(|(_, f)| f.orig.proto == Proto::Tcp)
                .map(|(i, _)| i)
                .collect();
            let (tuple, ev) = if !live_tcp.is_empty() && rng.below(2) == 0 {
                let f = &model.flows[live_tcp[rng.below(live_tcp.len() as u64) as usize]];
                let other = last_fin(f.fins).opposite();
                let (dir, ev) = match f.state {
                    FlowState::Tcp(TcpState::SynSent) => (Direction::Reply, TcpEvent::SynAck),
                    FlowState::Tcp(TcpState::SynRecv) => (Direction::Original, TcpEvent::Ack),
                    FlowState::Tcp(TcpState::Established) => {
                        let d = if rng.below(2) == 0 {
                            Direction::Original
                        } else {
                            Direction::Reply
                        };
                        (d, TcpEvent::Fin)
                    }
                    FlowState::Tcp(TcpState::FinWait) => (other, EVENTS[2 + rng.below(2) as usize]),
                    FlowState::Tcp(TcpState::CloseWait) => (other, TcpEvent::Fin),
                    FlowState::Tcp(TcpState::LastAck) => (other, TcpEvent::Ack),
                    _ => (Direction::Original, TcpEvent::Syn),
                };
                let ev = if rng.below(8) == 0 { TcpEvent::Rst } else { ev };
                (*f.tuple(dir), Some(ev))
            } else {
                let proto = [Proto::Tcp, Proto::Tcp, Proto::Tcp, Proto::Udp, Proto::Icmp]
                    [rng.below(5) as usize];
                let tuple = FlowTuple::new(
                    proto,
                    ep(1 + rng.below(2) as u8, 1 + rng.below(3) as u16),
                    ep(1 + rng.below(2) as u8, 1 + rng.below(2) as u16),
                );
                let kinds = if rng.below(4) == 0 { 5 } else { 4 };
                (
                    tuple,
                    (proto == Proto::Tcp).then(|| EVENTS[rng.below(kinds) as usize]),
                )
            };
            let proto = tuple.proto;
            let real = ct.lookup(&tuple, now);
            let want = model.lookup(&tuple, now);
            match (real, want) {
                (Some((id, dir)), Some((i, _))) => {
                    assert_eq!(ct.get(id).unwrap().original(), &model.flows[i].orig);
                    let got = ct.update(id, dir, ev, now);
                    assert_eq!(
                        got,
                        Some(model.update(i, dir, ev, now)),
                        "seed {seed} step {step}"
                    );
                }
                (None, None) if ev.is_none() || ev == Some(TcpEvent::Syn) => {
                    // Sometimes a translated reply tuple, as NAT inserts.
                    let reply = if rng.below(3) == 0 {
                        FlowTuple::new(proto, tuple.dst, ep(9, 1 + rng.below(3) as u16))
                    } else {
                        tuple.reversed()
                    };
                    let r = ct.insert(tuple, reply, now, &mut nop()).map(|_| ());
                    assert_eq!(
                        r,
                        model.insert(tuple, reply, now),
                        "seed {seed} step {step}"
                    );
                }
                _ => {}
            }
            if rng.below(50) == 0 {
                ct.expire(now, rng.below(4) as usize, &mut nop());
            }
            assert!(ct.len() <= capacity);
            // Every live model flow is found from both ends with the same state.
            for (_, f) in model.live(now) {
                let (id, dir) = ct.lookup(&f.reply, now).expect("model flow missing");
                assert_eq!(dir, Direction::Reply);
                assert_eq!(ct.get(id).unwrap().state(), f.state);
                assert_eq!(ct.lookup(&f.orig, now), Some((id, Direction::Original)));
            }
        }
        assert_eq!(ct.stats().refused_full, model.refused_full);
    }
}

#[test]
fn coarse_refresh_keeps_lookups_exact_and_sweeps_within_the_refresh() {
    let refresh = Duration::from_secs(1);
    let timeouts = Timeouts {
        udp: Duration::from_secs(10),
        ..Timeouts::default()
    };
    let mut ct = Conntrack::new(
        ConntrackConfig {
            capacity: 64,
            timeouts,
            refresh,
        },
        5,
    );
    let mut rng = Rng::new(77);
    let mut now = Instant::from_secs(0);
    let tuples: Vec<FlowTuple> = (0..48u16)
        .map(|p| FlowTuple::new(Proto::Udp, ep(1, p), ep(2, 53)))
        .collect();
    for step in 0..20_000 {
        now += Duration::from_millis(rng.below(300));
        let t = tuples[rng.below(48) as usize];
        match ct.lookup(&t, now) {
            Some((id, dir)) => {
                ct.update(id, dir, None, now);
            }
            None => {
                ct.insert(t, t.reversed(), now, &mut nop()).unwrap();
            }
        }
        if rng.below(10) == 0 {
            let mut early = false;
            ct.expire(now, usize::MAX, &mut |f: &Flow| {
                early |= now < f.last_seen() + timeouts.udp;
            });
            assert!(!early, "step {step}: a live flow was swept");
            // What is left expired has been so for less than `refresh`.
            for (_, f) in ct.iter() {
                assert!(f.last_seen() + timeouts.udp + refresh > now, "step {step}");
            }
        }
        // Lookups are exact whatever the list order.
        for (_, f) in ct.iter() {
            let alive = now < f.last_seen() + timeouts.udp;
            assert_eq!(ct.lookup(f.original(), now).is_some(), alive);
        }
    }
}
