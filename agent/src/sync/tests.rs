use super::*;
use crate::grid::{Change, Kv};
use crate::schema::Prefix;

fn prefix() -> Prefix {
    Prefix::new("g").unwrap()
}

fn node_doc(n: u8) -> Value {
    json!({
        "uplink": {"address": format!("192.0.2.1{n}/24"), "gateway": "192.0.2.1"},
        "link": {"address": format!("10.81.0.{n}/16")},
        "grid": {"node": n},
        "networks": [{"name": "grid", "vni": 100}],
        "dns": {"grid": "g"},
    })
}

fn local(n: u8) -> Local {
    Local {
        me: NodeId::new(u16::from(n)).unwrap(),
        doc: node_doc(n),
    }
}

struct Store {
    g: GridView,
    rev: i64,
}

impl Store {
    fn new() -> Store {
        Store {
            g: GridView::default(),
            rev: 1,
        }
    }

    fn put(&mut self, rel: &str, value: Value) {
        self.rev += 1;
        let e = self.g.apply(
            &prefix(),
            &Change::Put(Kv {
                key: format!("/weft/g/{rel}"),
                value: value.to_string().into_bytes(),
                create_revision: self.rev,
                mod_revision: self.rev,
                lease: 0,
            }),
        );
        assert_eq!(e, crate::grid::Effect::Changed, "{rel}");
    }

    fn delete(&mut self, rel: &str) {
        self.rev += 1;
        self.g.apply(
            &prefix(),
            &Change::Delete {
                key: format!("/weft/g/{rel}"),
                mod_revision: self.rev,
            },
        );
    }

    fn node(&mut self, n: u8) {
        self.put(
            &format!("nodes/{n}"),
            json!({"node": n, "name": format!("h{n}"), "address": format!("192.0.2.1{n}"), "networks": ["grid"]}),
        );
    }

    fn container(&mut self, name: &str, node: u8, last: u8, service: Option<&str>) {
        let mut c = json!({
            "name": name, "network": "grid", "address": format!("10.81.{node}.{last}"),
            "mac": format!("02:42:0a:51:{node:02x}:{last:02x}"), "node": node,
        });
        if let Some(s) = service {
            c["service"] = json!(s);
        }
        self.put(&format!("containers/{}", name.to_ascii_lowercase()), c);
    }
}

fn cmds(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|o| {
            let key = match o.cmd {
                "peer-add" => "node",
                "peer-remove" | "backend-set" | "backend-remove" => "address",
                "fdb-add" | "fdb-remove" => "mac",
                _ => "name",
            };
            let what = o
                .args
                .get(key)
                .map(|v| v.to_string().trim_matches('"').to_string())
                .unwrap_or_default();
            format!("{} {what}", o.cmd).trim().to_string()
        })
        .collect()
}

fn desired_ok(s: &Store, l: &Local) -> Desired {
    let (d, left) = desired(&s.g, l).unwrap();
    assert!(left.is_empty(), "{left:?}");
    d
}

#[test]
fn a_fresh_appliance_gets_one_apply_then_the_fdb() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    s.container("web-1", 2, 2, Some("web"));
    s.container("db-1", 1, 2, None);
    let d = desired_ok(&s, &local(1));
    let ops = plan(None, &d);
    assert_eq!(ops[0].cmd, "apply");
    let doc = &ops[0].args;
    Config::from_json_value(doc).unwrap();
    assert_eq!(doc["peers"].as_array().unwrap().len(), 1);
    assert_eq!(doc["peers"][0]["node"], 2);
    assert_eq!(doc["peers"][0]["address"], "192.0.2.12");
    assert_eq!(doc["containers"].as_array().unwrap().len(), 2);
    assert_eq!(doc["grid"]["node"], 1);
    let fdb: Vec<&Value> = ops[1..].iter().map(|o| &o.args).collect();
    assert_eq!(ops[1..].iter().filter(|o| o.cmd == "fdb-add").count(), 2);
    assert!(fdb
        .iter()
        .any(|e| e["local"] == true && e["ip"] == "10.81.1.2"));
    assert!(fdb
        .iter()
        .any(|e| e["peer"] == "192.0.2.12" && e["ip"] == "10.81.2.2" && e["vni"] == 100));
    // Nothing changed: nothing to do.
    assert!(plan(Some(&d), &d).is_empty());
}

