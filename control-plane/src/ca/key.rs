//! Keys of the two identity algorithms, and the public key of a CSR.
//!
//! rcgen signs with ML-DSA and generates ML-DSA keys, but cannot load one
//! from PEM (its key parser knows ECDSA, Ed25519 and RSA), and x509-parser,
//! through which rcgen checks a CSR's self-signature, has no ML-DSA. So an
//! ML-DSA root key is aws-lc-rs' own key pair behind rcgen's signing traits,
//! and a CSR's proof of possession is checked here with aws-lc-rs for both
//! algorithms. Only the CSR's public key is ever used (see [`super::Ca`]).

use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_ASN1, ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair, UnparsedPublicKey,
};
use phoenix_api::tls_policy::IdentityAlgorithm;
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::prelude::FromDer;

/// Why a CSR is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not PEM, or not a PKCS#10 request.
    #[error("the CSR is not a PEM PKCS#10 certification request")]
    Parse,
    /// Its key is neither ECDSA P-256 nor ML-DSA-65.
    #[error("the CSR's key algorithm {oid} is not one the mesh issues (ECDSA P-256, ML-DSA-65)")]
    UnsupportedKey {
        /// The algorithm OID of its key.
        oid: String,
    },
    /// Signed with another algorithm than its own key's.
    #[error("the CSR is signed with {oid}, which does not match its key")]
    SignatureAlgorithm {
        /// The signature algorithm OID.
        oid: String,
    },
    /// The self-signature does not verify: no proof of possession.
    #[error("the CSR's signature does not verify with its own key")]
    BadSignature,
}

/// Why a root key cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// rcgen could not make an ECDSA P-256 key.
    #[error("cannot generate an ECDSA P-256 key")]
    Ecdsa(#[source] rcgen::Error),
    /// aws-lc could not make (or encode) an ML-DSA-65 key.
    #[error("cannot generate an ML-DSA-65 key")]
    MlDsa(#[source] aws_lc_rs::error::Unspecified),
    /// The stored key is not PEM.
    #[error("the stored key is not a PEM PKCS#8 private key")]
    Pem,
    /// The stored key is neither of the mesh's algorithms.
    #[error("the stored key is neither ECDSA P-256 (rcgen: {ecdsa}) nor ML-DSA-65")]
    Unreadable {
        /// Why rcgen refused it as ECDSA (boxed: it is large).
        ecdsa: Box<rcgen::Error>,
        /// Why aws-lc refused it as ML-DSA-65.
        #[source]
        ml_dsa: aws_lc_rs::error::KeyRejected,
    },
}

/// The CA's signing key.
pub enum RootKey {
    /// ECDSA P-256, as rcgen loads and signs it.
    EcdsaP256(KeyPair),
    /// ML-DSA-65, aws-lc-rs' key pair (kept with its PKCS#8 form to store it).
    MlDsa65 {
        /// The key pair.
        key: PqdsaKeyPair,
        /// Its PKCS#8 encoding.
        pkcs8: Vec<u8>,
    },
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_tuple("RootKey")
            .field(&self.algorithm_name())
            .finish()
    }
}

impl RootKey {
    /// A new key of `algorithm`.
    pub fn generate(algorithm: IdentityAlgorithm) -> Result<Self, KeyError> {
        match algorithm {
            IdentityAlgorithm::EcdsaP256 => {
                KeyPair::generate_for(super::signature_algorithm(algorithm))
                    .map(Self::EcdsaP256)
                    .map_err(KeyError::Ecdsa)
            }
            IdentityAlgorithm::MlDsa65 => {
                let key = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).map_err(KeyError::MlDsa)?;
                let pkcs8 = key.to_pkcs8v1().map_err(KeyError::MlDsa)?.as_ref().to_vec();
                Ok(Self::MlDsa65 { key, pkcs8 })
            }
        }
    }

    /// A stored key (PKCS#8 PEM) of either algorithm.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let ecdsa = match KeyPair::from_pem(pem) {
            Ok(key) => return Ok(Self::EcdsaP256(key)),
            Err(e) => Box::new(e),
        };
        let der = pem_der(pem).ok_or(KeyError::Pem)?;
        let key = PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, &der)
            .map_err(|ml_dsa| KeyError::Unreadable { ecdsa, ml_dsa })?;
        Ok(Self::MlDsa65 { key, pkcs8: der })
    }

    /// The key as PKCS#8 PEM, to store it: never log it.
    pub fn serialize_pem(&self) -> String {
        match self {
            Self::EcdsaP256(key) => key.serialize_pem(),
            Self::MlDsa65 { pkcs8, .. } => pem::encode_config(
                &pem::Pem::new("PRIVATE KEY", pkcs8.clone()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            ),
        }
    }

    /// Its identity algorithm.
    pub fn identity_algorithm(&self) -> IdentityAlgorithm {
        match self {
            Self::EcdsaP256(_) => IdentityAlgorithm::EcdsaP256,
            Self::MlDsa65 { .. } => IdentityAlgorithm::MlDsa65,
        }
    }

    fn algorithm_name(&self) -> &'static str {
        self.identity_algorithm().as_str()
    }
}

