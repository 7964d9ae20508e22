//! `weft ca`: the grid's certificate authority on the host (docs/peer-tls.md,
//! "Certificates"). `init` makes the CA of one grid (`DIR/ca.pem`, `DIR/ca.key`), `issue`
//! a node certificate under it (`DIR/node-N.pem`, `DIR/node-N.key`); rcgen does the
//! X.509, Ed25519 keys throughout.
//!
//! The CA is constrained to its grid's names (`<grid>.weft.internal`) and to one level
//! (no intermediates); a node certificate names exactly `node-<N>.<grid>.weft.internal`
//! and allows both TLS usages (a node dials and accepts). This module never overwrites
//! a file, never writes a key readable by anyone but the owner, and never prints a key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};
use weft_peer::identity::{ca_grid, grid_domain, node_name, GridName, NodeId, NAME_SUFFIX};
use weft_peer::pki_types::pem::PemObject;
use weft_peer::pki_types::CertificateDer;

/// Default lifetime of a grid CA.
pub const CA_DAYS: u32 = 3650;
/// Default lifetime of a node certificate.
pub const NODE_DAYS: u32 = 365;

/// What `init` or `issue` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn ca_paths(dir: &Path) -> Written {
    Written {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    }
}

pub fn node_paths(dir: &Path, node: NodeId) -> Written {
    Written {
        cert: dir.join(format!("node-{node}.pem")),
        key: dir.join(format!("node-{node}.key")),
    }
}

