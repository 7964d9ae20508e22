use super::*;
use crate::schema::Proto;
use crate::store::file::FileStore;
use std::collections::BTreeSet;

struct Tmp(std::path::PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store(tag: &str) -> (Tmp, Store) {
    let d = std::env::temp_dir().join(format!("weft-reg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let s = Store::File(FileStore::open(&d.join("grid.json")).unwrap());
    (Tmp(d), s)
}

fn n(x: u16) -> NodeId {
    NodeId::new(x).unwrap()
}

fn prefix() -> Prefix {
    Prefix::new("g").unwrap()
}

fn ctr(name: &str, last: u8, node: u8) -> ContainerRecord {
    ContainerRecord {
        name: name.into(),
        service: None,
        network: Some("grid".into()),
        address: Ipv4Addr::new(10, 81, node, last),
        mac: None,
        node: n(u16::from(node)),
        owner: None,
    }
}

#[tokio::test]
async fn node_ids_are_unique_and_a_returning_name_gets_its_old_one() {
    let (_t, s) = store("ids");
    let p = prefix();
    // Many hosts register at once: every name gets its own id.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (s, p) = (s.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            claim_id(&s, &p, &format!("host-{i}"), None, 254)
                .await
                .unwrap()
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()));
    }
    assert_eq!(ids.len(), 20);
    assert_eq!(ids.iter().next().copied(), Some(n(1)));
    // The same name again: the same id.
    let again = claim_id(&s, &p, "host-7", None, 254).await.unwrap();
    let first = claim_id(&s, &p, "host-7", None, 254).await.unwrap();
    assert_eq!(again, first);
    // A config that names an id: honoured when free, refused when another holds it.
    assert_eq!(
        claim_id(&s, &p, "pinned", Some(n(200)), 254).await.unwrap(),
        n(200)
    );
    assert!(matches!(
        claim_id(&s, &p, "other", Some(n(200)), 254).await,
        Err(RegisterError::IdMismatch(_))
    ));
    assert!(matches!(
        claim_id(&s, &p, "pinned", Some(n(201)), 254).await,
        Err(RegisterError::IdMismatch(_))
    ));
}

#[tokio::test]
async fn a_live_node_entry_of_another_lease_is_busy() {
    let (_t, s) = store("busy");
    let p = prefix();
    let rec = NodeRecord {
        node: n(1),
        name: "h1".into(),
        address: Ipv4Addr::new(192, 0, 2, 11),
        private_address: None,
        public_address: None,
        region: None,
        networks: vec![],
    };
    announce(&s, &p, &rec, 7).await.unwrap();
    // The same lease again is fine.
    announce(&s, &p, &rec, 7).await.unwrap();
    // Another lease: busy, and said to be the same host when the entry matches.
    assert!(matches!(
        announce(&s, &p, &rec, 8).await,
        Err(RegisterError::Busy {
            lease: 7,
            same_host: true,
            ..
        })
    ));
    let other = NodeRecord {
        address: Ipv4Addr::new(192, 0, 2, 99),
        ..rec.clone()
    };
    assert!(matches!(
        announce(&s, &p, &other, 8).await,
        Err(RegisterError::Busy {
            same_host: false,
            ..
        })
    ));
}

#[tokio::test]
async fn names_and_addresses_are_unique_in_the_grid() {
    let (_t, s) = store("ctr");
    let p = prefix();
    add_container(&s, &p, n(1), &ctr("web-1", 2, 1))
        .await
        .unwrap();
    // Same name from another node: refused, naming the holder.
    let e = add_container(&s, &p, n(2), &ctr("WEB-1", 3, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Refusal::Conflict { field: "name", .. }),
        "{e:?}"
    );
    assert!(e.body().message.contains("node 1"), "{:?}", e.body());
    // Same address under another name: refused.
    let mut c = ctr("web-2", 2, 1);
    c.name = "web-2".into();
    let e = add_container(&s, &p, n(1), &c).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Refusal::Conflict {
                field: "address",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.body().message.contains("web-1"), "{:?}", e.body());
    // The same node re-registering with a new address moves its claim.
    add_container(&s, &p, n(1), &ctr("web-1", 9, 1))
        .await
        .unwrap();
    let (kvs, _) = s.range(&p.dir("addresses/")).await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/weft/g/addresses/10.81.1.9"]);
    // Removal frees both.
    remove_container(&s, &p, "Web-1").await.unwrap();
    assert!(s.range(&p.dir("")).await.unwrap().0.is_empty());
    assert!(matches!(
        remove_container(&s, &p, "web-1").await,
        Err(Refusal::NotFound { .. })
    ));
}

