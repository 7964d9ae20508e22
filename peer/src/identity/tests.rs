use super::*;
use crate::testing::{TestCa, NOW};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ED25519};

#[test]
fn names_parse_back_and_refuse_lookalikes() {
    let g = GridName::new("mygrid").unwrap();
    assert_eq!(node_name(&g, 7), "node-7.mygrid.weft.internal");
    assert_eq!(grid_domain(&g), "mygrid.weft.internal");
    assert_eq!(
        parse_node_name("node-7.mygrid.weft.internal"),
        Some((g.clone(), 7))
    );
    assert_eq!(parse_node_name("node-0.mygrid.weft.internal"), Some((g, 0)));
    for bad in [
        "node-07.mygrid.weft.internal",
        "node-+7.mygrid.weft.internal",
        "node-.mygrid.weft.internal",
        "node-7.my.grid.weft.internal",
        "node-7.mygrid.weft.example",
        "node-7.MyGrid.weft.internal",
        "node-99999999999.mygrid.weft.internal",
        "nodes-7.mygrid.weft.internal",
        "node-7..weft.internal",
    ] {
        assert_eq!(parse_node_name(bad), None, "{bad}");
    }
    assert!(GridName::new("-a").is_none());
    assert!(GridName::new(&"a".repeat(64)).is_none());
    assert!(GridName::new("a-1").is_some());
}

#[test]
fn good_credentials_give_the_grid_and_node() {
    let ca = TestCa::new("mygrid");
    let creds = ca.credentials("mygrid", 3);
    assert_eq!(creds.grid().as_str(), "mygrid");
    assert_eq!(creds.node(), 3);
    assert_eq!(creds.summary().subject, "CN=node-3.mygrid.weft.internal");
    assert_eq!(creds.name_of(4), "node-4.mygrid.weft.internal");
    let shown = alloc::format!("{creds:?}");
    assert!(
        !shown.contains("PRIVATE") && !shown.contains("key:"),
        "{shown}"
    );
}

#[test]
fn credentials_are_refused_with_what_to_fix() {
    let ca = TestCa::new("g");
    let (cert, key) = ca.issue("g", 3);
    let from = |node, ca_pem: &str, cert: &str, key: &str, now| {
        Credentials::from_pem(node, ca_pem, cert, key, now).err()
    };
    assert_eq!(
        from(3, "", &cert, &key, Some(NOW)),
        Some(CredentialError::CaPem)
    );
    assert_eq!(
        from(3, &ca.pem, "", &key, Some(NOW)),
        Some(CredentialError::CertPem)
    );
    assert_eq!(
        from(3, &ca.pem, &cert, "", Some(NOW)),
        Some(CredentialError::KeyPem)
    );
    assert_eq!(
        from(3, &ca.pem, &cert, &key, None),
        Some(CredentialError::NoClock)
    );
    // Another node's number.
    assert!(matches!(
        from(4, &ca.pem, &cert, &key, Some(NOW)),
        Some(CredentialError::NotThisNode { expected: 4, .. })
    ));
    // Another CA.
    let other = TestCa::new("g");
    assert!(matches!(
        from(3, &other.pem, &cert, &key, Some(NOW)),
        Some(CredentialError::NotIssued(_))
    ));
    // Expired.
    assert!(matches!(
        from(3, &ca.pem, &cert, &key, Some(2_300_000_000)),
        Some(CredentialError::NotIssued(_))
    ));
    // Another key.
    let (_, other_key) = ca.issue("g", 3);
    assert_eq!(
        from(3, &ca.pem, &cert, &other_key, Some(NOW)),
        Some(CredentialError::KeyMismatch)
    );
    // A P-256 key: not what the provider signs with.
    let (p256_cert, p256_key) = ca.issue_with(
        &["node-3.g.weft.internal"],
        &PKCS_ECDSA_P256_SHA256,
        (2039, 1, 1),
    );
    assert_eq!(
        from(3, &ca.pem, &p256_cert, &p256_key, Some(NOW)),
        Some(CredentialError::KeyType)
    );
    // A name outside the CA's grid: the name constraint refuses the chain.
    let (out, out_key) =
        ca.issue_with(&["node-3.other.weft.internal"], &PKCS_ED25519, (2039, 1, 1));
    assert!(matches!(
        from(3, &ca.pem, &out, &out_key, Some(NOW)),
        Some(CredentialError::NotIssued(_))
    ));
    // Refusals say what to fix without the key.
    let text = alloc::format!("{}", from(4, &ca.pem, &cert, &key, Some(NOW)).unwrap());
    assert!(text.contains("node-4.<grid>.weft.internal"), "{text}");
}

