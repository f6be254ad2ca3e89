//! QUIC address-validation tokens, so a returning peer skips the
//! anti-amplification wait.
//!
//! Until a server has validated a client's address it may send at most three
//! times what it received (RFC 9000 §8). A PQ mutual-TLS server flight with
//! ML-DSA-65 is ~11 KB against ~2.9 KB of client Initials, so without a token
//! the server stalls for a round trip mid-handshake. Servers here hand out
//! tokens (NEW_TOKEN) and a reconnecting client presents one: its address is
//! validated at once. Two things quinn leaves to its user:
//! - one token key per context: proxies build a server config per
//!   connection, and a token issued under one connection's key must be
//!   checked under the endpoint's;
//! - the log that refuses a token seen twice (quinn's own needs its `bloom`
//!   feature and a crate more): [`BoundedTokenLog`], bounded in entries.
//!
//! Clients keep tokens by server name in one store per context, so each peer
//! gets a name of its own ([`peer_server_name`]); the certificate verifier
//! ignores it.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use quinn::crypto::HandshakeTokenKey;
use quinn::{TokenLog, TokenReuseError, ValidationTokenConfig};

/// How long a token is accepted after it was issued. Reconnections that
/// matter (a peer back after an idle close or a certificate drain) come
/// within minutes; a short lifetime keeps the log small.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Tokens a server sends on each connection (quinn's default with a log).
pub const TOKENS_PER_CONNECTION: u32 = 2;
/// Peers whose tokens a client keeps (least recently used dropped first).
pub const MAX_PEERS_WITH_TOKENS: u32 = 1024;
/// Most tokens remembered as used: past it a token is refused (the client
/// then waits a round trip, as without one), never accepted twice.
pub const MAX_USED_TOKENS: usize = 16_384;

/// A token log that refuses a nonce seen before, with bounded memory.
///
/// Entries leave in order of expiry (tokens share one lifetime, so that is
/// about the order they came in): each insert costs O(1) amortized, and a
/// full log of live tokens refuses new ones (the client then waits a round
/// trip, as without a token) rather than forget one and accept it twice.
#[derive(Debug, Default)]
pub struct BoundedTokenLog {
    used: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    nonces: HashSet<u128>,
    by_expiry: VecDeque<(SystemTime, u128)>,
}

impl TokenLog for BoundedTokenLog {
    fn check_and_insert(
        &self,
        nonce: u128,
        issued: SystemTime,
        lifetime: Duration,
    ) -> Result<(), TokenReuseError> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.nonces.contains(&nonce) {
            return Err(TokenReuseError);
        }
        // quinn refuses an expired token before asking, so expired entries
        // are no longer needed.
        let now = SystemTime::now();
        while let Some(&(expires, old)) = used.by_expiry.front() {
            if expires > now {
                break;
            }
            used.by_expiry.pop_front();
            used.nonces.remove(&old);
        }
        if used.nonces.len() >= MAX_USED_TOKENS {
            return Err(TokenReuseError);
        }
        used.nonces.insert(nonce);
        used.by_expiry.push_back((issued + lifetime, nonce));
        Ok(())
    }
}

/// The token key and policy one TLS context's servers share, and the store
/// its clients keep the tokens they were given in.
#[derive(Clone)]
pub struct Tokens {
    /// Seals and opens tokens: the same for every connection's config.
    pub key: Arc<dyn HandshakeTokenKey>,
    /// Lifetime, log and how many to send.
    pub config: ValidationTokenConfig,
    /// Tokens from servers, by server name. quinn makes a store per client
    /// config, and proxies make a config per connection: without one shared
    /// store a token would never reach the next connection.
    pub store: Arc<dyn quinn::TokenStore>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// A fresh random key and a bounded log. Fails only when the system
    /// gives no randomness (a predictable key would let anyone forge tokens
    /// and skip address validation).
    pub fn new() -> Result<Self, aws_lc_rs::error::Unspecified> {
        use aws_lc_rs::hkdf;
        let mut master = [0u8; 64];
        aws_lc_rs::rand::fill(&mut master)?;
        let key = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&master);
        let mut config = ValidationTokenConfig::default();
        config
            .lifetime(TOKEN_LIFETIME)
            .sent(TOKENS_PER_CONNECTION)
            .log(Arc::new(BoundedTokenLog::default()));
        Ok(Self {
            key: Arc::new(key),
            config,
            store: Arc::new(quinn::TokenMemoryCache::new(
                MAX_PEERS_WITH_TOKENS,
                TOKENS_PER_CONNECTION as usize,
            )),
        })
    }
}

/// The server name a client uses for the peer at `addr`: unique per peer,
/// so the client's token store keeps each peer's tokens apart.
pub fn peer_server_name(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    };
    format!("p{ip:x}-{}.peer.phoenix", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_once() {
        let log = BoundedTokenLog::default();
        let now = SystemTime::now();
        assert!(log.check_and_insert(7, now, TOKEN_LIFETIME).is_ok());
        assert!(log.check_and_insert(7, now, TOKEN_LIFETIME).is_err());
        assert!(log.check_and_insert(8, now, TOKEN_LIFETIME).is_ok());
    }

    #[test]
    fn a_full_log_refuses_rather_than_forgets() {
        let log = BoundedTokenLog::default();
        let now = SystemTime::now();
        for n in 0..MAX_USED_TOKENS as u128 {
            assert!(log.check_and_insert(n, now, TOKEN_LIFETIME).is_ok());
        }
        assert!(
            log.check_and_insert(u128::MAX, now, TOKEN_LIFETIME)
                .is_err()
        );
        assert!(log.check_and_insert(0, now, TOKEN_LIFETIME).is_err());
        // Once the remembered tokens have expired there is room again.
        let log = BoundedTokenLog::default();
        let long_ago = now - 2 * TOKEN_LIFETIME;
        for n in 0..MAX_USED_TOKENS as u128 {
            assert!(log.check_and_insert(n, long_ago, TOKEN_LIFETIME).is_ok());
        }
        assert!(log.check_and_insert(u128::MAX, now, TOKEN_LIFETIME).is_ok());
    }

    #[test]
    fn each_peer_has_its_own_server_name() {
        let a = peer_server_name("10.0.0.7:4143".parse().unwrap());
        let b = peer_server_name("10.0.0.7:4144".parse().unwrap());
        let c = peer_server_name("[fd00::7]:4143".parse().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, c);
        for name in [a, b, c] {
            assert!(
                rustls::pki_types::ServerName::try_from(name.as_str()).is_ok(),
                "{name}"
            );
        }
    }
}