#[test]
fn a_remote_container_becomes_a_record_and_an_fdb_entry_and_leaves_again() {
    let mut s = Store::new();
    s.node(1);
    s.node(3);
    let before = desired_ok(&s, &local(3));
    s.container("web-1", 1, 7, None);
    let after = desired_ok(&s, &local(3));
    assert_eq!(
        cmds(&plan(Some(&before), &after)),
        ["container-add web-1", "fdb-add 02:42:0a:51:01:07"]
    );
    s.delete("containers/web-1");
    let gone = desired_ok(&s, &local(3));
    assert_eq!(
        cmds(&plan(Some(&after), &gone)),
        ["container-remove web-1", "fdb-remove 02:42:0a:51:01:07"]
    );
}

#[test]
fn a_dead_node_loses_its_records_backends_and_fdb_before_its_peer() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    s.node(3);
    s.put(
        "services/web",
        json!({"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80, "target_port": 8080}),
    );
    s.container("web-1", 2, 2, Some("web"));
    s.container("web-2", 3, 2, Some("web"));
    let alive = desired_ok(&s, &local(1));
    let web = &alive.services["web"];
    assert_eq!(web.backends.len(), 2);
    assert!(web
        .backends
        .contains_key(&("10.81.2.2".parse().unwrap(), 8080)));
    s.delete("nodes/2");
    let dead = desired_ok(&s, &local(1));
    let ops = cmds(&plan(Some(&alive), &dead));
    assert_eq!(
        ops,
        [
            "container-remove web-1",
            "backend-remove 10.81.2.2",
            "fdb-remove 02:42:0a:51:02:02",
            "peer-remove 192.0.2.12"
        ]
    );
    // It returns: everything comes back, the peer before what needs it.
    s.node(2);
    let back = desired_ok(&s, &local(1));
    assert_eq!(back, alive);
    let ops = cmds(&plan(Some(&dead), &back));
    assert_eq!(
        ops,
        [
            "peer-add 2",
            "container-add web-1",
            "backend-set 10.81.2.2",
            "fdb-add 02:42:0a:51:02:02"
        ]
    );
}

#[test]
fn the_node_document_changing_means_a_whole_apply_and_the_fdb_again() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    s.container("web-1", 2, 2, None);
    let l = local(1);
    let d1 = desired_ok(&s, &l);
    let mut l2 = l.clone();
    l2.doc["dns"]["ttl"] = json!(5);
    let d2 = desired_ok(&s, &l2);
    assert_eq!(
        cmds(&plan(Some(&d1), &d2)),
        ["apply", "fdb-add 02:42:0a:51:02:02"]
    );
}

#[test]
fn a_peer_that_moves_is_removed_at_its_old_address_first() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    s.container("web-1", 2, 2, None);
    let d1 = desired_ok(&s, &local(1));
    s.put(
        "nodes/2",
        json!({"node": 2, "name": "h2", "address": "192.0.2.22", "networks": ["grid"]}),
    );
    let d2 = desired_ok(&s, &local(1));
    assert_eq!(
        cmds(&plan(Some(&d1), &d2)),
        [
            "peer-remove 192.0.2.12",
            "fdb-remove 02:42:0a:51:02:02",
            "peer-add 2",
            "fdb-add 02:42:0a:51:02:02"
        ]
    );
}