/// Write `contents` to a new file (never over an existing one) with `mode`.
fn create(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn refuse_existing(w: &Written) -> Result<()> {
    for p in [&w.cert, &w.key] {
        if p.exists() {
            bail!("{} exists; weft ca never overwrites a file", p.display());
        }
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for peers whose clocks lag this host's.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// `weft ca init --grid NAME --dir DIR`: a new CA for grid `grid`.
pub fn init(grid: &str, dir: &Path, days: u32) -> Result<Written> {
    let Some(grid) = GridName::new(grid) else {
        bail!(
            "grid name {grid:?} is not one DNS label (lower-case letters, digits, '-'; \
             1 to 63 bytes)"
        );
    };
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = ca_paths(dir);
    refuse_existing(&out)?;
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("weft grid {grid}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(grid_domain(&grid))],
        excluded_subtrees: Vec::new(),
    });
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    create(&out.key, &key_pem(&key)?, 0o600)?;
    create(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

/// The PKCS#8 DER prefix of an Ed25519 key in version 1 (RFC 8410 §7): `SEQUENCE {
/// INTEGER 0, AlgorithmIdentifier { id-Ed25519 }, OCTET STRING { OCTET STRING (32) } }`;
/// the 32-byte seed follows.
const ED25519_PKCS8_V1: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// `key` as a PEM `PRIVATE KEY` in PKCS#8 version 1: the seed alone.
///
/// rcgen (ring) writes version 2 (OneAsymmetricKey, RFC 5958), which carries the public
/// key as well; OpenSSL 3.0 refuses that form for Ed25519 ("unsupported"), so `openssl
/// s_client -key` could not use a key from `weft ca`. Version 1 is read by OpenSSL, rcgen
/// and the appliance (ed25519-dalek) alike.
fn key_pem(key: &KeyPair) -> Result<String> {
    use base64::Engine;
    let der = key.serialized_der();
    // Both versions hold the seed as the first OCTET STRING in the same place relative
    // to the algorithm: `30 len 02 01 v 30 05 06 03 2b 65 70 04 22 04 20 <seed>`.
    let seed = match der {
        [0x30, _, 0x02, 0x01, 0x00 | 0x01, rest @ ..]
            if rest.starts_with(&ED25519_PKCS8_V1[5..]) =>
        {
            rest.get(11..43)
        }
        _ => None,
    };
    let Some(seed) = seed else {
        bail!("rcgen wrote an Ed25519 key in a PKCS#8 layout weft ca does not know");
    };
    let mut v1 = ED25519_PKCS8_V1.to_vec();
    v1.extend_from_slice(seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&v1);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// `weft ca issue --node N --dir DIR`: node `node`'s certificate under the CA in `dir`.
pub fn issue(node: NodeId, dir: &Path, days: u32) -> Result<Written> {
    if node == 0 {
        bail!("node numbers start at 1");
    }
    let ca = ca_paths(dir);
    let ca_pem = fs::read_to_string(&ca.cert)
        .with_context(|| format!("reading {} (run `weft ca init` first)", ca.cert.display()))?;
    let ca_key =
        fs::read_to_string(&ca.key).with_context(|| format!("reading {}", ca.key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).context("the CA key is not a PEM private key")?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: no PEM certificate ({e:?})", ca.cert.display()))?;
    let Some(grid) = ca_grid(&ca_der) else {
        bail!(
            "{} is not a weft grid CA (no name constraint <grid>.{NAME_SUFFIX})",
            ca.cert.display()
        );
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("the CA certificate")?;
    let out = node_paths(dir, node);
    refuse_existing(&out)?;
    let name = node_name(&grid, node);
    let key = KeyPair::generate_for(&PKCS_ED25519)?;
    let mut params = CertificateParams::new(vec![name.clone()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    create(&out.key, &key_pem(&key)?, 0o600)?;
    create(&out.cert, &cert.pem(), 0o644)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use weft_peer::identity::{CredentialError, Credentials};
    use weft_peer::pki_types::PrivateKeyDer;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-ca-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn now() -> Option<u64> {
        Some(OffsetDateTime::now_utc().unix_timestamp() as u64)
    }

    #[test]
    fn init_then_issue_make_credentials_the_appliance_accepts() {
        let dir = tempdir("ok");
        let ca = init("mygrid", &dir, CA_DAYS).unwrap();
        let node = issue(3, &dir, NODE_DAYS).unwrap();
        assert_eq!(node.cert, dir.join("node-3.pem"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&node.key), 0o600);
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        let creds = Credentials::from_pem(
            3,
            &read(&ca.cert),
            &read(&node.cert),
            &read(&node.key),
            now(),
        )
        .unwrap();
        assert_eq!(creds.grid().as_str(), "mygrid");
        assert_eq!(creds.summary().subject, "CN=node-3.mygrid.weft.internal");
        // The certificate is for node 3 only.
        assert!(matches!(
            Credentials::from_pem(
                4,
                &read(&ca.cert),
                &read(&node.cert),
                &read(&node.key),
                now()
            ),
            Err(CredentialError::NotThisNode { expected: 4, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_pkcs8_v1_that_openssl_reads() {
        let dir = tempdir("openssl");
        let ca = init("mygrid", &dir, CA_DAYS).unwrap();
        let node = issue(5, &dir, NODE_DAYS).unwrap();
        for key in [&ca.key, &node.key] {
            let der = PrivateKeyDer::from_pem_slice(&fs::read(key).unwrap()).unwrap();
            assert!(
                der.secret_der().starts_with(&ED25519_PKCS8_V1) && der.secret_der().len() == 48,
                "{}: not PKCS#8 v1",
                key.display()
            );
            // OpenSSL (installed by .ci/install) is what `s_client -key` runs on.
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-noout", "-in"])
                .arg(key)
                .output()
                .expect("running openssl");
            assert!(
                out.status.success(),
                "openssl pkey -in {}: {}",
                key.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The CA key still signs (rcgen reads it back in `issue`), and the node key is
        // the certificate's (the appliance's check).
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        Credentials::from_pem(
            5,
            &read(&ca.cert),
            &read(&node.cert),
            &read(&node.key),
            now(),
        )
        .unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_is_overwritten_and_mistakes_are_named() {
        let dir = tempdir("refuse");
        init("g", &dir, CA_DAYS).unwrap();
        let again = init("g", &dir, CA_DAYS).unwrap_err().to_string();
        assert!(again.contains("never overwrites"), "{again}");
        issue(1, &dir, NODE_DAYS).unwrap();
        assert!(issue(1, &dir, NODE_DAYS).is_err());
        assert!(issue(0, &dir, NODE_DAYS).is_err());
        let bad = init("Not A Label", &tempdir("bad"), CA_DAYS)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("DNS label"), "{bad}");
        let missing = issue(1, &tempdir("none"), NODE_DAYS).unwrap_err();
        assert!(
            format!("{missing:#}").contains("weft ca init"),
            "{missing:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_of_another_grid_ca_is_not_valid_under_this_one() {
        let (a, b) = (tempdir("ga"), tempdir("gb"));
        init("ga", &a, CA_DAYS).unwrap();
        init("ga", &b, CA_DAYS).unwrap();
        issue(2, &b, NODE_DAYS).unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert!(matches!(
            Credentials::from_pem(
                2,
                &read(a.join("ca.pem")),
                &read(b.join("node-2.pem")),
                &read(b.join("node-2.key")),
                now()
            ),
            Err(CredentialError::NotIssued(_))
        ));
        fs::remove_dir_all(&a).unwrap();
        fs::remove_dir_all(&b).unwrap();
    }
}
