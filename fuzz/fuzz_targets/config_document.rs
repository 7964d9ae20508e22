//! Arbitrary text as a configuration document: parsing never panics; an accepted
//! document validates and survives a serialize/parse round trip (but for a secret, which
//! shows as "set"); a refused one names a
//! field path built from known field names or keys present in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_appliance::Config;

/// Field names a refusal may name although the input lacks them (required fields of
/// the document, the overlay, DNS, publish and service sections; `secret`, which a
/// sleeve network needs in `[grid]`).
const KNOWN: &[&str] = &[
    "uplink",
    "link",
    "address",
    "gateway",
    "grid",
    "node",
    "secret",
    "networks",
    "vni",
    "peers",
    "dns",
    "containers",
    "name",
    "service",
    "proto",
    "host_port",
    "container_address",
    "container_port",
    "port",
    // Named by rules about what is missing: a sleeve network needs `grid.secret`, a
    // peer of another region its `public_address`, the second of two untagged networks
    // a `vlan`.
    "secret",
    "public_address",
    "vlan",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_json_str(text) {
        Ok(config) => {
            assert_eq!(config.validate(), Ok(()));
            // The serialization is the display form: exact but for a secret, which shows
            // as "set" and cannot be sent back.
            let again = serde_json::to_string(&config).expect("serializes");
            if config.grid.as_ref().is_some_and(|g| g.secret.is_some()) {
                assert!(again.contains(r#""secret":"set""#), "{again}");
                assert!(Config::from_json_str(&again).is_err());
            } else {
                assert_eq!(Config::from_json_str(&again), Ok(config));
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            // With escapes, a key's text in the input may differ from its value.
            if !text.contains('\\') {
                for segment in e.field.split('.') {
                    let name = segment.split('[').next().unwrap_or("");
                    assert!(
                        name.is_empty() || KNOWN.contains(&name) || text.contains(name),
                        "field {:?} not from the input",
                        e.field
                    );
                }
            }
        }
    }
});
