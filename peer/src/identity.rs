//! Who a node is in its grid (docs/peer-tls.md, "Certificates"): the name a certificate
//! must carry (`node-<N>.<grid>.weft.internal`), this node's credentials (grid CA, its
//! certificate chain, its key) checked once when they are configured, and the check of
//! a peer's certificate after rustls verified its chain.
//!
//! Owns certificate naming and the credential checks. It never accepts a certificate
//! that does not chain to the grid CA, never takes a node id from anywhere but a name the
//! certificate is valid for, and never prints or returns the private key.

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::crypto::KeyProvider;
use rustls::sign::SigningKey;
use webpki::{EndEntityCert, KeyUsage};

use crate::provider::{Ed25519Keys, ED25519_ALGORITHMS};

/// A node's number in its grid (the `[grid] node` of its configuration).
pub type NodeId = u32;

/// The DNS suffix under which every grid names its nodes (`.internal` is reserved for
/// private use).
pub const NAME_SUFFIX: &str = "weft.internal";

/// A grid's name: one DNS label (letters, digits, `-`; 1 to 63 bytes; lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GridName(String);

impl GridName {
    pub fn new(name: &str) -> Option<GridName> {
        let ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        ok.then(|| GridName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GridName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The DNS name a certificate of node `node` in `grid` carries (as a subjectAltName).
pub fn node_name(grid: &GridName, node: NodeId) -> String {
    alloc::format!("node-{node}.{grid}.{NAME_SUFFIX}")
}

/// The DNS name suffix of every name in `grid` (what the grid CA's name constraint
/// permits).
pub fn grid_domain(grid: &GridName) -> String {
    alloc::format!("{grid}.{NAME_SUFFIX}")
}

/// `(grid, node)` of a name of the form `node-<N>.<grid>.weft.internal`, with `N` a
/// plain decimal `u32` (no sign, no leading zero).
pub fn parse_node_name(name: &str) -> Option<(GridName, NodeId)> {
    let rest = name.strip_prefix("node-")?;
    let (number, rest) = rest.split_once('.')?;
    let grid = rest.strip_suffix(NAME_SUFFIX)?.strip_suffix('.')?;
    let plain = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && (number == "0" || !number.starts_with('0'));
    if !plain {
        return None;
    }
    Some((GridName::new(grid)?, number.parse().ok()?))
}

/// The grid a grid CA certificate is for: its name constraint permits exactly the
/// names under `<grid>.weft.internal` (what `weft ca init` writes). A CA without that
/// constraint could issue names of any grid and is not a grid CA.
pub fn ca_grid(ca: &CertificateDer<'_>) -> Option<GridName> {
    use x509_cert::der::oid::AssociatedOid;
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::NameConstraints;
    let cert = x509_cert::Certificate::from_der(ca.as_ref()).ok()?;
    let ext = cert
        .tbs_certificate()
        .extensions()?
        .iter()
        .find(|e| e.extn_id == NameConstraints::OID)?;
    let constraints = NameConstraints::from_der(ext.extn_value.as_bytes()).ok()?;
    let permitted = constraints.permitted_subtrees?;
    let [only] = permitted.as_slice() else {
        return None;
    };
    let GeneralName::DnsName(domain) = &only.base else {
        return None;
    };
    let grid = domain
        .as_str()
        .strip_suffix(NAME_SUFFIX)?
        .strip_suffix('.')?;
    GridName::new(grid)
}

/// What status shows of a certificate: its subject and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The subject as RFC 4514 text (`CN=node-2.mygrid.weft.internal`).
    pub subject: String,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: u64,
}

impl CertSummary {
    pub fn of(cert: &CertificateDer<'_>) -> Option<CertSummary> {
        use x509_cert::der::Decode;
        let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
        let tbs = parsed.tbs_certificate();
        Some(CertSummary {
            subject: rfc4514(tbs.subject()),
            not_after: tbs.validity().not_after.to_unix_duration().as_secs(),
        })
    }
}

/// A distinguished name as RFC 4514 text: RDNs last to first, `+` within one, the
/// attribute types of RFC 4514 §3 by their short names, any other as its dotted OID with
/// the value's DER in hex (`2.5.4.5=#1303313233`).
///
/// Ours, not x509-cert's `Display`: that one names types from const-oid's OID
/// database, which it links whole (about 110 KiB of the image; docs/PERFORMANCE.md,
/// "Image size").
fn rfc4514(name: &x509_cert::name::Name) -> String {
    use core::fmt::Write;
    use x509_cert::der::{Encode, Tag, Tagged};
    const SHORT: [(&str, &str); 9] = [
        ("2.5.4.3", "CN"),
        ("2.5.4.7", "L"),
        ("2.5.4.8", "ST"),
        ("2.5.4.10", "O"),
        ("2.5.4.11", "OU"),
        ("2.5.4.6", "C"),
        ("2.5.4.9", "STREET"),
        ("0.9.2342.19200300.100.1.25", "DC"),
        ("0.9.2342.19200300.100.1.1", "UID"),
    ];
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.oid.to_string();
            let text = matches!(
                atv.value.tag(),
                Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::TeletexString
            )
            .then(|| core::str::from_utf8(atv.value.value()).ok())
            .flatten();
            match (SHORT.iter().find(|(o, _)| *o == oid), text) {
                (Some((_, short)), Some(text)) => {
                    out.push_str(short);
                    out.push('=');
                    let mut chars = text.char_indices().peekable();
                    while let Some((at, c)) = chars.next() {
                        match c {
                            '#' if at == 0 => out.push_str("\\#"),
                            ' ' if at == 0 || chars.peek().is_none() => out.push_str("\\ "),
                            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                                out.push('\\');
                                out.push(c);
                            }
                            '\x00'..='\x1f' | '\x7f' => {
                                let _ = write!(out, "\\{:02x}", c as u8);
                            }
                            _ => out.push(c),
                        }
                    }
                }
                _ => {
                    let _ = write!(out, "{oid}=#");
                    for b in atv.value.to_der().unwrap_or_default() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    out
}

/// Why configured credentials were refused (each names what to fix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialError {
    /// No `CERTIFICATE` block in the CA PEM, or it does not parse.
    CaPem,
    /// No `CERTIFICATE` block in the node certificate PEM, or one does not parse.
    CertPem,
    /// No PKCS#8 `PRIVATE KEY` block in the key PEM.
    KeyPem,
    /// The key is not an Ed25519 key.
    KeyType,
    /// The key is not the one the certificate was issued for.
    KeyMismatch,
    /// The CA certificate cannot serve as a trust anchor.
    BadCa,
    /// The CA is not constrained to the names of one grid (`<grid>.weft.internal`).
    NotAGridCa,
    /// The CA is for another grid than the certificate names.
    OtherGrid { ca: GridName, cert: GridName },
    /// The certificate does not chain to the CA, or is not valid now (the text says
    /// which, from webpki).
    NotIssued(String),
    /// The certificate names no node of a grid, or another node than this one.
    NotThisNode {
        expected: NodeId,
        names: Vec<String>,
    },
    /// The wall clock is unknown, so no certificate can be checked.
    NoClock,
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::CaPem => f.write_str("no CA certificate (a PEM CERTIFICATE block)"),
            CredentialError::CertPem => {
                f.write_str("no node certificate (a PEM CERTIFICATE block)")
            }
            CredentialError::KeyPem => f.write_str("no PKCS#8 PEM PRIVATE KEY block"),
            CredentialError::KeyType => f.write_str("the private key is not an Ed25519 key"),
            CredentialError::KeyMismatch => {
                f.write_str("the private key does not belong to the certificate")
            }
            CredentialError::BadCa => f.write_str("the CA certificate is not a usable CA"),
            CredentialError::NotAGridCa => write!(
                f,
                "the CA certificate is not a grid CA (it must permit only names under \
                 <grid>.{NAME_SUFFIX}; `weft ca init` makes one)"
            ),
            CredentialError::OtherGrid { ca, cert } => write!(
                f,
                "the CA is for grid {ca:?}, the certificate for grid {cert:?}"
            ),
            CredentialError::NotIssued(why) => {
                write!(f, "the certificate is not valid under the CA: {why}")
            }
            CredentialError::NotThisNode { expected, names } => write!(
                f,
                "the certificate is not for node {expected} (it names {names:?}; expected \
                 node-{expected}.<grid>.{NAME_SUFFIX})"
            ),
            CredentialError::NoClock => {
                f.write_str("the wall clock is unknown, so certificates cannot be checked")
            }
        }
    }
}

