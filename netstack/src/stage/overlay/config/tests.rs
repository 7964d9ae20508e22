//! The overlay's config sections: defaults, round trips, what serde refuses, what
//! validation refuses, and which of a peer's addresses is used.

use super::*;
use crate::wire::vxlan::DfPolicy;
use alloc::string::ToString;
use alloc::vec;

const DOC: &str = r#"{
    "grid": {"node": 1},
    "networks": [{"name": "default", "vni": 1}, {"name": "db", "vni": 42, "vlan": 42}],
    "peers": [
        {"node": 2, "name": "node-2", "address": "192.0.2.2", "networks": ["default", "db"]},
        {"node": 3, "address": "192.0.2.3", "networks": ["default"]}
    ]
}"#;

fn parse(doc: &str) -> Result<OverlayConfig, serde_json::Error> {
    serde_json::from_str(doc)
}

#[test]
fn defaults() {
    let cfg = parse(DOC).unwrap();
    assert_eq!(cfg.grid.subnet.0, DEFAULT_SUBNET);
    assert_eq!(cfg.grid.vxlan_port, 4789);
    assert_eq!(cfg.grid.mtu, 1450);
    assert_eq!(cfg.grid.df, DfPolicy::Unset);
    assert!(cfg.grid.udp_checksum);
    assert_eq!(cfg.grid, GridConfig::new(NodeId::new(1).unwrap()));
    assert_eq!(
        cfg.grid.node_address(cfg.grid.node),
        Ipv4Address::new(10, 81, 0, 1)
    );
    assert_eq!(cfg.vni_of("db"), Vni::new(42));
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn round_trip() {
    let cfg = parse(DOC).unwrap();
    let text = serde_json::to_string(&cfg).unwrap();
    assert_eq!(parse(&text).unwrap(), cfg);
    assert!(text.contains("\"subnet\":\"10.81.0.0/16\""), "{text}");
}

#[test]
fn refused_at_parse() {
    for doc in [
        r#"{"grid": {"node": 1, "nodes": 2}}"#,
        r#"{"grid": {"node": 0}}"#,
        r#"{"grid": {"node": 1017}}"#,
        r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 16777216}]}"#,
        r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "x": 1}]}"#,
        r#"{"grid": {"node": 1, "subnet": "10.81.0.0"}}"#,
        r#"{"grid": {"node": 1, "subnet": "10.81.0.0/33"}}"#,
        r#"{"grid": {"node": 1, "mtu": 70000}}"#,
        r#"{"grid": {"node": 1, "df": "sometimes"}}"#,
        r#"{"grid": {"node": 1}, "peers": [{"node": 2, "address": "192.0.2"}]}"#,
        r#"{"grid": {"node": 1}, "extra": {}}"#,
        r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "vlan": 0}]}"#,
        r#"{"grid": {"node": 1}, "networks": [{"name": "a", "vni": 1, "vlan": 4095}]}"#,
    ] {
        assert!(parse(doc).is_err(), "{doc}");
    }
}

