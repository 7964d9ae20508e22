//! A whole document, checked: `Config`'s constructors from JSON and its one
//! `validate`, which runs the NIC rules and then every feature's own check of its
//! sections. It sits above the features it calls, so that `config` (the section types
//! every feature reads) stays below all of them.

use serde_json::Value;

use crate::config::{Config, ConfigError};
use crate::{config_text, dns_service, field_path, mesh, overlay, publish, services};

impl Config {
    /// Parse and validate a document given as JSON (the `args` of `apply`).
    pub fn from_json_value(value: &Value) -> Result<Config, ConfigError> {
        let config: Config = field_path::from_value(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Parse and validate a document given as JSON text (section by section: the
    /// text is never held as one `Value`; see `config_text`).
    pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
        let config = config_text::parse(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Every rule that is not a matter of types; the first violation names its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_nics()?;
        overlay::validate(self)?;
        dns_service::plan(self)?;
        publish::validate(self)?;
        services::validate(self)?;
        mesh::validate(self)?;
        Ok(())
    }
}