impl core::error::Error for CredentialError {}

/// This node's identity in its grid: checked, ready to build TLS configurations from.
pub struct Credentials {
    grid: GridName,
    node: NodeId,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    signing: Arc<dyn SigningKey>,
    own: CertSummary,
}

impl Clone for Credentials {
    fn clone(&self) -> Credentials {
        Credentials {
            grid: self.grid.clone(),
            node: self.node,
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            signing: self.signing.clone(),
            own: self.own.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("grid", &self.grid)
            .field("node", &self.node)
            .field("subject", &self.own.subject)
            .finish_non_exhaustive()
    }
}

/// The usages every node certificate must allow: each node both dials and accepts.
fn usages() -> [KeyUsage; 2] {
    [KeyUsage::server_auth(), KeyUsage::client_auth()]
}

impl Credentials {
    /// Parse and check `node`'s credentials: the certificate (first PEM block; any
    /// further blocks are intermediates) chains to the CA at `unix_now`, allows both TLS
    /// usages, names `node-<node>.<grid>.weft.internal` (which gives the grid), and
    /// `key_pem` is its Ed25519 key.
    pub fn from_pem(
        node: NodeId,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        unix_now: Option<u64>,
    ) -> Result<Credentials, CredentialError> {
        let ca = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or(CredentialError::CaPem)?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CredentialError::CertPem)?;
        let leaf = chain.first().ok_or(CredentialError::CertPem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| CredentialError::KeyPem)?;
        if !matches!(key, PrivateKeyDer::Pkcs8(_)) {
            return Err(CredentialError::KeyPem);
        }
        let signing = Ed25519Keys
            .load_private_key(key.clone_key())
            .map_err(|_| CredentialError::KeyType)?;
        let now = UnixTime::since_unix_epoch(core::time::Duration::from_secs(
            unix_now.ok_or(CredentialError::NoClock)?,
        ));
        verify_chain(&ca, &chain, now).map_err(CredentialError::NotIssued)?;
        let names = dns_names(leaf);
        let grid = names
            .iter()
            .filter_map(|n| parse_node_name(n))
            .find(|(_, n)| *n == node)
            .map(|(g, _)| g)
            .ok_or_else(|| CredentialError::NotThisNode {
                expected: node,
                names: names.clone(),
            })?;
        check_valid_for(leaf, &grid, node).map_err(|_| CredentialError::NotThisNode {
            expected: node,
            names,
        })?;
        let ca_grid = ca_grid(&ca).ok_or(CredentialError::NotAGridCa)?;
        if ca_grid != grid {
            return Err(CredentialError::OtherGrid {
                ca: ca_grid,
                cert: grid,
            });
        }
        let cert_spki = EndEntityCert::try_from(leaf)
            .map_err(|_| CredentialError::CertPem)?
            .subject_public_key_info();
        if signing.public_key().as_deref() != Some(cert_spki.as_ref()) {
            return Err(CredentialError::KeyMismatch);
        }
        let own = CertSummary::of(leaf).ok_or(CredentialError::CertPem)?;
        Ok(Credentials {
            grid,
            node,
            ca,
            chain,
            key,
            signing,
            own,
        })
    }

