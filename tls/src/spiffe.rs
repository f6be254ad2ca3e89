//! Reading identities and lifetimes out of certificates.

use phoenix_api::SpiffeId;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    /// The certificate is not valid DER X.509.
    #[error("certificate cannot be parsed")]
    Unparsable,
    /// No URI SAN, or more than one.
    #[error("certificate must carry exactly one spiffe:// URI SAN")]
    NoSingleSpiffeId,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("certificate URI SAN is not a valid SPIFFE ID")]
    InvalidSpiffeId(#[source] phoenix_api::identity::IdentityError),
}

/// The single SPIFFE ID in `cert`'s URI SANs.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, CertIdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| CertIdentityError::Unparsable)?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| CertIdentityError::Unparsable)?
        .ok_or(CertIdentityError::NoSingleSpiffeId)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(CertIdentityError::NoSingleSpiffeId);
    };
    uri.parse().map_err(CertIdentityError::InvalidSpiffeId)
}

/// The certificate's `notAfter`, in seconds since the Unix epoch.
pub fn not_after_unix(cert: &CertificateDer<'_>) -> Result<i64, CertIdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| CertIdentityError::Unparsable)?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The certificate's `notBefore`, in seconds since the Unix epoch.
pub fn not_before_unix(cert: &CertificateDer<'_>) -> Result<i64, CertIdentityError> {
    let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| CertIdentityError::Unparsable)?;
    Ok(parsed.validity().not_before.timestamp())
}

/// The common name of the certificate's issuer (or of its subject): how the
/// admin dump and logs tell mesh roots apart, each root's name being unique.
pub fn common_name(cert: &CertificateDer<'_>, issuer: bool) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let name = if issuer {
        parsed.issuer()
    } else {
        parsed.subject()
    };
    let cn = name.iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}

/// The identity algorithm of the certificate's own key (not of the
/// signature on it); `None` for a key the mesh does not issue.
pub fn key_algorithm(
    cert: &CertificateDer<'_>,
) -> Option<phoenix_api::tls_policy::IdentityAlgorithm> {
    use phoenix_api::tls_policy::IdentityAlgorithm;
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let spki = parsed.public_key();
    match spki.algorithm.algorithm.to_id_string().as_str() {
        // id-ecPublicKey: the mesh issues P-256 only.
        "1.2.840.10045.2.1" => Some(IdentityAlgorithm::EcdsaP256),
        // id-ml-dsa-65 (FIPS 204).
        "2.16.840.1.101.3.4.3.18" => Some(IdentityAlgorithm::MlDsa65),
        _ => None,
    }
}

/// The algorithm of the first root in a PEM bundle: the one that signs now,
/// since the control plane writes the signer first. A bootstrapping proxy
/// generates its first key of it.
pub fn signer_algorithm(bundle_pem: &str) -> Option<phoenix_api::tls_policy::IdentityAlgorithm> {
    use rustls::pki_types::pem::PemObject;
    let first = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
        .next()?
        .ok()?;
    key_algorithm(&first)
}
