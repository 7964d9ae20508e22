//! Config documents in files: TOML read from disk (or the embedded demo default),
//! turned into the JSON document that `apply` carries. The structure is the
//! appliance's; this module only converts, the appliance validates.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// The embedded default topology of `weft demo`: the "host" namespace is 192.0.2.1 on
/// the uplink segment, the "container" namespace 10.81.128.2/16 behind the link.
pub const DEFAULT_CONFIG_TOML: &str = r#"# weft demo default
[uplink]
address = "192.0.2.2/24"
gateway = "192.0.2.1"

[link]
address = "10.81.0.1/16"
"#;

/// Parses a TOML config document into its JSON form.
pub fn from_toml(text: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(text).context("config is not valid TOML")?;
    serde_json::to_value(table).context("config cannot be expressed as JSON")
}

/// Reads a TOML config file into its JSON form.
pub fn load(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    from_toml(&text).with_context(|| format!("in {}", path.display()))
}

/// The embedded default, as JSON.
pub fn default_config() -> Value {
    from_toml(DEFAULT_CONFIG_TOML).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_document_has_the_demo_addresses() {
        assert_eq!(
            default_config(),
            json!({
                "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
                "link": {"address": "10.81.0.1/16"}
            })
        );
    }

    #[test]
    fn toml_errors_are_reported() {
        assert!(from_toml("[uplink\naddress = 1").is_err());
        assert!(from_toml("uplink = ").is_err());
    }
}
