//! Config documents in files: TOML read from disk (or the embedded demo default),
//! parsed and validated as `weft_appliance::Config` (the same rules the appliance
//! applies, so a bad file is refused before it is sent). It only converts and checks;
//! the appliance validates again and decides.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use weft_appliance::{Config, ConfigError};

/// The embedded default topology of `weft demo`: the "host" namespace is 192.0.2.1 on
/// the uplink segment, the "container" namespace 10.81.128.2/16 behind the link.
pub const DEFAULT_CONFIG_TOML: &str = r#"# weft demo default
[uplink]
address = "192.0.2.2/24"
gateway = "192.0.2.1"

[link]
address = "10.81.0.1/16"
"#;

/// A document that parsed but was refused, with the dotted path of the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidConfig(pub ConfigError);

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.field.is_empty() {
            write!(f, "invalid_config: {}", self.0.message)
        } else {
            write!(f, "invalid_config [{}]: {}", self.0.field, self.0.message)
        }
    }
}

impl std::error::Error for InvalidConfig {}

/// TOML text to the JSON form of the document, unchecked.
pub fn toml_to_json(text: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(text).context("config is not valid TOML")?;
    serde_json::to_value(table).context("config cannot be expressed as JSON")
}

/// TOML text to a validated `Config`. Refusals are [`InvalidConfig`] (downcastable).
pub fn from_toml(text: &str) -> Result<Config> {
    let json = toml_to_json(text)?;
    Config::from_json_value(&json).map_err(|e| InvalidConfig(e).into())
}

/// Reads and validates a TOML config file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    from_toml(&text).with_context(|| format!("in {}", path.display()))
}

/// The embedded default.
pub fn default_config() -> Config {
    // The constant is checked by a unit test; an error here is a build defect.
    match from_toml(DEFAULT_CONFIG_TOML) {
        Ok(c) => c,
        Err(e) => panic!("embedded default config is invalid: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every example the README points to parses and passes the appliance's validation.
    #[test]
    fn every_example_is_a_valid_document() {
        let dir = crate::paths::repo_root().join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "only {n} examples in {}", dir.display());
    }

    #[test]
    fn default_document_has_the_demo_addresses() {
        let c = default_config();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({
                "uplink": {"address": "192.0.2.2/24", "gateway": "192.0.2.1"},
                "link": {"address": "10.81.0.1/16"}
            })
        );
    }

    #[test]
    fn toml_and_validation_errors_are_reported_with_the_field() {
        assert!(from_toml("[uplink\naddress = 1").is_err());
        let cases = [
            ("[uplink]\naddress = \"192.0.2.2/24\"\nmtu = 1\n[link]\naddress = \"10.81.0.1/16\"\n", "uplink.mtu"),
            ("[uplink]\naddress = \"192.0.2.2/33\"\n[link]\naddress = \"10.81.0.1/16\"\n", "uplink.address"),
            ("[uplink]\naddress = \"192.0.2.2/24\"\n[link]\naddress = 5\n", "link.address"),
            ("[uplink]\naddress = \"10.81.0.2/24\"\n[link]\naddress = \"10.81.0.1/16\"\n", "link.address"),
            ("[uplink]\naddress = \"192.0.2.2/24\"\n[link]\naddress = \"10.81.0.1/16\"\n[routes]\nx = 1\n", "routes"),
        ];
        for (text, field) in cases {
            let e = from_toml(text).unwrap_err();
            let inv = e
                .downcast_ref::<InvalidConfig>()
                .unwrap_or_else(|| panic!("{text}: {e:#}"));
            assert_eq!(inv.0.field, field, "{text}: {}", inv.0.message);
        }
    }

    #[test]
    fn files_round_trip_through_toml() {
        let dir = std::env::temp_dir().join(format!("weft-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(load(&f).unwrap(), default_config());
        let back = toml::to_string(&default_config()).unwrap();
        assert_eq!(from_toml(&back).unwrap(), default_config());
        assert!(load(&dir.join("missing.toml")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