#[test]
fn entries_the_appliance_would_refuse_are_left_out_and_named() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    // Node 3 claims node 2's underlay address: the appliance refuses two peers at
    // one address, so one of them is left out (and its containers' FDB entries).
    s.put(
        "nodes/3",
        json!({"node": 3, "name": "h3", "address": "192.0.2.12", "networks": ["grid"]}),
    );
    // Node 4 claims this node's own uplink address.
    s.put(
        "nodes/4",
        json!({"node": 4, "name": "h4", "address": "192.0.2.11", "networks": ["grid"]}),
    );
    s.container("web-3", 3, 2, None);
    let (d, left) = desired(&s.g, &local(1)).unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|l| l.what.starts_with("peer ")), "{left:?}");
    Config::from_json_value(&d.document()).unwrap();
    assert_eq!(d.peers.len(), 1);
    assert!(d.fdb.is_empty(), "{:?}", d.fdb);
    // A service whose VIP clashes with another's is left out, not the file's.
    s.put(
        "services/a",
        json!({"name": "a", "vip": "10.81.255.1", "proto": "tcp", "port": 80}),
    );
    s.put(
        "services/b",
        json!({"name": "b", "vip": "10.81.255.1", "proto": "tcp", "port": 80}),
    );
    let (d, left) = desired(&s.g, &local(1)).unwrap();
    Config::from_json_value(&d.document()).unwrap();
    assert_eq!(d.services.len(), 1);
    assert_eq!(left.len(), 3, "{left:?}");
}

#[test]
fn the_node_document_wins_over_the_grid_and_is_never_left_out() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    s.container("web-1", 2, 2, None);
    let mut l = local(1);
    l.doc["containers"] = json!([{"name": "WEB-1", "address": "10.81.1.99"}]);
    let d = desired_ok(&s, &l);
    assert_eq!(d.containers["web-1"].0["address"], "10.81.1.99");
    assert_eq!(d.containers["web-1"].1, Origin::File);
    // Its FDB entry would point the name's address elsewhere: it is not pushed.
    assert!(d.fdb.is_empty());
    // A document the appliance refuses for the node's own entry is unappliable.
    l.doc["publish"] = json!([{"proto": "udp", "host_port": 53, "container_address": "10.81.1.2", "container_port": 53}]);
    let e = desired(&s.g, &l).unwrap_err();
    assert!(e.field.starts_with("publish[0]"), "{e}");
}

#[test]
fn published_ports_follow_their_scope() {
    let mut s = Store::new();
    s.node(1);
    s.node(2);
    let rule = |port: u16, last: u8| json!({"proto": "tcp", "host_port": port, "container_address": format!("10.81.2.{last}"), "container_port": 80});
    s.put("publish/tcp-8080/2", rule(8080, 2));
    s.put("publish/tcp-9090/all", rule(9090, 3));
    s.put("publish/tcp-9090/1", rule(9090, 4));
    let d = desired_ok(&s, &local(1));
    assert_eq!(d.publish.len(), 1);
    assert_eq!(
        d.publish.values().next().unwrap().0["container_address"],
        "10.81.2.4"
    );
    let d2 = desired_ok(&s, &local(2));
    assert_eq!(d2.publish.len(), 2);
}

#[test]
fn planning_is_idempotent_over_random_grids() {
    // Any two states: applying the plan's effect (desired) then planning again is
    // empty, and the plan from nothing starts with the whole document.
    let mut rng = weft_netstack::base::test_rng::Rng::new(0x1234_5678);
    let mut rnd = |m: u32| rng.below(m.into()) as u32;
    let mut prev: Option<Desired> = None;
    let mut s = Store::new();
    s.node(1);
    for _ in 0..200 {
        match rnd(4) {
            0 => s.node(2 + rnd(5) as u8),
            1 => s.delete(&format!("nodes/{}", 2 + rnd(5))),
            2 => {
                let n = 1 + rnd(6) as u8;
                s.container(&format!("c{}", rnd(20)), n, 2 + rnd(200) as u8, Some("web"))
            }
            _ => s.delete(&format!("containers/c{}", rnd(20))),
        }
        let (d, _) = desired(&s.g, &local(1)).unwrap();
        Config::from_json_value(&d.document()).unwrap();
        let ops = plan(prev.as_ref(), &d);
        if prev.as_ref() == Some(&d) {
            assert!(ops.is_empty());
        }
        assert!(plan(Some(&d), &d).is_empty());
        assert_eq!(plan(None, &d)[0].cmd, "apply");
        prev = Some(d);
    }
}
