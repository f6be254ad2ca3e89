//! The crypto provider: aws-lc-rs, TLS 1.3 only, groups and suites in our order.

use std::sync::OnceLock;

use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, KeyExchange};
use rustls::SignatureScheme;
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};

/// The key-exchange groups a policy allows, most preferred first.
///
/// The order is explicit because rustls' default order depends on its
/// features: without `prefer-post-quantum`, X25519MLKEM768 comes last.
pub fn kx_groups(policy: KeyExchange) -> &'static [&'static dyn SupportedKxGroup] {
    static PQ_ONLY: [&dyn SupportedKxGroup; 1] = [kx_group::X25519MLKEM768];
    static PQ_PREFERRED: [&dyn SupportedKxGroup; 2] = [kx_group::X25519MLKEM768, kx_group::X25519];
    match policy {
        KeyExchange::PqOnly => &PQ_ONLY,
        KeyExchange::PqPreferred => &PQ_PREFERRED,
    }
}

/// A provider for `policy` and `suites` (in preference order).
///
/// An empty suite list falls back to [`CipherSuite::DEFAULT`], so a provider
/// can never be built that no peer could talk to.
pub fn provider(policy: KeyExchange, suites: &[CipherSuite]) -> CryptoProvider {
    let suites = if suites.is_empty() {
        CipherSuite::DEFAULT
    } else {
        suites
    };
    CryptoProvider {
        cipher_suites: suites
            .iter()
            .map(|s| match s {
                CipherSuite::TLS13_AES_256_GCM_SHA384 => cipher_suite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_AES_128_GCM_SHA256 => cipher_suite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => {
                    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256
                }
            })
            .collect(),
        kx_groups: kx_groups(policy).to_vec(),
        ..aws_lc_rs::default_provider()
    }
}

/// The post-quantum signature schemes (ML-DSA, FIPS 204).
pub const PQ_SIGNATURE_SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::ML_DSA_44,
    SignatureScheme::ML_DSA_65,
    SignatureScheme::ML_DSA_87,
];

/// The signature algorithms that may authenticate a peer under `auth`, for
/// its certificate chain and its handshake signature alike.
///
/// `pq-only` keeps aws-lc-rs' own ML-DSA verifiers and nothing else: a chain
/// signed with ECDSA anywhere, or an ECDSA CertificateVerify, then fails the
/// handshake (`bad_signature`). rustls wants `'static` tables, so the
/// filtered one is built once.
pub fn verification_algorithms(auth: AuthPolicy) -> WebPkiSupportedAlgorithms {
    let all = aws_lc_rs::default_provider().signature_verification_algorithms;
    match auth {
        AuthPolicy::Any => all,
        AuthPolicy::PqOnly => {
            static PQ: OnceLock<WebPkiSupportedAlgorithms> = OnceLock::new();
            *PQ.get_or_init(|| {
                let mapping: Vec<_> = all
                    .mapping
                    .iter()
                    .filter(|(scheme, _)| PQ_SIGNATURE_SCHEMES.contains(scheme))
                    .copied()
                    .collect();
                let algorithms: Vec<_> = mapping
                    .iter()
                    .flat_map(|(_, algs)| algs.iter().copied())
                    .collect();
                WebPkiSupportedAlgorithms {
                    all: Vec::leak(algorithms),
                    mapping: Vec::leak(mapping),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::NamedGroup;

    #[test]
    fn pq_only_offers_exactly_x25519mlkem768() {
        let p = provider(KeyExchange::PqOnly, &[]);
        let names: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names, vec![NamedGroup::X25519MLKEM768]);
    }

    #[test]
    fn pq_preferred_puts_mlkem_first() {
        let p = provider(KeyExchange::PqPreferred, &[]);
        let names: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(names, vec![NamedGroup::X25519MLKEM768, NamedGroup::X25519]);
    }

    #[test]
    fn aes_256_is_preferred_by_default() {
        let p = provider(KeyExchange::PqOnly, &[]);
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        assert!(p.cipher_suites.iter().all(|s| s.tls13().is_some()));
    }

    #[test]
    fn pq_only_authentication_verifies_ml_dsa_alone() {
        let pq = verification_algorithms(AuthPolicy::PqOnly);
        assert_eq!(pq.supported_schemes(), PQ_SIGNATURE_SCHEMES.to_vec());
        assert_eq!(pq.all.len(), 3);
        let any = verification_algorithms(AuthPolicy::Any).supported_schemes();
        assert!(any.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        assert!(any.contains(&SignatureScheme::ML_DSA_65));
    }
}
