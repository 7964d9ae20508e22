//! Test certificates (rcgen, on the host): a grid CA and node certificates, including
//! the kinds `weft ca` never makes (other CAs, other names, expired, other key types).

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SignatureAlgorithm, PKCS_ED25519,
};

use crate::channel::TlsContext;
use crate::identity::Credentials;
use crate::rng::{Csprng, Seed};

/// The wall clock of every test: 2026-01-01 (certificates are valid 2020..2040).
pub const NOW: u64 = 1_767_225_600;

pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(grid: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(DnType::CommonName, alloc::format!("weft grid {grid}"));
    p.key_usages = alloc::vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.name_constraints = Some(NameConstraints {
        permitted_subtrees: alloc::vec![GeneralSubtree::DnsName(alloc::format!(
            "{grid}.weft.internal"
        ))],
        excluded_subtrees: Vec::new(),
    });
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2040, 1, 1);
    p
}

impl TestCa {
    pub fn new(grid: &str) -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let params = ca_params(grid);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A CA that may issue any name (not a grid CA).
    pub fn unconstrained() -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = ca_params("any");
        params.name_constraints = None;
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (subjectAltName DNS names), its key of `alg`.
    pub fn issue_with(
        &self,
        names: &[&str],
        alg: &'static SignatureAlgorithm,
        not_after: (i32, u8, u8),
    ) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(names.clone()).unwrap();
        if let Some(first) = names.first() {
            p.distinguished_name.push(DnType::CommonName, first.clone());
        }
        p.extended_key_usages = alloc::vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth
        ];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// `node-<node>.<grid>.weft.internal`, valid until 2039.
    pub fn issue(&self, grid: &str, node: u32) -> (String, String) {
        let name = alloc::format!("node-{node}.{grid}.weft.internal");
        self.issue_with(&[&name], &PKCS_ED25519, (2039, 1, 1))
    }

    pub fn credentials(&self, grid: &str, node: u32) -> Credentials {
        let (cert, key) = self.issue(grid, node);
        Credentials::from_pem(node, &self.pem, &cert, &key, Some(NOW)).unwrap()
    }
}

pub fn rng(seed: u8) -> &'static Csprng {
    Csprng::leak(Seed::new([seed; 32]))
}

pub fn context(creds: Credentials) -> TlsContext {
    TlsContext::new(creds, rng(0x42)).unwrap()
}
