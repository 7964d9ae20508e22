//! `[[publish]]` and `[[services]]` entries as they arrive on the control
//! socket: parse, validate, and apply what validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smoltcp::time::Instant;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};
use weft_netstack::stage::lb::{validate_services, ServiceConfig};
use weft_netstack::stage::nat::{validate_publish_list, Nat, NatConfig, PublishRule};

fuzz_target!(|data: &[u8]| {
    let config = NatConfig::new(
        Ipv4Address::new(192, 0, 2, 10),
        Ipv4Address::new(10, 81, 0, 1),
        Ipv4Cidr::new(Ipv4Address::new(10, 81, 0, 0), 16),
    );
    let mut nat = Nat::new(config, 1);
    if let Ok(rules) = serde_json::from_slice::<Vec<PublishRule>>(data) {
        let valid = validate_publish_list(&rules, &[]).is_ok();
        let applied = rules.iter().all(|r| nat.add_publish(*r).is_ok());
        assert_eq!(valid, applied, "list validation and runtime adds agree");
    }
    if let Ok(services) = serde_json::from_slice::<Vec<ServiceConfig>>(data) {
        let valid = validate_services(&services).is_ok();
        let applied = services
            .into_iter()
            .all(|s| nat.lb_mut().add_service(s, Instant::ZERO).is_ok());
        assert_eq!(valid, applied, "list validation and runtime adds agree");
    }
});
