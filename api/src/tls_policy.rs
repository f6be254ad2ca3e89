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
