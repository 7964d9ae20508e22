//! The configuration of the peer channel as documents carry it (docs/peer-tls.md,
//! "Configuration and status"): `[grid] auth` and the `[grid.tls]` table with the PEM
//! texts the host read from its files, plus the channel's timers.
//!
//! Owns parsing and display of these keys. The private key serializes as `"set"` and
//! prints as `..`, so `config`, `status`, logs and errors never show it; `"set"` itself
//! is refused as input. Checking the credentials (which needs the wall clock) is
//! [`crate::identity::Credentials::from_pem`]'s.

use alloc::string::String;
use core::fmt;
use core::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::mesh::MeshConfig;

/// Where sleeve keys come from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// From the pre-shared `[grid] secret` (docs/sleeve.md).
    #[default]
    Secret,
    /// From the peer channel: mutual TLS with the grid's certificates.
    Tls,
}

impl Auth {
    pub fn is_secret(&self) -> bool {
        *self == Auth::Secret
    }
}

/// A PEM private key as a document carries it; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn new(text: String) -> KeyPem {
        KeyPem(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for KeyPem {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

impl Serialize for KeyPem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("set")
    }
}

impl<'de> Deserialize<'de> for KeyPem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyPem, D::Error> {
        let text = String::deserialize(d)?;
        if text == "set" {
            return Err(serde::de::Error::custom(
                "key_pem \"set\" is how the key is shown, not a key: send the PEM text \
                 (key_file in a config file)",
            ));
        }
        Ok(KeyPem(text))
    }
}

fn default_rekey_secs() -> u32 {
    120
}

fn default_rehandshake_secs() -> u32 {
    3600
}

/// Bounds of the timers (seconds).
pub const REKEY_SECS: core::ops::RangeInclusive<u32> = 1..=86_400;
pub const REHANDSHAKE_SECS: core::ops::RangeInclusive<u32> = 10..=604_800;

/// `[grid.tls]`: this node's credentials (PEM text) and the channel's timers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The grid CA certificate.
    pub ca_pem: String,
    /// This node's certificate (then any intermediates).
    pub cert_pem: String,
    /// This node's PKCS#8 Ed25519 key; shown as `"set"`.
    pub key_pem: KeyPem,
    /// Seconds between epochs of the sleeve keys (docs/peer-tls.md, "Rekeying").
    #[serde(default = "default_rekey_secs")]
    pub rekey_secs: u32,
    /// Seconds after which the dialer replaces a connection with a fresh handshake.
    #[serde(default = "default_rehandshake_secs")]
    pub rehandshake_secs: u32,
}

/// A timer out of its bounds: which key, and the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerError {
    pub field: &'static str,
    pub range: core::ops::RangeInclusive<u32>,
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be {}..={} seconds",
            self.field,
            self.range.start(),
            self.range.end()
        )
    }
}

impl TlsSection {
    /// The timers' bounds (the credentials are checked with the wall clock elsewhere).
    pub fn check_timers(&self) -> Result<(), TimerError> {
        for (field, value, range) in [
            ("rekey_secs", self.rekey_secs, REKEY_SECS),
            ("rehandshake_secs", self.rehandshake_secs, REHANDSHAKE_SECS),
        ] {
            if !range.contains(&value) {
                return Err(TimerError { field, range });
            }
        }
        Ok(())
    }

    /// The sleeve epoch length.
    pub fn rekey_after(&self) -> Duration {
        Duration::from_secs(u64::from(self.rekey_secs))
    }

    /// The mesh's timers.
    pub fn mesh_config(&self) -> MeshConfig {
        MeshConfig {
            rehandshake_after: Duration::from_secs(u64::from(self.rehandshake_secs)),
            ..MeshConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_taken_as_written_and_shown_as_set() {
        let json = r#"{"ca_pem":"CA","cert_pem":"CERT","key_pem":"-----BEGIN PRIVATE KEY-----"}"#;
        let s: TlsSection = serde_json::from_str(json).unwrap();
        assert_eq!(s.key_pem.as_str(), "-----BEGIN PRIVATE KEY-----");
        assert_eq!((s.rekey_secs, s.rehandshake_secs), (120, 3600));
        let shown = serde_json::to_string(&s).unwrap();
        assert!(shown.contains(r#""key_pem":"set""#), "{shown}");
        assert!(!shown.contains("BEGIN PRIVATE"), "{shown}");
        assert!(!alloc::format!("{s:?}").contains("BEGIN PRIVATE"));
        let again = serde_json::from_str::<TlsSection>(&shown).unwrap_err();
        assert!(again.to_string().contains("not a key"), "{again}");
    }

    #[test]
    fn unknown_keys_and_bad_timers_are_refused() {
        assert!(serde_json::from_str::<TlsSection>(
            r#"{"ca_pem":"","cert_pem":"","key_pem":"k","ca_file":"x"}"#
        )
        .is_err());
        let mut s: TlsSection =
            serde_json::from_str(r#"{"ca_pem":"","cert_pem":"","key_pem":"k","rekey_secs":2}"#)
                .unwrap();
        assert_eq!(s.check_timers(), Ok(()));
        assert_eq!(s.rekey_after(), Duration::from_secs(2));
        s.rekey_secs = 0;
        assert_eq!(s.check_timers().unwrap_err().field, "rekey_secs");
        s.rekey_secs = 2;
        s.rehandshake_secs = 5;
        let e = s.check_timers().unwrap_err();
        assert_eq!(
            alloc::format!("{e}"),
            "rehandshake_secs must be 10..=604800 seconds"
        );
    }

    #[test]
    fn auth_reads_as_lower_case_words() {
        assert_eq!(serde_json::from_str::<Auth>(r#""tls""#).unwrap(), Auth::Tls);
        assert_eq!(
            serde_json::from_str::<Auth>(r#""secret""#).unwrap(),
            Auth::Secret
        );
        assert!(serde_json::from_str::<Auth>(r#""TLS""#).is_err());
        assert!(Auth::default().is_secret());
    }
}