impl PublicKeyData for RootKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::EcdsaP256(key) => key.der_bytes(),
            Self::MlDsa65 { key, .. } => {
                use aws_lc_rs::signature::KeyPair as _;
                key.public_key().as_ref()
            }
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        super::signature_algorithm(self.identity_algorithm())
    }
}

impl SigningKey for RootKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::EcdsaP256(key) => key.sign(msg),
            Self::MlDsa65 { key, .. } => {
                let mut sig = vec![0; ML_DSA_65_SIGNING.signature_len()];
                let len = key
                    .sign(msg, &mut sig)
                    .map_err(|_| rcgen::Error::RemoteKeyError)?;
                sig.truncate(len);
                Ok(sig)
            }
        }
    }
}

/// The public key of a CSR whose self-signature verified.
#[derive(Debug, Clone)]
pub struct CsrKey {
    algorithm: IdentityAlgorithm,
    raw: Vec<u8>,
    /// URI names the CSR asks for (checked against the proven identity).
    pub requested_uris: Vec<String>,
}

impl CsrKey {
    /// Parses `csr_pem` and checks that it is signed by its own key (proof
    /// of possession). Nothing else in it is trusted: the caller takes the
    /// key and sets identity and extensions itself.
    pub fn from_pem(csr_pem: &str) -> Result<Self, CsrError> {
        let der = pem_der(csr_pem).ok_or(CsrError::Parse)?;
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .map_err(|_| CsrError::Parse)?;
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let key_oid = spki.algorithm.algorithm.to_id_string();
        let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
        let (algorithm, verify, expected_sig): (
            _,
            &'static dyn signature::VerificationAlgorithm,
            _,
        ) = match key_oid.as_str() {
            // id-ecPublicKey with the P-256 curve parameter.
            OID_EC_PUBLIC_KEY if ec_curve_is_p256(spki) => (
                IdentityAlgorithm::EcdsaP256,
                &ECDSA_P256_SHA256_ASN1,
                OID_ECDSA_SHA256,
            ),
            OID_ML_DSA_65 => (IdentityAlgorithm::MlDsa65, &ML_DSA_65, OID_ML_DSA_65),
            _ => return Err(CsrError::UnsupportedKey { oid: key_oid }),
        };
        if sig_oid != expected_sig {
            return Err(CsrError::SignatureAlgorithm { oid: sig_oid });
        }
        let raw = spki.subject_public_key.data.to_vec();
        UnparsedPublicKey::new(verify, &raw)
            .verify(info.raw, &csr.signature_value.data)
            .map_err(|_| CsrError::BadSignature)?;
        let requested_uris = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    Some(san.general_names.iter().filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                        _ => None,
                    }))
                }
                _ => None,
            })
            .flatten()
            .collect();
        Ok(Self {
            algorithm,
            raw,
            requested_uris,
        })
    }

    /// The key's identity algorithm.
    pub fn identity_algorithm(&self) -> IdentityAlgorithm {
        self.algorithm
    }
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        super::signature_algorithm(self.algorithm)
    }
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ML_DSA_65: &str = "2.16.840.1.101.3.4.3.18";

fn ec_curve_is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    spki.algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .is_some_and(|oid| oid.to_id_string() == OID_P256)
}

/// The DER inside the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(pem.as_bytes()).ok()?;
    Some(der)
}
