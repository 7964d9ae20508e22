//! Config documents in files: TOML read from disk (or the embedded demo default),
//! checked against `weft_appliance::Config` (the same rules the appliance applies, so
//! a bad file is refused before it is sent) and kept as the user wrote them. What is
//! sent to the appliance is the document itself, never a re-serialization of
//! `Config`: `Config` serializes for display (`config`, `status`), with secrets shown
//! as `"set"`. It only converts and checks; the appliance validates again and decides.
//!
//! One transformation happens on the way: the `[grid.tls]` keys that name files on the
//! host (`ca_file`, `cert_file`, `key_file`) are replaced by the files' contents
//! (`ca_pem`, `cert_pem`, `key_pem`), the only form the appliance (which has no files)
//! takes. Every sender reads documents through here, so every sender does it.

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

/// A config document as its author wrote it, known to be valid: the JSON form of the
/// file (every key and value as written, secrets included), which is what `apply`
/// sends, beside the `Config` it validated to, which is what the host reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    json: Value,
    config: Config,
}

impl Document {
    /// Checks a JSON document with the appliance's own rules.
    pub fn from_json(json: Value) -> Result<Document, InvalidConfig> {
        let config = Config::from_json_value(&json).map_err(InvalidConfig)?;
        Ok(Document { json, config })
    }

    /// The document for a `Config` built in code, provided its serialization says
    /// everything: a `Config` with a secret serializes it as `"set"`, so it cannot
    /// become a document this way and the call fails naming the field.
    pub fn from_config(config: &Config) -> Result<Document, InvalidConfig> {
        let json = serde_json::to_value(config).map_err(|e| {
            InvalidConfig(ConfigError {
                field: String::new(),
                message: format!("config cannot be expressed as JSON: {e}"),
            })
        })?;
        let doc = Document::from_json(json)?;
        if &doc.config != config {
            return Err(InvalidConfig(ConfigError {
                field: String::new(),
                message: "this config does not survive serialization (a redacted secret?)".into(),
            }));
        }
        Ok(doc)
    }

    /// What `apply` sends: the document as written.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// What the appliance will run (for reading on the host; never sent).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// How a running configuration, as `config` shows it, reads against the document that
/// was applied: `mismatched` lists the fields the document sets that read back
/// otherwise (a secret must read back as `"set"`); `unwritten` the fields the appliance
/// shows that the document left out (their defaults). Paths are dotted, `a.b[2].c`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Echo {
    pub mismatched: Vec<String>,
    pub unwritten: Vec<String>,
}

/// Compares field by field; see [`Echo`].
pub fn echo(written: &Value, shown: &Value) -> Echo {
    let mut e = Echo::default();
    echo_at("", written, shown, &mut e);
    e
}

fn echo_at(path: &str, written: &Value, shown: &Value, e: &mut Echo) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (written, shown) {
        (Value::Object(w), Value::Object(s)) => {
            for (k, wv) in w {
                match s.get(k) {
                    Some(sv) => echo_at(&join(k), wv, sv, e),
                    None => e.mismatched.push(format!("{}: missing", join(k))),
                }
            }
            for (k, sv) in s {
                if !w.contains_key(k) && !sv.is_null() {
                    e.unwritten.push(join(k));
                }
            }
        }
        (Value::Array(w), Value::Array(s)) if w.len() == s.len() => {
            for (i, (wv, sv)) in w.iter().zip(s).enumerate() {
                echo_at(&format!("{path}[{i}]"), wv, sv, e);
            }
        }
        (Value::String(_), Value::String(s))
            if path.ends_with("secret") || path.ends_with("key_pem") =>
        {
            if s != "set" {
                e.mismatched
                    .push(format!("{path}: a secret shown as {s:?}, not \"set\""));
            }
        }
        (w, s) if w == s => {}
        (w, s) => e.mismatched.push(format!("{path}: wrote {w}, shows {s}")),
    }
}

/// TOML text to the JSON form of the document, unchecked (file keys not yet read).
pub fn toml_to_json(text: &str) -> Result<Value> {
    let table: toml::Table = toml::from_str(text).context("config is not valid TOML")?;
    serde_json::to_value(table).context("config cannot be expressed as JSON")
}

/// The `[grid.tls]` keys naming host files, and the keys their contents go under.
pub const TLS_FILES: [(&str, &str); 3] = [
    ("ca_file", "ca_pem"),
    ("cert_file", "cert_pem"),
    ("key_file", "key_pem"),
];

/// Replaces each `grid.tls.<x>_file` by `grid.tls.<x>_pem` holding the file's text;
/// a relative path is relative to `base` (the config file's directory). Giving both
/// forms of one key is refused, as is a file that cannot be read as text.
pub fn read_tls_files(json: &mut Value, base: &Path) -> Result<()> {
    let Some(tls) = json
        .get_mut("grid")
        .and_then(|g| g.get_mut("tls"))
        .and_then(Value::as_object_mut)
    else {
        return Ok(());
    };
    for (file_key, pem_key) in TLS_FILES {
        let Some(path) = tls.remove(file_key) else {
            continue;
        };
        let Some(path) = path.as_str() else {
            anyhow::bail!("grid.tls.{file_key}: expected a file path (a string)");
        };
        if tls.contains_key(pem_key) {
            anyhow::bail!("grid.tls: give {file_key} or {pem_key}, not both");
        }
        let full = base.join(path);
        let text = std::fs::read_to_string(&full)
            .with_context(|| format!("grid.tls.{file_key}: reading {}", full.display()))?;
        tls.insert(pem_key.to_string(), Value::String(text));
    }
    Ok(())
}