#[test]
fn refused_at_validation() {
    let base = parse(DOC).unwrap();
    type Mutation = fn(&mut OverlayConfig);
    let cases: Vec<(Mutation, ConfigError)> = vec![
        (
            |c| c.grid.subnet = Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16)),
            ConfigError::BadSubnet(Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 1), 16))),
        ),
        (
            |c| c.grid.subnet = Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 25)),
            ConfigError::BadSubnet(Subnet(Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 25))),
        ),
        (|c| c.grid.vxlan_port = 0, ConfigError::ZeroPort),
        (|c| c.grid.mtu = 67, ConfigError::MtuOutOfRange(67)),
        (|c| c.grid.mtu = 8951, ConfigError::MtuOutOfRange(8951)),
        (
            |c| c.networks[1].name = "de fault".to_string(),
            ConfigError::BadName("de fault".to_string()),
        ),
        (
            |c| c.networks[1].name = "default".to_string(),
            ConfigError::DuplicateNetworkName("default".to_string()),
        ),
        (
            |c| c.networks[1].vni = c.networks[0].vni,
            ConfigError::DuplicateVni(Vni::new(1).unwrap()),
        ),
        (
            |c| c.networks[0].vlan = c.networks[1].vlan,
            ConfigError::DuplicateVlan(VlanId::new(42).unwrap()),
        ),
        (
            |c| c.networks[1].vlan = None,
            ConfigError::TwoUntagged("db".to_string()),
        ),
        (
            |c| c.peers[0].node = c.grid.node,
            ConfigError::PeerIsSelf(NodeId::new(1).unwrap()),
        ),
        (
            |c| c.peers[1].node = c.peers[0].node,
            ConfigError::DuplicatePeerNode(NodeId::new(2).unwrap()),
        ),
        (
            |c| c.peers[1].name = Some("node-2".to_string()),
            ConfigError::DuplicatePeerName("node-2".to_string()),
        ),
        (
            |c| c.peers[1].address = c.peers[0].address,
            ConfigError::DuplicatePeerAddress(Ipv4Address::new(192, 0, 2, 2)),
        ),
        (
            |c| c.peers[1].address = Some(Ipv4Address::new(127, 0, 0, 1)),
            ConfigError::BadPeerAddress(Ipv4Address::new(127, 0, 0, 1)),
        ),
        (
            |c| c.peers[1].address = Some(Ipv4Address::BROADCAST),
            ConfigError::BadPeerAddress(Ipv4Address::BROADCAST),
        ),
        (
            |c| c.peers[1].networks.push("web".to_string()),
            ConfigError::UnknownNetwork {
                peer: NodeId::new(3).unwrap(),
                network: "web".to_string(),
            },
        ),
        (
            |c| c.peers[1].networks.push("default".to_string()),
            ConfigError::DuplicatePeerNetwork {
                peer: NodeId::new(3).unwrap(),
                network: "default".to_string(),
            },
        ),
    ];
    for (i, (mutate, want)) in cases.into_iter().enumerate() {
        let mut cfg = base.clone();
        mutate(&mut cfg);
        assert_eq!(cfg.validate(), Err(want), "case {i}");
    }
}

#[test]
fn the_address_in_use_follows_the_region() {
    let a = |n: u8| Ipv4Address::new(10, 0, 0, n);
    let public = |n: u8| Ipv4Address::new(203, 0, 113, n);
    let mut grid = GridConfig::new(NodeId::new(1).unwrap());
    grid.region = Some("eu".to_string());
    let peer = |region: Option<&str>,
                address: Option<Ipv4Address>,
                private: Option<Ipv4Address>,
                public: Option<Ipv4Address>| PeerConfig {
        region: region.map(|r| r.to_string()),
        address,
        private_address: private,
        public_address: public,
        ..PeerConfig::new(NodeId::new(2).unwrap(), a(2))
    };
    let private_route = |address| {
        Ok(Route {
            address,
            kind: AddressKind::Private,
        })
    };
    let public_route = |address| {
        Ok(Route {
            address,
            kind: AddressKind::Public,
        })
    };
    let both = |region| peer(region, None, Some(a(2)), Some(public(2)));
    // Same region: private; another region: public.
    assert_eq!(route(&grid, &both(Some("eu"))), private_route(a(2)));
    assert_eq!(route(&grid, &both(Some("us"))), public_route(public(2)));
    // No region is the region "default", on either side.
    assert_eq!(route(&grid, &both(None)), public_route(public(2)));
    let no_region = GridConfig::new(NodeId::new(1).unwrap());
    assert_eq!(route(&no_region, &both(None)), private_route(a(2)));
    assert_eq!(
        route(&no_region, &both(Some("default"))),
        private_route(a(2))
    );
    // `address` alone is both, and stands for whichever is missing.
    let plain = peer(Some("us"), Some(a(3)), None, None);
    assert_eq!(route(&grid, &plain), public_route(a(3)));
    assert_eq!(route(&no_region, &plain), public_route(a(3)));
    let with_private = peer(Some("us"), Some(public(3)), Some(a(3)), None);
    assert_eq!(route(&grid, &with_private), public_route(public(3)));
    let with_private = peer(Some("eu"), Some(public(3)), Some(a(3)), None);
    assert_eq!(route(&grid, &with_private), private_route(a(3)));
    // Same region without a private address: the public one (reachable anyway).
    assert_eq!(
        route(&grid, &peer(Some("eu"), None, None, Some(public(4)))),
        public_route(public(4))
    );
    // Refusals.
    assert_eq!(
        route(&grid, &peer(Some("us"), None, Some(a(5)), None)),
        Err(ConfigError::NoPublicAddress(NodeId::new(2).unwrap()))
    );
    assert_eq!(
        route(&grid, &peer(Some("eu"), None, None, None)),
        Err(ConfigError::NoPeerAddress(NodeId::new(2).unwrap()))
    );
    assert_eq!(
        route(&grid, &peer(None, Some(a(6)), Some(a(7)), Some(public(6)))),
        Err(ConfigError::AmbiguousPeerAddress(NodeId::new(2).unwrap()))
    );
}

