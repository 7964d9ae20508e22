//! What a container needs to know about one overlay network of this node before it is
//! attached (the `network-info` command): its VNI, its 802.1Q tag on the link (if any),
//! its mode and MTU (the overlay's, less the sleeve overhead where it may be sealed),
//! the node address as gateway, the grid subnet, and the DNS the appliance serves there
//! (the node address as nameserver, the grid's domain to search). Read from the node's
//! own document; it never writes anything.

use serde_json::{json, Value};
use weft_appliance::protocol::{ErrorBody, ErrorCode};

use crate::agent::Ident;

/// What sleeve adds beyond VXLAN's encapsulation (docs/sleeve.md): a `sleeve` or
/// `auto` network's MTU is the grid MTU less this.
pub const SLEEVE_OVERHEAD: u64 = 42;

/// The appliance's DNS domain when `[dns] domain` is not set.
const DEFAULT_DOMAIN: &str = weft_appliance::dns::config::DEFAULT_DOMAIN;

/// The `[[networks]]` item named `name` (None: the first).
fn network<'a>(doc: &'a Value, name: Option<&str>) -> Option<&'a Value> {
    let list = doc.get("networks")?.as_array()?;
    match name {
        None => list.first(),
        Some(n) => list
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(n)),
    }
}

/// The MTU of a network item: the grid's, less the sleeve overhead unless it is
/// plain VXLAN (the default mode).
pub fn mtu_of(ident: &Ident, item: &Value) -> u64 {
    let sealed = item
        .get("mode")
        .and_then(Value::as_str)
        .is_some_and(|m| m != "vxlan");
    if sealed {
        ident.mtu.saturating_sub(SLEEVE_OVERHEAD)
    } else {
        ident.mtu
    }
}

/// The `network-info` result for `name` (None: the node's first network).
pub fn network_info(doc: &Value, ident: &Ident, name: Option<&str>) -> Result<Value, ErrorBody> {
    let Some(item) = network(doc, name) else {
        let message = match name {
            Some(n) => format!(
                "this node has no network {n:?} (it has {:?})",
                ident.networks
            ),
            None => "this node has no [[networks]]".to_string(),
        };
        return Err(ErrorBody::with_field(
            ErrorCode::InvalidConfig,
            message,
            "network",
        ));
    };
    let gateway = ident.gateway();
    let dns = doc.get("dns").map(|d| {
        let domain = d
            .get("domain")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_DOMAIN)
            .trim_end_matches('.');
        let search = match d.get("grid").and_then(Value::as_str) {
            Some(grid) => format!("{grid}.{domain}"),
            None => domain.to_string(),
        };
        json!({"nameservers": [gateway.to_string()], "search": [search]})
    });
    Ok(json!({
        "network": item.get("name"),
        "vni": item.get("vni"),
        "vlan": item.get("vlan"),
        "mode": item.get("mode").and_then(Value::as_str).unwrap_or("vxlan"),
        "mtu": mtu_of(ident, item),
        "gateway": gateway.to_string(),
        "subnet": format!("{}/{}", ident.subnet.0, ident.subnet.1),
        "prefix_len": ident.subnet.1,
        "node": ident.node.get(),
        "dns": dns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_appliance::weft_netstack::base::NodeId;

    fn doc() -> Value {
        json!({
            "grid": {"node": 3, "mtu": 1400},
            "networks": [
                {"name": "grid", "vni": 100},
                {"name": "db", "vni": 200, "vlan": 200, "mode": "sleeve"},
                {"name": "edge", "vni": 300, "mode": "auto"},
            ],
            "dns": {"grid": "g1", "domain": "example.test"},
        })
    }

    fn ident(doc: &Value) -> Ident {
        Ident::from_doc(NodeId::new(3).unwrap(), doc)
    }

    #[test]
    fn each_network_has_its_tag_and_mtu_and_the_first_is_the_default() {
        let d = doc();
        let id = ident(&d);
        let first = network_info(&d, &id, None).unwrap();
        assert_eq!(first, network_info(&d, &id, Some("grid")).unwrap());
        assert_eq!(
            first,
            json!({
                "network": "grid", "vni": 100, "vlan": null, "mode": "vxlan", "mtu": 1400,
                "gateway": "10.81.0.3", "subnet": "10.81.0.0/16", "prefix_len": 16, "node": 3,
                "dns": {"nameservers": ["10.81.0.3"], "search": ["g1.example.test"]},
            })
        );
        let db = network_info(&d, &id, Some("db")).unwrap();
        assert_eq!(
            (db["vlan"].clone(), db["mtu"].clone()),
            (json!(200), json!(1358))
        );
        let edge = network_info(&d, &id, Some("edge")).unwrap();
        assert_eq!(edge["mtu"], 1358, "auto may seal: the smaller MTU");
        let e = network_info(&d, &id, Some("nope")).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidConfig, Some("network"))
        );
        assert!(e.message.contains("\"db\""), "{}", e.message);
    }

    #[test]
    fn dns_is_absent_without_a_dns_section_and_defaults_its_domain() {
        let mut d = doc();
        d["dns"] = json!({});
        let id = ident(&d);
        let info = network_info(&d, &id, None).unwrap();
        assert_eq!(info["dns"]["search"], json!(["kontena.local"]));
        d.as_object_mut().unwrap().remove("dns");
        assert_eq!(network_info(&d, &id, None).unwrap()["dns"], Value::Null);
        d["networks"] = json!([]);
        assert!(network_info(&d, &id, None).is_err());
    }
}