#[tokio::test]
async fn concurrent_allocations_never_hand_out_one_address_twice() {
    let (_t, s) = store("alloc");
    let p = prefix();
    let share = node_share(Ipv4Addr::new(10, 81, 0, 0), 16, n(3)).unwrap();
    assert_eq!(
        share,
        (Ipv4Addr::new(10, 81, 3, 1), Ipv4Addr::new(10, 81, 3, 254))
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (s, p) = (s.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            allocate_address(&s, &p, n(3), share, &|_| false, None, None)
                .await
                .unwrap()
                .0
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        assert!(got.insert(t.await.unwrap()));
    }
    assert_eq!(got.len(), 50);
    // An allocated address may be registered by its node, not by another.
    let a = *got.iter().next().unwrap();
    let mut c = ctr("x", 1, 3);
    c.address = a;
    let e = add_container(
        &s,
        &p,
        n(2),
        &ContainerRecord {
            node: n(2),
            ..c.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(
        e,
        Refusal::Conflict {
            field: "address",
            ..
        }
    ));
    add_container(&s, &p, n(3), &c).await.unwrap();
    // In use: not releasable; after removal it is gone with the container.
    assert!(matches!(
        release_address(&s, &p, n(3), a).await,
        Err(Refusal::Conflict { .. })
    ));
    let b = *got.iter().nth(1).unwrap();
    assert!(matches!(
        release_address(&s, &p, n(2), b).await,
        Err(Refusal::Conflict { .. })
    ));
    release_address(&s, &p, n(3), b).await.unwrap();
    assert!(matches!(
        release_address(&s, &p, n(3), b).await,
        Err(Refusal::NotFound { .. })
    ));
    // A full share says so.
    let tiny = (a, a);
    let e = allocate_address(&s, &p, n(3), tiny, &|_| false, None, None)
        .await
        .unwrap_err();
    assert!(e.body().message.contains("no free address"), "{e:?}");
}

#[tokio::test]
async fn a_port_is_published_once_per_node_and_everywhere_excludes_all_others() {
    let (_t, s) = store("pub");
    let p = prefix();
    let rule = |port: u16| PublishRecord {
        proto: Proto::Tcp,
        host_port: port,
        container_address: Ipv4Addr::new(10, 81, 1, 2),
        container_port: 80,
        owner: None,
    };
    add_publish(&s, &p, Scope::Node(n(1)), &rule(8080))
        .await
        .unwrap();
    add_publish(&s, &p, Scope::Node(n(2)), &rule(8080))
        .await
        .unwrap();
    let e = add_publish(&s, &p, Scope::Node(n(1)), &rule(8080))
        .await
        .unwrap_err();
    assert!(e.body().message.contains("on node 1"), "{:?}", e.body());
    let e = add_publish(&s, &p, Scope::All, &rule(8080))
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        Refusal::Conflict {
            field: "host_port",
            ..
        }
    ));
    add_publish(&s, &p, Scope::All, &rule(9090)).await.unwrap();
    let e = add_publish(&s, &p, Scope::Node(n(3)), &rule(9090))
        .await
        .unwrap_err();
    assert!(e.body().message.contains("every node"), "{:?}", e.body());
    let pk = PortKey {
        proto: Proto::Tcp,
        port: 8080,
    };
    remove_publish(&s, &p, Scope::Node(n(1)), pk).await.unwrap();
    assert!(matches!(
        remove_publish(&s, &p, Scope::Node(n(1)), pk).await,
        Err(Refusal::NotFound { .. })
    ));
}

#[tokio::test]
async fn services_keep_vips_apart_and_backends_edit_in_place() {
    let (_t, s) = store("svc");
    let p = prefix();
    let svc = |name: &str| {
        ServiceRecord::from_value(
            &json!({"name": name, "vip": "10.81.255.1", "proto": "tcp", "port": 80}),
        )
        .unwrap()
    };
    put_service(&s, &p, &svc("web")).await.unwrap();
    put_service(&s, &p, &svc("web")).await.unwrap();
    let e = put_service(&s, &p, &svc("api")).await.unwrap_err();
    assert!(matches!(e, Refusal::Conflict { field: "vip", .. }));
    let a = Ipv4Addr::new(10, 81, 1, 2);
    edit_backend(&s, &p, "web", a, 8080, Some(3)).await.unwrap();
    edit_backend(&s, &p, "web", a, 8080, Some(1)).await.unwrap();
    let (kv, rec) = read_service(&s, &p, "web").await.unwrap();
    assert!(kv.mod_revision > 0);
    assert_eq!(rec.item["backends"].as_array().unwrap().len(), 1);
    edit_backend(&s, &p, "web", a, 8080, None).await.unwrap();
    assert!(matches!(
        edit_backend(&s, &p, "web", a, 8080, None).await,
        Err(Refusal::NotFound { .. })
    ));
    remove_service(&s, &p, "web").await.unwrap();
    assert!(matches!(
        remove_service(&s, &p, "web").await,
        Err(Refusal::NotFound { field: "name", .. })
    ));
}