#[test]
fn region_fields_are_validated() {
    let doc = r#"{
        "grid": {"node": 1, "region": "eu"},
        "peers": [
            {"node": 2, "region": "eu", "private_address": "10.0.0.2", "public_address": "203.0.113.2"},
            {"node": 3, "region": "us", "private_address": "10.0.0.3", "public_address": "203.0.113.3"}
        ]
    }"#;
    let cfg = parse(doc).unwrap();
    assert_eq!(cfg.validate(), Ok(()));
    let text = serde_json::to_string(&cfg).unwrap();
    assert_eq!(parse(&text).unwrap(), cfg);
    assert!(!text.contains("\"address\""), "{text}");
    type Mutation = fn(&mut OverlayConfig);
    let cases: Vec<(Mutation, ConfigError)> = vec![
        (
            |c| c.grid.region = Some("e u".to_string()),
            ConfigError::BadRegion("e u".to_string()),
        ),
        (
            |c| c.peers[0].region = Some(String::new()),
            ConfigError::BadRegion(String::new()),
        ),
        (
            |c| c.peers[1].private_address = Some(Ipv4Address::BROADCAST),
            ConfigError::BadPeerAddress(Ipv4Address::BROADCAST),
        ),
        (
            |c| c.peers[1].public_address = None,
            ConfigError::NoPublicAddress(NodeId::new(3).unwrap()),
        ),
        (
            |c| c.peers[0].address = Some(Ipv4Address::new(10, 0, 0, 9)),
            ConfigError::AmbiguousPeerAddress(NodeId::new(2).unwrap()),
        ),
        (
            |c| c.peers[0].private_address = Some(Ipv4Address::new(203, 0, 113, 3)),
            ConfigError::DuplicatePeerAddress(Ipv4Address::new(203, 0, 113, 3)),
        ),
    ];
    for (i, (mutate, want)) in cases.into_iter().enumerate() {
        let mut cfg = parse(doc).unwrap();
        mutate(&mut cfg);
        assert_eq!(cfg.validate(), Err(want), "case {i}");
    }
    // Peer 3's private address is not in use here: the same one elsewhere is fine.
    let mut cfg = parse(doc).unwrap();
    cfg.peers[1].private_address = Some(Ipv4Address::new(10, 0, 0, 2));
    assert_eq!(cfg.validate(), Ok(()));
}

#[test]
fn names() {
    assert!(valid_name("a"));
    assert!(valid_name("front-end_1.x"));
    assert!(!valid_name(""));
    assert!(!valid_name("a/b"));
    assert!(!valid_name("ä"));
    assert!(valid_name(&"x".repeat(64)));
    assert!(!valid_name(&"x".repeat(65)));
}

#[test]
fn nodes_past_254_need_a_grid_subnet_of_slash_22_or_wider() {
    let wide = parse(
        r#"{"grid": {"node": 1000},
            "peers": [{"node": 999, "address": "192.0.2.9"}]}"#,
    )
    .unwrap();
    assert_eq!(wide.validate(), Ok(()));
    let node = |n| NodeId::new(n).unwrap();
    assert_eq!(
        wide.grid.node_address(node(999)),
        Ipv4Address::new(10, 81, 3, 237)
    );
    for (doc, refused) in [
        (r#"{"grid": {"node": 255, "subnet": "10.81.0.0/23"}}"#, 255),
        (
            r#"{"grid": {"node": 1, "subnet": "10.81.0.0/24"},
                "peers": [{"node": 300, "address": "192.0.2.9"}]}"#,
            300,
        ),
    ] {
        let c = parse(doc).unwrap();
        assert!(
            matches!(c.validate(), Err(ConfigError::NodeOutOfRange { node: n, .. }) if n == node(refused)),
            "{doc}: {:?}",
            c.validate()
        );
    }
}
