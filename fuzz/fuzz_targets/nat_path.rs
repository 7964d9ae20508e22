//! Arbitrary frames from either side through conntrack, NAT and the load
//! balancer, with time moving and health reports arriving between them.
//! The router's TTL check (`would_forward`, ICMP time exceeded) and timeout
//! changes ride along. Input: records of [side/op byte][time step byte][len: u16 BE][frame bytes].
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, Ipv4Address, Ipv4Cidr};
use weft_netstack::base::{Endpoint, NicId, Transport};
use weft_netstack::stage::lb::{BackendConfig, HealthSpec, LoadBalancer, ServiceMode, ServiceConfig};
use weft_netstack::stage::nat::{Nat, NatConfig, PublishRule, NatVerdict};
use weft_netstack::table::conntrack::{self, FlowFilter, Timeouts};
use weft_netstack::wire::icmp_error;

const UPLINK: Ipv4Address = Ipv4Address::new(192, 0, 2, 10);
const NODE: Ipv4Address = Ipv4Address::new(10, 81, 0, 1);
const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);
const MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0, 0, 1]);

fn nat() -> Nat {
    let mut config = NatConfig::new(UPLINK, NODE, Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16));
    // Small enough that a fuzz input fills the table and the port range.
    config.conntrack = conntrack::ConntrackConfig { capacity: 32, ..conntrack::ConntrackConfig::default() };
    config.snat_ports = (40000, 40015);
    let mut nat = Nat::new(config, 0x5eed);
    for (proto, host_port, addr, port) in [
        (Transport::Tcp, 8080, Ipv4Address::new(10, 81, 1, 5), 80),
        (Transport::Udp, 5353, Ipv4Address::new(10, 81, 1, 5), 53),
        (Transport::Tcp, 9000, VIP, 80),
    ] {
        let _ = nat.add_publish(PublishRule { proto, host_port, container_address: addr, container_port: port });
    }
    // A small prime table keeps each run cheap; the logic is the same.
    *nat.lb_mut() = LoadBalancer::with_table_size(251);
    let _ = nat.lb_mut().add_service(
        ServiceConfig {
            name: "web".into(),
            vip: Some(VIP),
            proto: Transport::Tcp,
            port: 80,
            mode: ServiceMode::Vip,
            backends: (1..=3)
                .map(|i| BackendConfig { address: Ipv4Address::new(10, 81, i, 10), port: 8000, weight: i as u32 })
                .collect(),
            health: Some(HealthSpec { interval_ms: 100, timeout_ms: 50, rise: 1, fall: 1, proto: None }),
        },
        Instant::ZERO,
    );
    nat
}

fuzz_target!(|data: &[u8]| {
    let mut nat = nat();
    let mut now = Instant::ZERO;
    let mut rest = data;
    while rest.len() >= 4 {
        let (op, step) = (rest[0], rest[1]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let take = len.min(rest.len());
        let mut frame = rest[..take].to_vec();
        rest = &rest[take..];
        now += Duration::from_millis(step as u64 * 997);
        match op % 4 {
            0 | 1 => {
                let side = if op % 4 == 0 { NicId::Uplink } else { NicId::Link };
                let before = frame.len();
                // The router's TTL check: a packet the NAT says it would forward is
                // translated or refused, never passed on untouched.
                let would = nat.would_forward(&frame, side, now);
                if let Some(error) = icmp_error::time_exceeded(&frame, MAC, UPLINK) {
                    assert!(error.len() <= 14 + 576 && error.len() >= 14 + 28 + 20);
                }
                let verdict = nat.process(&mut frame, side, now);
                assert_eq!(frame.len(), before, "rewrites happen in place");
                if would {
                    assert_ne!(verdict, NatVerdict::Pass, "would_forward and process agree");
                }
                if let NatVerdict::Forward { .. } = verdict {
                    assert!(frame.len() >= 14 + 20 + 8);
                }
            }
            2 => {
                if step & 0x80 != 0 {
                    // Short, then default timeouts: live flows are judged anew.
                    let t = if step & 0x40 != 0 {
                        let s = |k: u8| Duration::from_secs(1 + ((step >> k) & 3) as u64);
                        Timeouts {
                            tcp_established: s(0),
                            tcp_transitory: s(1),
                            tcp_time_wait: s(2),
                            tcp_closed: s(3),
                            udp: s(4),
                            icmp: s(5),
                        }
                    } else {
                        Timeouts::default()
                    };
                    nat.set_timeouts(t);
                }
                nat.poll(now, (step % 8) as usize);
            }
            _ => {
                for (i, check) in nat.lb_mut().due(now).into_iter().enumerate() {
                    let ok = frame.get(i).is_some_and(|b| b & 1 == 1);
                    nat.lb_mut().report(check.id, ok, now);
                }
                if step == 0xff {
                    let _ = nat.remove_backend("web", Endpoint::new(Ipv4Address::new(10, 81, 1, 10), 8000));
                }
                // Drain, re-weight or add a backend between frames (weight 0 drains).
                if step == 0xfe {
                    let b = frame.first().copied().unwrap_or(0);
                    let backend = BackendConfig {
                        address: Ipv4Address::new(10, 81, 1 + b % 4, 10),
                        port: 8000,
                        weight: u32::from(b >> 4),
                    };
                    let _ = nat.lb_mut().set_backend("web", backend, now);
                }
                let _ = nat.lb().resolve("web");
            }
        }
        let stats = nat.stats();
        assert!(stats.table_size <= stats.table_capacity);
    }
    let _ = nat.flows(&FlowFilter::default(), 16, now);
});
