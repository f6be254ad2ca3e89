//! The proxy's own certificate and key, replaceable at any moment.
//!
//! Handshakes read the current credentials through the resolver traits, so a
//! renewed certificate is used by the next handshake while established
//! connections keep the one they were made with.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use phoenix_api::tls_policy::IdentityAlgorithm;

use crate::spiffe::{self, CertIdentityError};

/// Every scheme a mesh key may sign with, to learn which one a key has.
const SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::ML_DSA_65,
    SignatureScheme::ML_DSA_44,
    SignatureScheme::ML_DSA_87,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
];

/// Why credentials cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The PEM holds no certificate.
    #[error("no certificate in PEM chain")]
    NoCertificate,
    /// The PEM cannot be parsed.
    #[error("PEM cannot be parsed")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// The key is not usable by the provider.
    #[error("private key is not usable")]
    Key(#[source] rustls::Error),
    /// The key signs with no TLS 1.3 scheme the mesh knows.
    #[error("private key signs with no TLS 1.3 scheme the mesh uses (ECDSA P-256, ML-DSA)")]
    NoScheme,
    /// The leaf names no SPIFFE identity.
    #[error("certificate has no usable identity")]
    Identity(#[source] CertIdentityError),
}

/// A loaded certificate with the facts the proxy reports about it.
#[derive(Debug)]
pub struct Loaded {
    /// Certificate chain and signing key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
    /// The identity in the leaf.
    pub identity: phoenix_api::SpiffeId,
    /// Leaf `notBefore`, Unix seconds.
    pub not_before: i64,
    /// Leaf `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Common name of the leaf's issuer (which mesh root signed it).
    pub issuer: String,
    /// The scheme our handshake signatures use (the key's algorithm).
    pub scheme: SignatureScheme,
}

impl Loaded {
    /// The identity algorithm of our key, if it is one the mesh issues.
    pub fn algorithm(&self) -> Option<IdentityAlgorithm> {
        match self.scheme {
            SignatureScheme::ECDSA_NISTP256_SHA256 => Some(IdentityAlgorithm::EcdsaP256),
            SignatureScheme::ML_DSA_65 => Some(IdentityAlgorithm::MlDsa65),
            _ => None,
        }
    }
}

/// Holder of the current credentials.
#[derive(Debug, Default)]
pub struct Credentials {
    current: ArcSwapOption<Loaded>,
}

impl Credentials {
    /// Parses a PEM chain (leaf first) and PEM private key.
    pub fn parse(
        chain_pem: &str,
        key_pem: &str,
        provider: &CryptoProvider,
    ) -> Result<Loaded, CredentialsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CredentialsError::Pem)?;
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let identity = spiffe::spiffe_id(leaf).map_err(CredentialsError::Identity)?;
        let not_before = spiffe::not_before_unix(leaf).map_err(CredentialsError::Identity)?;
        let not_after = spiffe::not_after_unix(leaf).map_err(CredentialsError::Identity)?;
        let issuer = spiffe::common_name(leaf, true).unwrap_or_default();
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(CredentialsError::Pem)?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(CredentialsError::Key)?;
        let scheme = signing
            .choose_scheme(&SCHEMES)
            .map(|signer| signer.scheme())
            .ok_or(CredentialsError::NoScheme)?;
        Ok(Loaded {
            key: Arc::new(CertifiedKey::new(chain, signing)),
            identity,
            not_before,
            not_after,
            issuer,
            scheme,
        })
    }

    /// Makes `loaded` the credentials of every later handshake.
    pub fn store(&self, loaded: Loaded) {
        self.current.store(Some(Arc::new(loaded)));
    }

    /// The current credentials, if any.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|l| l.key.clone())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|l| l.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