#[tokio::test]
async fn an_owner_finds_and_releases_exactly_what_it_holds_and_twice_is_no_error() {
    let (_t, s) = store("owned");
    let p = prefix();
    let tag = "cni:grid:c0ffee:eth0";
    let share = node_share(Ipv4Addr::new(10, 81, 0, 0), 16, n(1)).unwrap();
    // The attachment: an address, its registration, a published port.
    let (a, _) = allocate_address(&s, &p, n(1), share, &|_| false, None, Some(tag.into()))
        .await
        .unwrap();
    let mine = ContainerRecord {
        address: a,
        owner: Some(tag.into()),
        ..ctr("web-1", 0, 1)
    };
    add_container(&s, &p, n(1), &mine).await.unwrap();
    let rule = |port: u16, owner: Option<&str>| PublishRecord {
        proto: Proto::Tcp,
        host_port: port,
        container_address: a,
        container_port: 80,
        owner: owner.map(str::to_string),
    };
    add_publish(&s, &p, Scope::Node(n(1)), &rule(8080, Some(tag)))
        .await
        .unwrap();
    // Others: untagged, another owner's, and the same tag on another node.
    add_container(&s, &p, n(1), &ctr("plain", 9, 1))
        .await
        .unwrap();
    let other = ContainerRecord {
        owner: Some("cni:grid:beef:eth0".into()),
        ..ctr("other", 10, 1)
    };
    add_container(&s, &p, n(1), &other).await.unwrap();
    let far = ContainerRecord {
        owner: Some(tag.into()),
        ..ctr("far", 11, 2)
    };
    add_container(&s, &p, n(2), &far).await.unwrap();
    add_publish(&s, &p, Scope::Node(n(1)), &rule(9090, None))
        .await
        .unwrap();

    let held = owned(&s, &p, n(1), tag).await.unwrap();
    assert_eq!(
        held.json(),
        serde_json::json!({"containers": ["web-1"], "addresses": [a.to_string()], "publish": ["tcp-8080"]})
    );
    let (released, rev) = release_owned(&s, &p, n(1), tag).await.unwrap();
    assert_eq!(released, held);
    assert!(rev.is_some());
    assert!(owned(&s, &p, n(1), tag).await.unwrap().is_empty());
    // Everything else is still there.
    let (kvs, _) = s.range(&p.dir("containers/")).await.unwrap();
    let names: BTreeSet<String> = kvs
        .iter()
        .map(|kv| kv.key.rsplit('/').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["far", "other", "plain"].map(String::from).into());
    let (kvs, _) = s.range(&p.dir("publish/")).await.unwrap();
    assert_eq!(kvs.len(), 1, "tcp-9090 stays");
    // Again: nothing to release, no error, no revision.
    let (again, rev) = release_owned(&s, &p, n(1), tag).await.unwrap();
    assert!(again.is_empty() && rev.is_none());
}

#[test]
fn the_address_plan_keeps_a_16_as_it_was_and_gives_1016_nodes_a_24_each_in_a_14() {
    let a = Ipv4Addr::new;
    // A /16 (Kontena's 10.81.0.0/16): node n hands out 10.81.n.1-254, ids up to 254.
    assert_eq!(max_node(16), 254);
    assert_eq!(
        node_share(a(10, 81, 0, 0), 16, n(1)),
        Some((a(10, 81, 1, 1), a(10, 81, 1, 254)))
    );
    assert_eq!(
        node_share(a(10, 81, 0, 0), 16, n(254)),
        Some((a(10, 81, 254, 1), a(10, 81, 254, 254)))
    );
    assert_eq!(node_share(a(10, 81, 0, 0), 16, n(255)), None);
    assert_eq!(max_node(15), 507);
    assert_eq!(max_node(14), 1016);
    assert_eq!(max_node(8), 1016);
    assert_eq!(max_node(24), 0);
    // A /14: node n has the /24 n + 3, above the /22 of node addresses, below the
    // top /24 (VIPs).
    let base = a(10, 80, 0, 0);
    assert_eq!(
        node_share(base, 14, n(1)),
        Some((a(10, 80, 4, 1), a(10, 80, 4, 254)))
    );
    assert_eq!(
        node_share(base, 14, n(1016)),
        Some((a(10, 83, 251, 1), a(10, 83, 251, 254)))
    );
    // No share overlaps another, any node's address or the VIP /24.
    let mut shares: Vec<(u32, u32)> = (1..=1016)
        .map(|i| node_share(base, 14, n(i)).unwrap())
        .map(|(f, l)| (u32::from(f), u32::from(l)))
        .collect();
    shares.sort();
    assert!(shares.windows(2).all(|w| w[0].1 < w[1].0));
    for i in 1..=1016 {
        let node = u32::from(n(i).address_in(base, 14).unwrap());
        assert!(
            shares.iter().all(|(f, l)| node < *f || node > *l),
            "node {i}"
        );
    }
    let vips = u32::from(a(10, 83, 255, 0));
    assert!(shares.iter().all(|(_, l)| *l < vips));
}

#[tokio::test]
async fn ids_past_254_are_handed_out_where_the_subnet_has_a_share_for_them() {
    let (_t, s) = store("wide");
    let p = prefix();
    assert_eq!(
        claim_id(&s, &p, "far", Some(n(1000)), max_node(14))
            .await
            .unwrap(),
        n(1000)
    );
    let refused = claim_id(&s, &p, "too-far", Some(n(300)), max_node(16)).await;
    assert!(
        matches!(&refused, Err(RegisterError::IdMismatch(m)) if m.contains("1..=254")),
        "{refused:?}"
    );
}