    pub fn grid(&self) -> &GridName {
        &self.grid
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key, for rustls's builders only.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    pub fn signing_key(&self) -> &Arc<dyn SigningKey> {
        &self.signing
    }

    /// This node's own certificate (subject, expiry).
    pub fn summary(&self) -> &CertSummary {
        &self.own
    }

    /// The name a peer `node`'s certificate must be valid for.
    pub fn name_of(&self, node: NodeId) -> String {
        node_name(&self.grid, node)
    }

    /// The server name to dial `node` by.
    pub fn server_name(&self, node: NodeId) -> Option<ServerName<'static>> {
        ServerName::try_from(self.name_of(node)).ok()
    }
}

/// webpki's verdict on `chain` (leaf first) under the trust anchor `ca` at `now`, for
/// both TLS usages.
fn verify_chain(
    ca: &CertificateDer<'_>,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| alloc::format!("{e:?}"))?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let leaf = EndEntityCert::try_from(leaf).map_err(|e| alloc::format!("{e:?}"))?;
    for usage in usages() {
        leaf.verify_for_usage(
            ED25519_ALGORITHMS.all,
            core::slice::from_ref(&anchor),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| alloc::format!("{e:?}"))?;
    }
    Ok(())
}

/// The DNS names of a certificate's subjectAltName, for messages and for finding
/// candidate node names (each is then checked with webpki's name matching).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(String::from).collect())
        .unwrap_or_default()
}

fn check_valid_for(cert: &CertificateDer<'_>, grid: &GridName, node: NodeId) -> Result<(), ()> {
    let name = ServerName::try_from(node_name(grid, node)).map_err(|_| ())?;
    EndEntityCert::try_from(cert)
        .map_err(|_| ())?
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| ())
}

/// Why a peer's certificate (already chain-verified by rustls) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentityError {
    /// The peer presented no certificate.
    NoCertificate,
    /// It names no node, or nodes of another grid only.
    WrongGrid,
    /// It names a node other than the one expected (a dialed peer), or a node that is
    /// this node itself.
    WrongNode(NodeId),
}

/// The node a peer's leaf certificate is for, in `grid`: the one node name of `grid` it
/// is valid for. `expected`: the node we dialed (refused if the certificate names
/// another). The chain itself was verified by rustls before this is called.
pub fn peer_node(
    leaf: &CertificateDer<'_>,
    grid: &GridName,
    local: NodeId,
    expected: Option<NodeId>,
) -> Result<NodeId, PeerIdentityError> {
    let mut nodes = dns_names(leaf)
        .iter()
        .filter_map(|n| parse_node_name(n))
        .filter(|(g, _)| g == grid)
        .map(|(_, n)| n)
        .filter(|n| check_valid_for(leaf, grid, *n).is_ok())
        .collect::<Vec<_>>();
    nodes.sort_unstable();
    nodes.dedup();
    let node = match nodes.as_slice() {
        [] => return Err(PeerIdentityError::WrongGrid),
        [one] => *one,
        // A certificate for several nodes identifies none of them.
        [first, ..] => return Err(PeerIdentityError::WrongNode(*first)),
    };
    if node == local || expected.is_some_and(|e| e != node) {
        return Err(PeerIdentityError::WrongNode(node));
    }
    Ok(node)
}

#[cfg(test)]
mod tests;
