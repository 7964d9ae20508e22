//! The load balancer on its own: services and backends refused or accepted, the Maglev
//! spread by weight, health taking backends out and back, names resolved.

use super::*;
use alloc::vec;

const VIP: Ipv4Address = Ipv4Address::new(10, 81, 255, 1);

fn b(last: u8, weight: u32) -> BackendConfig {
    BackendConfig {
        address: Ipv4Address::new(10, 81, 1, last),
        port: 8000,
        weight,
    }
}

fn svc(name: &str, backends: Vec<BackendConfig>) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        vip: Some(VIP),
        proto: Transport::Tcp,
        port: 80,
        mode: ServiceMode::Vip,
        backends,
        health: None,
    }
}

fn tuple(i: u32) -> FlowTuple {
    FlowTuple::new(
        Proto::Tcp,
        Endpoint::new(
            Ipv4Address::from(0x0a51_0400 + (i & 0xff)),
            1024 + (i >> 8) as u16,
        ),
        Endpoint::new(VIP, 80),
    )
}

#[test]
fn service_config_parses_with_defaults_and_refuses_unknown_fields() {
    let s: ServiceConfig = serde_json::from_str(
        r#"{"name":"web","vip":"10.81.255.1","proto":"tcp","port":80,
            "backends":[{"address":"10.81.1.10","port":8000},
                        {"address":"10.81.2.10","port":8000,"weight":3}],
            "health":{"rise":1}}"#,
    )
    .unwrap();
    assert_eq!(s.mode, ServiceMode::Vip);
    assert_eq!(s.backends[0].weight, 1);
    assert_eq!(s.backends[1].weight, 3);
    let h = s.health.unwrap();
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.rise, h.fall),
        (2000, 1000, 1, 3)
    );
    validate_services(&[s]).unwrap();

    for bad in [
        r#"{"name":"web","proto":"tcp","port":80,"color":"red"}"#,
        r#"{"name":"web","proto":"tcp","port":80,"backends":[{"address":"10.81.1.1","port":1,"w":1}]}"#,
        r#"{"name":"web","proto":"tcp","port":80,"health":{"every":5}}"#,
        r#"{"name":"web","proto":"tcp","port":80,"mode":"ipvs"}"#,
    ] {
        assert!(serde_json::from_str::<ServiceConfig>(bad).is_err(), "{bad}");
    }
    let rr: ServiceConfig =
        serde_json::from_str(r#"{"name":"db","proto":"tcp","port":5432,"mode":"dnsrr"}"#).unwrap();
    validate_services(&[rr]).unwrap();
}

#[test]
fn validation_errors_name_the_field() {
    let err = |list: &[ServiceConfig]| validate_services(list).unwrap_err().field;
    let ok = svc("web", vec![b(1, 1)]);
    assert_eq!(
        err(&[ServiceConfig {
            name: "Web!".into(),
            ..ok.clone()
        }]),
        "services[0].name"
    );
    assert_eq!(err(&[ok.clone(), svc("web", vec![])]), "services[1].name");
    let other_name = ServiceConfig {
        name: "api".into(),
        ..ok.clone()
    };
    assert_eq!(err(&[ok.clone(), other_name.clone()]), "services[1].port");
    validate_services(&[
        ok.clone(),
        ServiceConfig {
            port: 81,
            ..other_name
        },
    ])
    .unwrap();
    assert_eq!(
        err(&[ServiceConfig {
            vip: None,
            ..ok.clone()
        }]),
        "services[0].vip"
    );
    assert_eq!(
        err(&[ServiceConfig {
            mode: ServiceMode::Dnsrr,
            ..ok.clone()
        }]),
        "services[0].vip"
    );
    assert_eq!(
        err(&[ServiceConfig {
            port: 0,
            ..ok.clone()
        }]),
        "services[0].port"
    );
    assert_eq!(
        err(&[svc(
            "web",
            vec![b(1, 1), BackendConfig { port: 0, ..b(2, 1) }]
        )]),
        "services[0].backends[1].port"
    );
    assert_eq!(
        err(&[svc("web", vec![b(1, 1), b(1, 2)])]),
        "services[0].backends[1]"
    );
    assert_eq!(
        err(&[svc("web", vec![b(1, MAX_WEIGHT + 1)])]),
        "services[0].backends[0].weight"
    );
    let slow = HealthSpec {
        timeout_ms: 5000,
        ..HealthSpec::default()
    };
    assert_eq!(
        err(&[ServiceConfig {
            health: Some(slow),
            ..ok.clone()
        }]),
        "services[0].health.timeout_ms"
    );
    let e = validate_services(&[ServiceConfig { vip: None, ..ok }]).unwrap_err();
    assert_eq!(
        alloc::format!("{e}"),
        "services[0].vip: required in vip mode"
    );
}

