use alloc::vec::Vec;

use pki_types::alg_id;
use rustls::crypto::cipher::{InboundOpaqueMessage, OutboundChunks, OutboundPlainMessage};
use rustls::{ContentType, ProtocolVersion, SignatureScheme};

use super::*;
use crate::channel::Channel;
use crate::testing::{context, TestCa, NOW};

#[test]
fn the_provider_offers_one_suite_one_group_one_scheme() {
    let p = provider(crate::testing::rng(1));
    assert_eq!(p.cipher_suites.len(), 1);
    assert_eq!(
        p.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    assert_eq!(p.kx_groups.len(), 1);
    assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::X25519);
    assert_eq!(
        p.signature_verification_algorithms.supported_schemes(),
        [SignatureScheme::ED25519]
    );
}

#[test]
fn a_handshake_negotiates_exactly_that() {
    let ca = TestCa::new("g");
    let one = context(ca.credentials("g", 1));
    let two = context(ca.credentials("g", 2));
    let mut a = Channel::dial(&one, 2, Some(NOW)).unwrap();
    let mut b = Channel::accept(&two, Some(NOW)).unwrap();
    for _ in 0..5 {
        let out = a.output().to_vec();
        a.consumed(out.len());
        b.receive(&out, Some(NOW));
        let back = b.output().to_vec();
        b.consumed(back.len());
        a.receive(&back, Some(NOW));
    }
    let Some(crate::channel::Event::Established { .. }) = b.poll_event() else {
        panic!("not established");
    };
    let (suite, group, version) = b.negotiated();
    assert_eq!(
        suite,
        Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    assert_eq!(group, Some(rustls::NamedGroup::X25519));
    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
}

#[test]
fn records_round_trip_and_a_flipped_bit_is_refused() {
    let suite = TLS13_CHACHA20_POLY1305_SHA256.tls13().unwrap();
    let key = || rustls::crypto::cipher::AeadKey::from([7u8; 32]);
    let iv = || rustls::crypto::cipher::Iv::from([9u8; 12]);
    let mut enc = suite.aead_alg.encrypter(key(), iv());
    let mut dec = suite.aead_alg.decrypter(key(), iv());
    let payload = b"weft peer channel";
    let msg = OutboundPlainMessage {
        typ: ContentType::ApplicationData,
        version: ProtocolVersion::TLSv1_3,
        payload: OutboundChunks::Single(payload),
    };
    let sealed = enc.encrypt(msg, 5).unwrap().encode();
    let body: Vec<u8> = sealed[5..].to_vec();
    assert_eq!(body.len(), payload.len() + 1 + 16);
    let mut good = body.clone();
    let opened = dec
        .decrypt(
            InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut good,
            ),
            5,
        )
        .unwrap();
    assert_eq!(opened.payload, payload);
    assert_eq!(opened.typ, ContentType::ApplicationData);
    for seq in [5, 6] {
        let mut bad = body.clone();
        if seq == 5 {
            bad[3] ^= 0x40;
        }
        let result = dec.decrypt(
            InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut bad,
            ),
            seq,
        );
        assert!(result.is_err(), "seq {seq}");
    }
    let mut short = [0u8; 15];
    assert!(dec
        .decrypt(
            InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut short,
            ),
            7,
        )
        .is_err());
}

#[test]
fn ed25519_signatures_verify_and_forgeries_do_not() {
    let ca = TestCa::new("g");
    let creds = ca.credentials("g", 1);
    let signer = creds
        .signing_key()
        .choose_scheme(&[
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
        ])
        .unwrap();
    assert_eq!(signer.scheme(), SignatureScheme::ED25519);
    assert!(creds
        .signing_key()
        .choose_scheme(&[SignatureScheme::RSA_PSS_SHA256])
        .is_none());
    let sig = signer.sign(b"message").unwrap();
    let spki = creds.signing_key().public_key().unwrap();
    // The raw key is the last 32 bytes of the SPKI (RFC 8410).
    let raw = &spki.as_ref()[spki.as_ref().len() - 32..];
    let verify = ED25519_ALGORITHMS.all[0];
    assert_eq!(verify.public_key_alg_id(), alg_id::ED25519);
    assert!(verify.verify_signature(raw, b"message", &sig).is_ok());
    assert!(verify.verify_signature(raw, b"massage", &sig).is_err());
    let mut forged = sig.clone();
    forged[10] ^= 1;
    assert!(verify.verify_signature(raw, b"message", &forged).is_err());
    assert!(verify
        .verify_signature(&raw[1..], b"message", &sig)
        .is_err());
    assert!(verify.verify_signature(raw, b"message", &sig[1..]).is_err());
    // A small-order public key (the identity point) is refused outright.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(verify
        .verify_signature(&identity, b"message", &[0u8; 64])
        .is_err());
}

#[test]
fn only_pkcs8_ed25519_keys_load() {
    use pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
    use rustls::crypto::KeyProvider;
    assert!(Ed25519Keys
        .load_private_key(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(alloc::vec![
            0u8;
            32
        ])))
        .is_err());
    assert!(Ed25519Keys
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(alloc::vec![
            0x30u8, 0x00
        ])))
        .is_err());
}
