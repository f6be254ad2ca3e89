//! The crypto provider: aws-lc-rs, TLS 1.3 only, groups and suites in our order.

use phoenix_api::tls_policy::{CipherSuite, KeyExchange};
use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

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
}