#[test]
fn refused_changes_leave_the_balancer_unchanged() {
    let mut lb = LoadBalancer::new();
    lb.add_service(svc("web", vec![b(1, 1)]), Instant::ZERO)
        .unwrap();
    assert!(matches!(
        lb.add_service(svc("web", vec![b(2, 1)]), Instant::ZERO),
        Err(LbError::Invalid(_))
    ));
    assert!(matches!(
        lb.set_backend("web", b(2, MAX_WEIGHT + 1), Instant::ZERO),
        Err(LbError::Invalid(_))
    ));
    assert_eq!(lb.service("web").unwrap().backends, vec![b(1, 1)]);
    assert_eq!(
        lb.set_backend("nope", b(2, 1), Instant::ZERO),
        Err(LbError::UnknownService("nope".into()))
    );
    assert!(matches!(
        lb.remove_backend("web", b(9, 1).endpoint()),
        Err(LbError::UnknownBackend(_))
    ));
    let bad_size = LoadBalancer::with_table_size(100).add_service(svc("x", vec![]), Instant::ZERO);
    assert_eq!(
        bad_size,
        Err(LbError::Table(MaglevError::SizeNotPrime(100)))
    );
}

#[test]
fn pick_matches_vip_port_and_protocol_and_resolve_follows_mode() {
    let mut lb = LoadBalancer::new();
    lb.add_service(svc("web", vec![b(1, 1), b(2, 0)]), Instant::ZERO)
        .unwrap();
    let mut rr = svc("db", vec![b(3, 1), b(4, 0), b(5, 1)]);
    rr.mode = ServiceMode::Dnsrr;
    rr.vip = None;
    lb.add_service(rr, Instant::ZERO).unwrap();
    let t = tuple(1);
    assert_eq!(
        lb.pick(Proto::Tcp, Endpoint::new(VIP, 80), &t),
        Pick::Backend {
            backend: b(1, 1).endpoint(),
            tag: 1
        }
    );
    assert_eq!(
        lb.pick(Proto::Udp, Endpoint::new(VIP, 80), &t),
        Pick::NotAService
    );
    assert_eq!(
        lb.pick(Proto::Tcp, Endpoint::new(VIP, 81), &t),
        Pick::NotAService
    );
    assert!(lb.is_vip(VIP));
    assert_eq!(lb.resolve("web"), Some(vec![VIP]));
    assert_eq!(
        lb.resolve("db"),
        Some(vec![b(3, 1).address, b(5, 1).address])
    );
    assert_eq!(lb.resolve("nope"), None);
}

#[test]
fn generation_moves_with_every_change_resolve_may_see() {
    let mut lb = LoadBalancer::new();
    let mut seen = lb.generation();
    let mut moved = |lb: &LoadBalancer| {
        let now = lb.generation();
        core::mem::replace(&mut seen, now) != now
    };
    let mut rr = svc("db", vec![b(3, 1)]);
    rr.mode = ServiceMode::Dnsrr;
    rr.vip = None;
    rr.health = Some(HealthSpec {
        fall: 1,
        ..HealthSpec::default()
    });
    lb.add_service(rr, Instant::ZERO).unwrap();
    assert!(moved(&lb));
    lb.set_backend("db", b(4, 2), Instant::ZERO).unwrap();
    assert!(moved(&lb));
    assert_eq!(lb.services().count(), 1);
    // A check that changes nothing leaves it; one that takes a backend out moves it.
    let checks = lb.due(Instant::ZERO);
    assert!(!moved(&lb));
    lb.report(checks[0].id, true, Instant::ZERO);
    assert!(!moved(&lb));
    lb.report(checks[1].id, false, Instant::ZERO);
    assert!(moved(&lb));
    assert_eq!(lb.resolve("db"), Some(vec![b(3, 1).address]));
    lb.remove_backend("db", b(3, 1).endpoint()).unwrap();
    assert!(moved(&lb));
    assert_eq!(lb.resolve("db"), Some(vec![]));
    lb.remove_service("db").unwrap();
    assert!(moved(&lb));
}

#[test]
fn removing_one_of_n_backends_moves_about_one_nth_of_flows() {
    for n in [3u8, 5, 10] {
        let mut lb = LoadBalancer::new();
        let backends: Vec<BackendConfig> = (1..=n).map(|i| b(i, 1)).collect();
        lb.add_service(svc("web", backends.clone()), Instant::ZERO)
            .unwrap();
        let vip = Endpoint::new(VIP, 80);
        let before: Vec<Pick> = (0..20_000)
            .map(|i| lb.pick(Proto::Tcp, vip, &tuple(i)))
            .collect();
        let gone = backends[0].endpoint();
        lb.remove_backend("web", gone).unwrap();
        let mut moved = 0;
        let mut survivors_moved = 0;
        for (i, was) in before.iter().enumerate() {
            let now = lb.pick(Proto::Tcp, vip, &tuple(i as u32));
            if now != *was {
                moved += 1;
                if !matches!(was, Pick::Backend { backend, .. } if *backend == gone) {
                    survivors_moved += 1;
                }
            }
        }
        let share = moved as f64 / 20_000.0;
        let ideal = 1.0 / n as f64;
        assert!(
            (share - ideal).abs() < 0.25 * ideal,
            "{n}: {share} vs {ideal}"
        );
        assert!(survivors_moved < 20_000 / 100, "{n}: {survivors_moved}");
    }
}
