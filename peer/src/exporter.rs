//! The TLS 1.3 exporter (RFC 8446 section 7.5) of one connection.
//!
//! rustls 0.23 computes the exporter for its buffered connections only; the unbuffered
//! API the appliance must use (no `std`) has no `export_keying_material`. It does hand
//! every connection's `exporter_master_secret` to the configured `KeyLog` (label
//! `EXPORTER_SECRET`, NSS key log format), so each connection gets an [`ExporterCapture`]
//! that keeps exactly that secret, and [`export`] is RFC 8446's function over it (tested
//! against rustls's own `export_keying_material`). rustls 0.24 exposes the exporter on
//! every connection; this module goes away with it.
//!
//! Owns that one secret per connection. It never keeps any other secret rustls offers,
//! never hands the secret out (only exported values), and wipes it when dropped.

use core::fmt;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// rustls's key log label for the exporter master secret.
const EXPORTER_LABEL: &str = "EXPORTER_SECRET";

/// Receives one connection's exporter master secret from rustls (its `KeyLog`).
#[derive(Default)]
pub struct ExporterCapture(spin::Mutex<Option<Zeroizing<[u8; 32]>>>);

impl fmt::Debug for ExporterCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExporterCapture(..)")
    }
}

impl rustls::KeyLog for ExporterCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label != EXPORTER_LABEL {
            return;
        }
        if let Ok(bytes) = <[u8; 32]>::try_from(secret) {
            *self.0.lock() = Some(Zeroizing::new(bytes));
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == EXPORTER_LABEL
    }
}

impl ExporterCapture {
    /// The exporter of the captured connection, once its handshake derived the secret.
    /// Callers use it only after the handshake completed (a server learns the secret
    /// before it verified the client's certificate).
    pub fn export(&self, label: &[u8], context: &[u8], out: &mut [u8]) -> Result<(), ExportError> {
        let guard = self.0.lock();
        let secret = guard.as_ref().ok_or(ExportError::NoSecret)?;
        export(secret, label, context, out)
    }
}

/// Why no keying material was exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportError {
    /// The handshake has not produced the exporter secret.
    NoSecret,
    /// Label longer than 249 bytes, context hash or output of an impossible length.
    Length,
}

/// HKDF-Expand-Label(secret, label, context, out.len()) of RFC 8446 section 7.1, SHA-256.
pub fn hkdf_expand_label(
    secret: &[u8; 32],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), ExportError> {
    const PREFIX: &[u8] = b"tls13 ";
    let label_len = u8::try_from(PREFIX.len() + label.len()).map_err(|_| ExportError::Length)?;
    let context_len = u8::try_from(context.len()).map_err(|_| ExportError::Length)?;
    let out_len = u16::try_from(out.len()).map_err(|_| ExportError::Length)?;
    let hkdf = Hkdf::<Sha256>::from_prk(secret).map_err(|_| ExportError::Length)?;
    let info: [&[u8]; 6] = [
        &out_len.to_be_bytes(),
        &[label_len],
        PREFIX,
        label,
        &[context_len],
        context,
    ];
    hkdf.expand_multi_info(&info, out)
        .map_err(|_| ExportError::Length)
}

/// TLS-Exporter(label, context, out.len()) of RFC 8446 section 7.5 over the exporter
/// master secret:
/// `HKDF-Expand-Label(Derive-Secret(secret, label, ""), "exporter", Hash(context), L)`.
pub fn export(
    exporter_master_secret: &[u8; 32],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), ExportError> {
    let empty_hash: [u8; 32] = Sha256::digest([]).into();
    let mut derived = [0u8; 32];
    hkdf_expand_label(exporter_master_secret, label, &empty_hash, &mut derived)?;
    let context_hash: [u8; 32] = Sha256::digest(context).into();
    let result = hkdf_expand_label(&derived, b"exporter", &context_hash, out);
    derived.zeroize();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;

    fn hex(s: &str) -> alloc::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8448 section 3 (simple 1-RTT handshake): the exporter master secret derived
    /// from the master secret with the transcript hash through server Finished; checks
    /// our HKDF-Expand-Label against the RFC's published trace.
    #[test]
    fn hkdf_expand_label_matches_rfc8448() {
        // "derived" from the early secret of RFC 8448 section 3:
        // HKDF-Expand-Label(early_secret, "derived", Hash(""), 32).
        let early: [u8; 32] =
            hex("33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a")
                .try_into()
                .unwrap();
        let empty_hash: [u8; 32] = Sha256::digest([]).into();
        let mut out = [0u8; 32];
        hkdf_expand_label(&early, b"derived", &empty_hash, &mut out).unwrap();
        assert_eq!(
            out.to_vec(),
            hex("6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba")
        );
    }

    #[test]
    fn capture_keeps_only_the_exporter_secret() {
        let capture = ExporterCapture::default();
        assert!(capture.will_log("EXPORTER_SECRET"));
        assert!(!capture.will_log("CLIENT_TRAFFIC_SECRET_0"));
        let mut out = [0u8; 16];
        assert_eq!(
            capture.export(b"x", b"", &mut out),
            Err(ExportError::NoSecret)
        );
        capture.log("CLIENT_TRAFFIC_SECRET_0", &[0; 32], &[1; 32]);
        assert_eq!(
            capture.export(b"x", b"", &mut out),
            Err(ExportError::NoSecret)
        );
        capture.log("EXPORTER_SECRET", &[0; 32], &[2; 32]);
        capture.export(b"x", b"", &mut out).unwrap();
        let mut direct = [0u8; 16];
        export(&[2; 32], b"x", b"", &mut direct).unwrap();
        assert_eq!(out, direct);
        assert_eq!(alloc::format!("{capture:?}"), "ExporterCapture(..)");
    }

    #[test]
    fn labels_and_contexts_separate_outputs() {
        let secret = [9u8; 32];
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        let mut c = [0u8; 32];
        export(&secret, b"label one", b"ctx", &mut a).unwrap();
        export(&secret, b"label two", b"ctx", &mut b).unwrap();
        export(&secret, b"label one", b"ctx2", &mut c).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        let mut long = [0u8; 8];
        assert_eq!(
            export(&secret, &[b'x'; 250], b"", &mut long),
            Err(ExportError::Length)
        );
    }
}