#[test]
fn a_peer_certificate_names_exactly_one_node_of_the_grid() {
    let ca = TestCa::new("g");
    let g = GridName::new("g").unwrap();
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (two, _) = ca.issue("g", 2);
    assert_eq!(peer_node(&der(&two), &g, 1, None), Ok(2));
    assert_eq!(peer_node(&der(&two), &g, 1, Some(2)), Ok(2));
    assert_eq!(
        peer_node(&der(&two), &g, 1, Some(3)),
        Err(PeerIdentityError::WrongNode(2))
    );
    assert_eq!(
        peer_node(&der(&two), &g, 2, None),
        Err(PeerIdentityError::WrongNode(2)),
        "a peer claiming our own id"
    );
    let other = GridName::new("h").unwrap();
    assert_eq!(
        peer_node(&der(&two), &other, 1, None),
        Err(PeerIdentityError::WrongGrid)
    );
    let (both, _) = ca.issue_with(
        &["node-2.g.weft.internal", "node-3.g.weft.internal"],
        &PKCS_ED25519,
        (2039, 1, 1),
    );
    assert_eq!(
        peer_node(&der(&both), &g, 1, None),
        Err(PeerIdentityError::WrongNode(2))
    );
    let (plain, _) = ca.issue_with(&["web.g.weft.internal"], &PKCS_ED25519, (2039, 1, 1));
    assert_eq!(
        peer_node(&der(&plain), &g, 1, None),
        Err(PeerIdentityError::WrongGrid)
    );
}

#[test]
fn the_ca_must_be_constrained_to_the_certificates_grid() {
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let ca = TestCa::new("g");
    assert_eq!(ca_grid(&der(&ca.pem)), GridName::new("g"));
    // A CA of grid "h" that (wrongly) signed a grid-"g" name: its own name constraint
    // already refuses the chain.
    let h = TestCa::new("h");
    let (cert, key) = h.issue("g", 3);
    assert!(matches!(
        Credentials::from_pem(3, &h.pem, &cert, &key, Some(NOW)),
        Err(CredentialError::NotIssued(_))
    ));
    // A CA without a name constraint is not a grid CA.
    let open = TestCa::unconstrained();
    let (cert, key) = open.issue("g", 3);
    assert_eq!(ca_grid(&der(&open.pem)), None);
    assert_eq!(
        Credentials::from_pem(3, &open.pem, &cert, &key, Some(NOW)).err(),
        Some(CredentialError::NotAGridCa)
    );
}

#[test]
fn subjects_read_as_rfc4514_without_the_oid_database() {
    use core::str::FromStr;
    use x509_cert::name::Name;
    // x509-cert's own `Display` (with const-oid's database) is the reference for the
    // types RFC 4514 names; the others it names from its database, we by dotted OID.
    for text in [
        "CN=node-2.mygrid.weft.internal",
        "CN=a,O=weft,C=DE",
        "CN=a+UID=7,OU=x\\,y,DC=example,DC=org",
        "CN=\\#lead,L=tail\\ ,ST=mid dle,STREET=q\\\"",
    ] {
        let name = Name::from_str(text).unwrap();
        assert_eq!(rfc4514(&name), name.to_string(), "{text}");
        assert_eq!(rfc4514(&name), text);
    }
    let serial = Name::from_str("serialNumber=123,CN=a").unwrap();
    assert_eq!(rfc4514(&serial), "2.5.4.5=#1303313233,CN=a");
}
