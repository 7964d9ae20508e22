//! Ed25519 (RFC 8032, RFC 8410) for rustls: loading this node's private key and signing
//! with it (`CertificateVerify`), and verifying peers' signatures and certificate chains
//! through webpki, over `ed25519-dalek`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey as DalekKey, VerifyingKey};
use pki_types::{
    alg_id, AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm,
    SubjectPublicKeyInfoDer,
};
use rustls::crypto::{KeyProvider, WebPkiSupportedAlgorithms};
use rustls::sign::{public_key_to_spki, Signer, SigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};

/// Verifies Ed25519 signatures (handshake and certificates).
#[derive(Debug)]
struct Ed25519Verify;

static ED25519_VERIFY: &dyn SignatureVerificationAlgorithm = &Ed25519Verify;

/// The only signature algorithm the peer channel accepts.
pub static ED25519_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[ED25519_VERIFY],
    mapping: &[(SignatureScheme::ED25519, &[ED25519_VERIFY])],
};

impl SignatureVerificationAlgorithm for Ed25519Verify {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key: [u8; 32] = public_key.try_into().map_err(|_| InvalidSignature)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| InvalidSignature)?;
        let signature = Signature::from_slice(signature).map_err(|_| InvalidSignature)?;
        // Strict: refuses small-order keys and non-canonical signatures.
        key.verify_strict(message, &signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
}

/// Loads PKCS#8 Ed25519 private keys (what `weft ca` writes).
#[derive(Debug)]
pub struct Ed25519Keys;

impl KeyProvider for Ed25519Keys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, Error> {
        let PrivateKeyDer::Pkcs8(der) = key_der else {
            return Err(Error::General(
                "the private key is not PKCS#8 (weft uses PKCS#8 Ed25519 keys)".into(),
            ));
        };
        let key = DalekKey::from_pkcs8_der(der.secret_pkcs8_der())
            .map_err(|_| Error::General("the private key is not a PKCS#8 Ed25519 key".into()))?;
        Ok(Arc::new(Ed25519Key(Arc::new(key))))
    }
}

/// This node's signing key; `ed25519-dalek` wipes it when the last reference goes.
pub struct Ed25519Key(Arc<DalekKey>);

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Key(..)")
    }
}

impl SigningKey for Ed25519Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(Ed25519Signer(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(public_key_to_spki(
            &alg_id::ED25519,
            self.0.verifying_key().as_bytes(),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

struct Ed25519Signer(Arc<DalekKey>);

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ed25519Signer(..)")
    }
}

impl Signer for Ed25519Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
