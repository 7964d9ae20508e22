//! The routing mesh's part of the document: `[[publish]]` entries whose target is a
//! service's VIP publish that service on this node (every connection to the host port
//! is spread over the service's backends, on whichever host they run, and reaches them
//! from the node address; see `docs/mesh.md`). This module only checks that such an
//! entry names the service's own protocol and port (one lookup per entry); it never
//! touches packets.

use alloc::collections::BTreeMap;
use alloc::format;

use crate::config::{Config, ConfigError};

/// Refuses a publish entry that targets a service VIP with another protocol or port
/// than the service's: nothing would answer it. Entries that target any other address
/// are left to the publish rules (`publish::validate`).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    // The first service of each VIP, as a scan of the list would find it.
    let mut by_vip = BTreeMap::new();
    for s in &config.services {
        if let Some(vip) = s.vip {
            by_vip.entry(vip).or_insert(s);
        }
    }
    for (i, rule) in config.publish.iter().enumerate() {
        let Some(service) = by_vip.get(&rule.container_address) else {
            continue;
        };
        if rule.proto != service.proto {
            return Err(ConfigError {
                field: format!("publish[{i}].proto"),
                message: format!(
                    "{} is the VIP of service {:?}, which is {}, not {}",
                    rule.container_address, service.name, service.proto, rule.proto
                ),
            });
        }
        if rule.container_port != service.port {
            return Err(ConfigError {
                field: format!("publish[{i}].container_port"),
                message: format!(
                    "{} is the VIP of service {:?}, which listens on port {}, not {}",
                    rule.container_address, service.name, service.port, rule.container_port
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc(publish: Value) -> Value {
        json!({
            "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
            "link": {"address": "10.81.0.1/16"},
            "services": [{"name": "web", "vip": "10.81.255.1", "proto": "tcp", "port": 80,
                          "backends": [{"address": "10.81.128.2", "port": 8080}]}],
            "publish": publish,
        })
    }

    fn refused(publish: Value) -> Option<ConfigError> {
        Config::from_json_value(&doc(publish)).err()
    }

    #[test]
    fn a_publish_to_a_vip_must_name_the_services_protocol_and_port() {
        let ok = json!([{"proto": "tcp", "host_port": 8080,
                         "container_address": "10.81.255.1", "container_port": 80}]);
        assert!(refused(ok).is_none());
        let e = refused(json!([{"proto": "tcp", "host_port": 8080,
                                "container_address": "10.81.255.1", "container_port": 81}]))
        .expect("another port is refused");
        assert_eq!(e.field, "publish[0].container_port");
        assert!(e.message.contains("\"web\""), "{}", e.message);
        let e = refused(json!([
            {"proto": "tcp", "host_port": 8081, "container_address": "10.81.128.2", "container_port": 8080},
            {"proto": "udp", "host_port": 8080, "container_address": "10.81.255.1", "container_port": 80}
        ]))
        .expect("another protocol is refused");
        assert_eq!(e.field, "publish[1].proto");
        // The reserved-port rules still come first.
        let e = refused(json!([{"proto": "tcp", "host_port": 53,
                                "container_address": "10.81.255.1", "container_port": 80}]))
        .expect("53 is reserved");
        assert_eq!(e.field, "publish[0].host_port");
    }
}
