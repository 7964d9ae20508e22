//! Port publishing's rules: a `[[publish]]` entry (protocol and host port to a
//! container or service address and port) and the checks that refuse a rule before
//! anything changes. It never sees a packet; the NAT applies the rules.

use core::fmt;

use serde::{Deserialize, Serialize};
use smoltcp::wire::Ipv4Address;

use crate::base::ports::{CHECK_PORTS, RESERVED_PORTS};
use crate::base::{Endpoint, FieldError, Transport};

/// A `[[publish]]` entry: `proto host_port -> container_address:container_port`.
/// The target may be a service VIP and port; the load balancer then picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRule {
    pub proto: Transport,
    pub host_port: u16,
    pub container_address: Ipv4Address,
    pub container_port: u16,
}

impl PublishRule {
    pub fn target(&self) -> Endpoint {
        Endpoint::new(self.container_address, self.container_port)
    }
}

/// Why a publish rule is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    HostPortZero,
    ContainerPortZero,
    /// Unspecified, broadcast, multicast or loopback.
    ContainerAddress(Ipv4Address),
    /// The appliance uses this port itself.
    Reserved {
        proto: Transport,
        port: u16,
    },
    /// Another rule already owns this protocol and port on the node.
    Duplicate {
        proto: Transport,
        host_port: u16,
    },
}

impl PublishError {
    /// The config field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            PublishError::HostPortZero
            | PublishError::Reserved { .. }
            | PublishError::Duplicate { .. } => "host_port",
            PublishError::ContainerPortZero => "container_port",
            PublishError::ContainerAddress(_) => "container_address",
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::HostPortZero => write!(f, "host port 0 cannot be published"),
            PublishError::ContainerPortZero => write!(f, "container port must not be 0"),
            PublishError::ContainerAddress(a) => {
                write!(f, "{a} is not a unicast container address")
            }
            PublishError::Reserved { proto, port } => {
                write!(f, "{proto} port {port} is reserved for the appliance")
            }
            PublishError::Duplicate { proto, host_port } => {
                write!(f, "{proto} port {host_port} is already published")
            }
        }
    }
}

/// Checks one rule against the rules already in force. `extra_reserved` are the
/// appliance's configured control/health ports, refused like `RESERVED_PORTS`.
pub fn validate_publish<'a>(
    rule: &PublishRule,
    existing: impl IntoIterator<Item = &'a PublishRule>,
    extra_reserved: &[u16],
) -> Result<(), PublishError> {
    if rule.host_port == 0 {
        return Err(PublishError::HostPortZero);
    }
    if rule.container_port == 0 {
        return Err(PublishError::ContainerPortZero);
    }
    let a = rule.container_address;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(PublishError::ContainerAddress(a));
    }
    // The health checks' source ports: a backend's answer on the uplink must reach them.
    let checks = CHECK_PORTS.contains(&rule.host_port);
    if RESERVED_PORTS.contains(&rule.host_port)
        || extra_reserved.contains(&rule.host_port)
        || checks
    {
        return Err(PublishError::Reserved {
            proto: rule.proto,
            port: rule.host_port,
        });
    }
    if existing
        .into_iter()
        .any(|r| r.proto == rule.proto && r.host_port == rule.host_port)
    {
        return Err(PublishError::Duplicate {
            proto: rule.proto,
            host_port: rule.host_port,
        });
    }
    Ok(())
}

/// Checks a whole `[[publish]]` list; the error names the entry and field.
pub fn validate_publish_list(
    rules: &[PublishRule],
    extra_reserved: &[u16],
) -> Result<(), FieldError> {
    for (i, rule) in rules.iter().enumerate() {
        validate_publish(rule, &rules[..i], extra_reserved).map_err(|e| FieldError {
            field: alloc::format!("publish[{i}].{}", e.field()),
            message: alloc::format!("{e}"),
        })?;
    }
    Ok(())
}