/// TOML text to the JSON the appliance is sent: [`toml_to_json`], then the TLS files
/// read relative to `base`.
pub fn toml_to_document_json(text: &str, base: &Path) -> Result<Value> {
    let mut json = toml_to_json(text)?;
    read_tls_files(&mut json, base)?;
    Ok(json)
}

/// TOML text to a checked [`Document`] (TLS files relative to the current directory).
/// Refusals are [`InvalidConfig`] (downcastable).
pub fn document_from_toml(text: &str) -> Result<Document> {
    Ok(Document::from_json(toml_to_document_json(
        text,
        Path::new("."),
    )?)?)
}

/// TOML text to a validated `Config` (for reading; send a [`Document`]).
pub fn from_toml(text: &str) -> Result<Config> {
    Ok(document_from_toml(text)?.config)
}

/// The JSON a config file becomes on the way to the appliance (unchecked): its TOML,
/// with the TLS files it names (relative to its directory) read in.
pub fn file_to_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    toml_to_document_json(&text, base).with_context(|| format!("in {}", path.display()))
}

/// Reads and checks a TOML config file.
pub fn load(path: &Path) -> Result<Document> {
    let json = file_to_json(path)?;
    Document::from_json(json)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("in {}", path.display()))
}

/// The embedded default.
pub fn default_document() -> Document {
    // The constant is checked by a unit test; an error here is a build defect.
    match document_from_toml(DEFAULT_CONFIG_TOML) {
        Ok(d) => d,
        Err(e) => panic!("embedded default config is invalid: {e:#}"),
    }
}

/// The embedded default, read.
pub fn default_config() -> Config {
    default_document().config
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn examples_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    /// Every example the README points to parses and passes the appliance's validation.
    #[test]
    fn every_example_is_a_valid_document() {
        let dir = examples_dir();
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

    /// The secret reaches the document as written; a `Config` that holds one cannot be
    /// turned back into a document (it serializes as `"set"`).
    #[test]
    fn a_secret_is_sent_as_written_and_never_through_config() {
        let path = examples_dir().join("sleeve.toml");
        let doc = load(&path).unwrap();
        let written = doc.json()["grid"]["secret"].as_str().unwrap();
        assert_eq!(written.len(), 64);
        assert!(std::fs::read_to_string(&path).unwrap().contains(written));
        let shown = serde_json::to_value(doc.config()).unwrap();
        assert_eq!(shown["grid"]["secret"], "set");
        let e = Document::from_config(doc.config()).unwrap_err();
        assert!(
            e.0.field == "grid.secret" || e.0.message.contains("secret"),
            "{e}"
        );
        // Without the secret the round trip is exact.
        let plain = default_config();
        assert_eq!(Document::from_config(&plain).unwrap().config(), &plain);
    }

    /// `[grid.tls]` file keys become the files' contents, relative to the file's
    /// directory; the rest of the document is untouched.
    #[test]
    fn tls_files_are_read_into_the_document() {
        let dir = std::env::temp_dir().join(format!("weft-tlsdoc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        for (name, text) in [
            ("ca.pem", "CA"),
            ("node-1.pem", "CERT"),
            ("node-1.key", "KEY"),
        ] {
            std::fs::write(dir.join("pki").join(name), text).unwrap();
        }
        let toml = "[grid]\nnode = 1\n[grid.tls]\nca_file = \"pki/ca.pem\"\n\
                    cert_file = \"pki/node-1.pem\"\nkey_file = \"pki/node-1.key\"\n";
        let json = toml_to_document_json(toml, &dir).unwrap();
        assert_eq!(
            json,
            json!({"grid": {"node": 1, "tls": {"ca_pem": "CA", "cert_pem": "CERT", "key_pem": "KEY"}}})
        );
        // Inline PEM passes through; both forms of one key are refused.
        let inline = toml_to_document_json("[grid.tls]\nca_pem = \"X\"\n", &dir).unwrap();
        assert_eq!(inline, json!({"grid": {"tls": {"ca_pem": "X"}}}));
        let both = "[grid.tls]\nca_pem = \"X\"\nca_file = \"pki/ca.pem\"\n";
        let e = toml_to_document_json(both, &dir).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let missing = "[grid.tls]\nkey_file = \"pki/none.key\"\n";
        let e = format!("{:#}", toml_to_document_json(missing, &dir).unwrap_err());
        assert!(
            e.contains("grid.tls.key_file") && e.contains("none.key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn echo_compares_field_by_field() {
        let written = json!({"a": {"b": 1, "secret": "00ff"}, "l": [1, 2]});
        let same = json!({"a": {"b": 1, "secret": "set", "d": 4, "n": null}, "l": [1, 2]});
        assert_eq!(
            echo(&written, &same),
            Echo {
                mismatched: vec![],
                unwritten: vec!["a.d".into()]
            }
        );
        let off = json!({"a": {"secret": "00ff"}, "l": [1, 3]});
        assert_eq!(
            echo(&written, &off).mismatched,
            vec![
                "a.b: missing".to_string(),
                "a.secret: a secret shown as \"00ff\", not \"set\"".to_string(),
                "l[1]: wrote 2, shows 3".to_string()
            ]
        );
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
        assert_eq!(load(&f).unwrap(), default_document());
        let back = toml::to_string(&default_config()).unwrap();
        assert_eq!(from_toml(&back).unwrap(), default_config());
        assert!(load(&dir.join("missing.toml")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
