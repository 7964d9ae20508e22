use alloc::vec::Vec;
use core::time::Duration;

use super::*;
use crate::keys::Direction;
use crate::testing::{context, TestCa, NOW};

fn at(secs: u64) -> Time {
    Time {
        since_boot: Duration::from_secs(secs),
        unix_secs: Some(NOW + secs),
    }
}

/// Meshes joined by in-memory TCP connections (node id -> mesh).
struct Net {
    meshes: BTreeMap<NodeId, Mesh>,
    /// (node, conn) <-> (node, conn)
    pipes: Vec<((NodeId, ConnId), (NodeId, ConnId))>,
    /// Nodes that drop every dial to them (unreachable).
    unreachable: Vec<NodeId>,
}

impl Net {
    fn new() -> Net {
        Net {
            meshes: BTreeMap::new(),
            pipes: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    fn add(&mut self, mesh: Mesh, peers: &[NodeId], now: Time) {
        let node = mesh.local();
        self.meshes.insert(node, mesh);
        self.mesh(node).set_peers(peers, now);
    }

    fn mesh(&mut self, node: NodeId) -> &mut Mesh {
        self.meshes.get_mut(&node).unwrap()
    }

    fn other(&self, end: (NodeId, ConnId)) -> Option<(NodeId, ConnId)> {
        self.pipes.iter().find_map(|(a, b)| {
            if *a == end {
                Some(*b)
            } else if *b == end {
                Some(*a)
            } else {
                None
            }
        })
    }

    /// Timers, dials, then bytes until quiet; finished connections are torn down.
    fn step(&mut self, now: Time) {
        let nodes: Vec<NodeId> = self.meshes.keys().copied().collect();
        for &n in &nodes {
            for action in self.mesh(n).poll(now) {
                let Action::Dial { conn, peer } = action;
                if self.unreachable.contains(&peer) || !self.meshes.contains_key(&peer) {
                    self.mesh(n).stream_closed(conn, now);
                    continue;
                }
                let theirs = self.mesh(peer).accept(now).unwrap();
                self.pipes.push(((n, conn), (peer, theirs)));
            }
        }
        for _ in 0..50 {
            let mut moved = false;
            for &n in &nodes {
                let conns: Vec<ConnId> = self.mesh(n).conns().collect();
                for c in conns {
                    let out = self.mesh(n).output(c).to_vec();
                    if out.is_empty() {
                        continue;
                    }
                    self.mesh(n).consumed(c, out.len(), now);
                    if let Some((m, d)) = self.other((n, c)) {
                        if self.meshes.contains_key(&m) {
                            self.mesh(m).received(d, &out, now);
                            moved = true;
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
        for &n in &nodes {
            let conns: Vec<ConnId> = self.mesh(n).conns().collect();
            for c in conns {
                if self.mesh(n).finished(c) {
                    if let Some((m, d)) = self.other((n, c)) {
                        if self.meshes.contains_key(&m) {
                            self.mesh(m).stream_closed(d, now);
                        }
                    }
                    self.pipes.retain(|(a, b)| *a != (n, c) && *b != (n, c));
                }
            }
        }
    }

    fn status(&mut self, node: NodeId, peer: NodeId) -> PeerStatus {
        self.mesh(node)
            .status()
            .into_iter()
            .find(|s| s.node == peer)
            .unwrap()
    }
}

fn mesh(ca: &TestCa, node: NodeId, first_session: u64) -> Mesh {
    Mesh::new(
        context(ca.credentials("g", node)),
        MeshConfig::default(),
        first_session,
        TlsKeys::shared(),
    )
}

fn key(mesh: &Mesh, peer: NodeId, d: Direction, session: u64) -> [u8; 32] {
    *mesh.keys().key(peer, d, session, 0).expect("key installed")
}

fn pair() -> (TestCa, Net) {
    let ca = TestCa::new("g");
    let mut net = Net::new();
    net.add(mesh(&ca, 1, 100), &[2], at(0));
    net.add(mesh(&ca, 2, 200), &[1], at(0));
    (ca, net)
}

#[test]
fn two_nodes_connect_once_and_agree_on_keys_per_direction() {
    let (_ca, mut net) = pair();
    net.step(at(0));
    let (s1, s2) = (net.status(1, 2), net.status(2, 1));
    assert_eq!(s1.state, LinkState::Established);
    assert_eq!(s2.state, LinkState::Established);
    assert!(s1.dialer && !s2.dialer, "the lower id dials");
    assert_eq!((s1.tx_session, s1.rx_session), (Some(100), Some(200)));
    assert_eq!((s2.tx_session, s2.rx_session), (Some(200), Some(100)));
    assert_eq!(
        s1.cert.as_ref().unwrap().subject,
        "CN=node-2.g.weft.internal"
    );
    let one = &net.meshes[&1];
    let two = &net.meshes[&2];
    assert_eq!(
        key(one, 2, Direction::Send, 100),
        key(two, 1, Direction::Receive, 100)
    );
    assert_eq!(
        key(two, 1, Direction::Send, 200),
        key(one, 2, Direction::Receive, 200)
    );
    assert_ne!(
        key(one, 2, Direction::Send, 100),
        key(two, 1, Direction::Send, 200)
    );
    assert_eq!(
        net.mesh(1).take_key_events(),
        [KeyEvent::Send {
            peer: 2,
            session: 100
        }]
    );
    assert_eq!(
        net.mesh(2).take_key_events(),
        [KeyEvent::Send {
            peer: 1,
            session: 200
        }]
    );
    let c1 = *net.mesh(1).counters();
    assert_eq!((c1.dials, c1.accepts, c1.established), (1, 0, 1));
    assert_eq!(net.mesh(2).counters().accepts, 1);
    assert_eq!(net.mesh(1).counters().refused_total(), 0);
    assert_eq!(net.pipes.len(), 1, "one connection per pair");
}

#[test]
fn keepalives_hold_a_quiet_connection_and_silence_ends_it() {
    let (_ca, mut net) = pair();
    net.step(at(0));
    for t in (5..=120).step_by(5) {
        net.step(at(t));
    }
    assert_eq!(net.status(1, 2).state, LinkState::Established);
    assert_eq!(net.mesh(1).counters().timeouts, 0);
    assert_eq!(net.status(1, 2).handshakes, 1);
    // Node 2 goes dark: node 1 times the connection out and redials (in vain).
    net.unreachable.push(2);
    net.meshes.remove(&2);
    for t in (125..=200).step_by(5) {
        net.step(at(t));
    }
    assert_eq!(net.mesh(1).counters().timeouts, 1);
    assert_ne!(net.status(1, 2).state, LinkState::Established);
    // Keys of the last connection stay: the data path keeps running on them.
    assert!(net.mesh(1).keys().key(2, Direction::Send, 100, 0).is_some());
}

#[test]
fn a_fresh_handshake_replaces_the_connection_and_its_sessions() {
    let (_ca, mut net) = pair();
    net.step(at(0));
    net.mesh(1).take_key_events();
    let old_key = key(&net.meshes[&1], 2, Direction::Send, 100);
    let after = MeshConfig::default().rehandshake_after.as_secs();
    for t in (10..=after + 10).step_by(10) {
        net.step(at(t));
    }
    let s1 = net.status(1, 2);
    assert_eq!(s1.handshakes, 2);
    assert_eq!((s1.tx_session, s1.rx_session), (Some(101), Some(201)));
    assert_eq!(
        net.mesh(1).take_key_events(),
        [KeyEvent::Send {
            peer: 2,
            session: 101
        }]
    );
    assert_ne!(key(&net.meshes[&1], 2, Direction::Send, 101), old_key);
    assert!(net.mesh(1).keys().key(2, Direction::Send, 100, 0).is_none());
    // The peer's previous session stays receivable until the data path moves on.
    assert!(net
        .mesh(1)
        .keys()
        .key(2, Direction::Receive, 200, 0)
        .is_some());
    // The listener sees the new connection established first and closes the old one.
    assert_eq!(net.mesh(2).counters().replaced, 1);
    assert_eq!(net.pipes.len(), 1);
}

#[test]
fn a_restarted_peer_is_reconnected_with_new_sessions() {
    let (ca, mut net) = pair();
    net.step(at(0));
    // Node 2 reboots: its connection drops, it comes back with higher sessions.
    net.meshes.remove(&2);
    let pipes: Vec<_> = net.pipes.drain(..).collect();
    for (a, b) in pipes {
        for (n, c) in [a, b] {
            if n == 1 {
                net.mesh(1).stream_closed(c, at(5));
            }
        }
    }
    net.add(mesh(&ca, 2, 300), &[1], at(5));
    for t in 5..10 {
        net.step(at(t));
    }
    let s1 = net.status(1, 2);
    assert_eq!(s1.state, LinkState::Established);
    assert_eq!((s1.tx_session, s1.rx_session), (Some(101), Some(300)));
    assert_eq!(net.mesh(1).counters().peer_closed, 1);
}

#[test]
fn only_configured_peers_of_the_grid_are_accepted() {
    let ca = TestCa::new("g");
    let mut net = Net::new();
    net.add(mesh(&ca, 1, 100), &[2], at(0));
    net.add(mesh(&ca, 2, 200), &[1], at(0));
    // Node 3 has a certificate of the grid, but node 4's peer list lacks it...
    net.add(mesh(&ca, 3, 300), &[4], at(0));
    net.add(mesh(&ca, 4, 400), &[2], at(0));
    net.step(at(0));
    assert_eq!(net.mesh(4).counters().refused_not_a_peer, 1);
    assert_ne!(net.status(3, 4).state, LinkState::Established);
    // ...and node 2's list lacks 4 (4 is the higher id: 2 dials only 1).
    assert_eq!(net.status(2, 1).state, LinkState::Established);
}

#[test]
fn a_node_of_another_ca_gets_nothing() {
    let (_ca, mut net) = pair();
    let foreign = TestCa::new("g");
    // Node 0 of another CA dials node 1 (it is the lower id of the pair).
    net.add(mesh(&foreign, 0, 1), &[1], at(0));
    net.mesh(1).set_peers(&[0, 2], at(0));
    net.step(at(0));
    assert_eq!(net.status(1, 2).state, LinkState::Established);
    assert_ne!(net.status(1, 0).state, LinkState::Established);
    // The stranger refuses node 1's certificate (another CA, from its view).
    assert_eq!(net.mesh(0).counters().refused_unknown_ca, 1);
    assert_eq!(net.mesh(1).counters().refused_peer_alert, 1);
    assert!(net.mesh(1).keys().peer(0).is_none());
}

#[test]
fn a_failed_dial_backs_off() {
    let (_ca, mut net) = pair();
    net.unreachable.push(2);
    for t in 0..40 {
        net.step(at(t));
    }
    // 1, 2, 4, 8, 16 s apart: 0, 1, 3, 7, 15, 31.
    assert_eq!(net.mesh(1).counters().dials, 6);
    net.unreachable.clear();
    net.step(at(61));
    assert_eq!(net.status(1, 2).state, LinkState::Established);
}

#[test]
fn removing_a_peer_closes_its_connection_and_wipes_its_keys() {
    let (_ca, mut net) = pair();
    net.step(at(0));
    net.mesh(1).set_peers(&[], at(1));
    net.step(at(1));
    assert!(net.mesh(1).keys().peer(2).is_none());
    assert!(net.mesh(1).status().is_empty());
    assert!(net.pipes.is_empty());
    assert_eq!(net.mesh(2).counters().peer_closed, 1);
}

#[test]
fn a_second_keys_or_a_stray_ack_is_a_bad_message() {
    let (_ca, mut net) = pair();
    net.step(at(0));
    let (end1, _) = net.pipes[0];
    // Node 1 announces a second session on the same connection: node 2 refuses.
    net.mesh(1)
        .send(end1.1, Message::Keys { session: 999 }, at(1));
    net.step(at(1));
    assert_eq!(net.mesh(2).counters().bad_messages, 1);
    assert!(net.pipes.is_empty(), "node 2 closed the connection");
    // Node 1 dials again; the pair gets new sessions.
    net.step(at(3));
    assert_eq!(net.status(1, 2).handshakes, 2);
    assert_eq!(net.status(2, 1).rx_session, Some(101));
}
