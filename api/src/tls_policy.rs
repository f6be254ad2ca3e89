//! TLS policy names shared by the mesh file, the config snapshot and metrics.
//!
//! They are the names users write and see (IANA names for groups and suites),
//! so they live in the wire contract rather than in the TLS implementation.

use serde::{Deserialize, Serialize};

/// Which key-exchange groups a proxy offers and accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchange {
    /// X25519MLKEM768 only: a classical-only peer is refused. The default.
    #[default]
    PqOnly,
    /// X25519MLKEM768 first, X25519 accepted from peers that lack ML-KEM.
    /// Every classical handshake is counted (`kx_group="X25519"`).
    PqPreferred,
}

impl KeyExchange {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PqOnly => "pq-only",
            Self::PqPreferred => "pq-preferred",
        }
    }
}

/// A TLS 1.3 cipher suite, by IANA name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum CipherSuite {
    /// AES-256-GCM with SHA-384: the default first choice.
    TLS13_AES_256_GCM_SHA384,
    /// AES-128-GCM with SHA-256: faster handshakes on CPUs without SHA-384 acceleration.
    TLS13_AES_128_GCM_SHA256,
    /// ChaCha20-Poly1305: for CPUs without AES instructions.
    TLS13_CHACHA20_POLY1305_SHA256,
}

impl CipherSuite {
    /// The default preference: AES-256-GCM first, then AES-128-GCM.
    pub const DEFAULT: &'static [CipherSuite] = &[
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ];
}

/// IANA name of the hybrid post-quantum group Phoenix requires by default.
pub const X25519MLKEM768: &str = "X25519MLKEM768";

/// The signature algorithm of the mesh's roots and workload certificates.
///
/// ML-DSA-65 (FIPS 204) makes authentication post-quantum as X25519MLKEM768
/// makes the key exchange: a future quantum computer could forge a P-256
/// signature, not an ML-DSA one. P-256 stays the default: its certificates
/// are ~0.5 KB against ~5.5 KB, and a handshake's numbers for both are in
/// benches/README.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityAlgorithm {
    /// ECDSA with P-256 and SHA-256: classical, small, every TLS stack has it.
    #[default]
    EcdsaP256,
    /// ML-DSA-65 (FIPS 204, NIST category 3): post-quantum.
    #[serde(rename = "ml-dsa-65")]
    MlDsa65,
}

impl IdentityAlgorithm {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::MlDsa65 => "ml-dsa-65",
        }
    }

    /// Whether signatures of this algorithm resist a quantum computer.
    pub fn is_post_quantum(self) -> bool {
        matches!(self, Self::MlDsa65)
    }

    /// Whether the default (so a snapshot need not carry it).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for IdentityAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown identity algorithm name (a flag or environment value).
#[derive(Debug, thiserror::Error)]
#[error("unknown identity algorithm {0:?}: use ecdsa-p256 or ml-dsa-65")]
pub struct UnknownIdentityAlgorithm(pub String);

impl std::str::FromStr for IdentityAlgorithm {
    type Err = UnknownIdentityAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(Self::EcdsaP256),
            "ml-dsa-65" => Ok(Self::MlDsa65),
            other => Err(UnknownIdentityAlgorithm(other.to_owned())),
        }
    }
}

/// Which signatures authenticate a peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPolicy {
    /// Any signature the mesh issues (ECDSA P-256 or ML-DSA): the default,
    /// and what a mesh migrating between them needs.
    #[default]
    Any,
    /// ML-DSA only, for certificates and handshake signatures alike: a peer
    /// that authenticates with a classical signature is refused.
    PqOnly,
}

impl AuthPolicy {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::PqOnly => "pq-only",
        }
    }

    /// Whether the default (so a snapshot need not carry it).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_algorithms_are_written_and_parsed_by_their_config_names() {
        for a in [IdentityAlgorithm::EcdsaP256, IdentityAlgorithm::MlDsa65] {
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.as_str()));
            assert_eq!(serde_json::from_str::<IdentityAlgorithm>(&json).unwrap(), a);
            assert_eq!(a.as_str().parse::<IdentityAlgorithm>().unwrap(), a);
        }
        let e = "ml-dsa-44".parse::<IdentityAlgorithm>().unwrap_err();
        assert!(e.to_string().contains("use ecdsa-p256 or ml-dsa-65"), "{e}");
        assert_eq!(
            serde_json::to_string(&AuthPolicy::PqOnly).unwrap(),
            "\"pq-only\""
        );
    }
}
