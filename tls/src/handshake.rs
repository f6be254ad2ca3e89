//! Per-connection quinn configs for PQ mutual TLS.
//!
//! A config is built for each connection because two things are per
//! connection: the identity the server must present (it depends on the
//! destination) and the [`Negotiation`] that records the negotiated group
//! and the peer's signature scheme.
//! Building one costs a few microseconds against ~1 ms for the handshake.

use std::sync::Arc;

use arc_swap::ArcSwap;

use phoenix_api::SpiffeId;
use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, KeyExchange};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;

use crate::sig::{RecordingClientVerifier, RecordingServerVerifier};
use crate::verify::SpiffeServerVerifier;
use crate::{Credentials, Negotiation, provider};

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The trust-anchor PEM cannot be parsed.
    #[error("trust anchor PEM cannot be parsed")]
    TrustAnchorPem(#[source] rustls::pki_types::pem::Error),
    /// The trust-anchor PEM holds no usable certificate.
    #[error("trust anchor PEM holds no usable CA certificate")]
    NoTrustAnchor,
    /// rustls refused the configuration.
    #[error("TLS configuration refused")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier cannot be built.
    #[error("client certificate verifier cannot be built")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC needs TLS_AES_128_GCM_SHA256 for Initial packets.
    #[error("QUIC initial cipher suite refused")]
    NoInitialSuite(#[from] NoInitialCipherSuite),
    /// The provider lacks TLS_AES_128_GCM_SHA256 for QUIC Initial packets.
    #[error("TLS_AES_128_GCM_SHA256 is unavailable for QUIC Initial packets")]
    MissingInitialSuite,
    /// No randomness for the address-validation token key.
    #[error("the system gave no randomness for the QUIC token key")]
    TokenKey(#[source] aws_lc_rs::error::Unspecified),
}

/// Whether a server asks clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Tunnels: every client must present a mesh certificate.
    Required,
    /// The control plane: bootstrapping proxies have no certificate yet.
    Optional,
}

/// What each side's handshake needs: the mesh roots and our credentials.
///
/// The roots are swappable: during a root rotation the control plane sends
/// a trust bundle (old and new root, later the new one alone), and the next
/// handshake uses it while established connections keep theirs. Clones share
/// the roots.
#[derive(Debug, Clone)]
pub struct TlsContext {
    trust: Arc<ArcSwap<Trust>>,
    credentials: Arc<Credentials>,
    /// Address-validation tokens: one key for every server config made here.
    tokens: crate::tokens::Tokens,
}

/// Roots and the verifiers built from them, swapped together.
#[derive(Debug)]
struct Trust {
    roots: Arc<RootCertStore>,
    /// The roots' PEM, to tell a real change from a repeated bundle.
    pem: String,
    /// Client-certificate verifiers, built once per bundle: they depend only
    /// on the roots and the signature algorithms, not on the connection.
    /// One per authentication policy and client-auth mode.
    verifiers: [ClientVerifiers; 2],
}

#[derive(Debug)]
struct ClientVerifiers {
    require_client: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    allow_anonymous: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl Trust {
    fn new(pem: &str) -> Result<Self, TlsConfigError> {
        let roots = Arc::new(parse_roots(pem)?);
        let verifiers = |auth| -> Result<ClientVerifiers, TlsConfigError> {
            let mut base = provider::provider(KeyExchange::PqOnly, &[]);
            base.signature_verification_algorithms = provider::verification_algorithms(auth);
            let base = Arc::new(base);
            let verifier =
                || WebPkiClientVerifier::builder_with_provider(roots.clone(), base.clone());
            Ok(ClientVerifiers {
                require_client: verifier().build()?,
                allow_anonymous: verifier().allow_unauthenticated().build()?,
            })
        };
        Ok(Self {
            verifiers: [verifiers(AuthPolicy::Any)?, verifiers(AuthPolicy::PqOnly)?],
            roots,
            pem: pem.to_owned(),
        })
    }

    fn client_verifier(
        &self,
        auth: AuthPolicy,
        client_auth: ClientAuth,
    ) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let set = match auth {
            AuthPolicy::Any => &self.verifiers[0],
            AuthPolicy::PqOnly => &self.verifiers[1],
        };
        match client_auth {
            ClientAuth::Required => set.require_client.clone(),
            ClientAuth::Optional => set.allow_anonymous.clone(),
        }
    }
}

/// Parses a PEM bundle of CA certificates into a root store (at least one).
pub fn parse_roots(pem: &str) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(TlsConfigError::TrustAnchorPem)?;
        roots.add(cert).map_err(TlsConfigError::Rustls)?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoTrustAnchor);
    }
    Ok(roots)
}

/// The TLS settings that come from mesh config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// Key-exchange groups allowed.
    pub key_exchange: KeyExchange,
    /// Cipher suites in preference order.
    pub cipher_suites: Vec<CipherSuite>,
    /// Which signatures authenticate a peer.
    pub auth_policy: AuthPolicy,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        Self {
            key_exchange: KeyExchange::PqOnly,
            cipher_suites: CipherSuite::DEFAULT.to_vec(),
            auth_policy: AuthPolicy::Any,
        }
    }
}

impl TlsContext {
    /// A context trusting the CA certificates in `roots_pem`.
    pub fn new(roots_pem: &str, credentials: Arc<Credentials>) -> Result<Self, TlsConfigError> {
        Ok(Self {
            trust: Arc::new(ArcSwap::from_pointee(Trust::new(roots_pem)?)),
            credentials,
            tokens: crate::tokens::Tokens::new().map_err(TlsConfigError::TokenKey)?,
        })
    }

    /// Trusts the CA certificates in `roots_pem` from the next handshake on
    /// (and no others); `Ok(false)` when they are already the ones trusted.
    pub fn set_roots(&self, roots_pem: &str) -> Result<bool, TlsConfigError> {
        if self.trust.load().pem == roots_pem {
            return Ok(false);
        }
        self.trust.store(Arc::new(Trust::new(roots_pem)?));
        Ok(true)
    }

    /// The trusted roots' PEM.
    pub fn roots_pem(&self) -> String {
        self.trust.load().pem.clone()
    }

    /// The trusted roots' common names (for the admin dump).
    pub fn root_names(&self) -> Vec<String> {
        CertificateDer::pem_slice_iter(self.trust.load().pem.as_bytes())
            .filter_map(Result::ok)
            .map(|c| crate::spiffe::common_name(&c, false).unwrap_or_default())
            .collect()
    }

    /// Our credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// A client config for one connection to a server that must be `expected`,
    /// offering the ALPN protocols `alpn` in order of preference.
    ///
    /// With `present_certificate` false the client authenticates the server
    /// only (a proxy bootstrapping its first certificate).
    pub fn client(
        &self,
        policy: &TlsPolicy,
        expected: SpiffeId,
        alpn: &[&[u8]],
        present_certificate: bool,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ClientConfig, Negotiation), TlsConfigError> {
        let (provider, lease) = leased_provider(policy);
        let verifier = RecordingServerVerifier::new(
            SpiffeServerVerifier::new(
                self.trust.load().roots.clone(),
                expected,
                provider.signature_verification_algorithms,
            ),
            lease.signature_slot(),
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut tls = if present_certificate {
            builder.with_client_cert_resolver(self.credentials.clone())
        } else {
            builder.with_no_client_auth()
        };
        tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        // Every handshake is a full PQ key exchange: peers keep long-lived
        // connections, so resumption would save little and hide the group.
        tls.resumption = Resumption::disabled();
        let quic = QuicClientConfig::with_initial(Arc::new(tls), initial_suite()?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport);
        config.token_store(self.tokens.store.clone());
        Ok((config, lease))
    }

    /// A server config for one incoming connection.
    pub fn server(
        &self,
        policy: &TlsPolicy,
        client_auth: ClientAuth,
        alpn: &[&[u8]],
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ServerConfig, Negotiation), TlsConfigError> {
        let (provider, lease) = leased_provider(policy);
        let verifier = Arc::new(RecordingClientVerifier::new(
            self.trust
                .load()
                .client_verifier(policy.auth_policy, client_auth),
            lease.signature_slot(),
        ));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.credentials.clone());
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tls.send_tls13_tickets = 0;
        let quic = QuicServerConfig::with_initial(Arc::new(tls), initial_suite()?)?;
        // The context's token key, not a random one per config: the
        // endpoint checks a token under its own config's key.
        let mut config = quinn::ServerConfig::new(Arc::new(quic), self.tokens.key.clone());
        config.validation_token_config(self.tokens.config.clone());
        config.transport_config(transport);
        Ok((config, lease))
    }
}

/// The peer's SPIFFE ID on an established connection.
pub fn peer_identity(conn: &quinn::Connection) -> Option<SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    crate::spiffe::spiffe_id(certs.first()?).ok()
}

/// Why a handshake failed, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// No key-exchange group in common (e.g. a classical-only peer of a pq-only proxy).
    NoSharedGroup,
    /// The peer's chain does not lead to the mesh root.
    UnknownCa,
    /// The peer's identity is not the one expected for the destination.
    BadIdentity,
    /// A signature did not verify (a certificate or the handshake itself).
    BadSignature,
    /// The peer's certificate has expired or is not yet valid.
    CertificateExpired,
    /// A client presented no certificate where one is required.
    NoClientCertificate,
    /// The peer speaks another protocol (ALPN mismatch).
    NoApplicationProtocol,
    /// The peer did not answer in time.
    Timeout,
    /// The connection was refused or reset before the handshake finished.
    Refused,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Classifies a failed connect or accept.
    pub fn classify(err: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match err {
            E::TimedOut => Self::Timeout,
            E::ConnectionClosed(c) => Self::from_code(c.error_code),
            E::TransportError(t) => Self::from_code(t.code),
            E::Reset | E::ApplicationClosed(_) | E::LocallyClosed => Self::Refused,
            _ => Self::Other,
        }
    }

    fn from_code(code: quinn::TransportErrorCode) -> Self {
        // QUIC carries TLS alerts as CRYPTO_ERROR 0x100 + alert (RFC 9001 §4.8).
        match u64::from(code).checked_sub(0x100) {
            Some(40) | Some(71) => Self::NoSharedGroup,
            Some(48) => Self::UnknownCa,
            Some(42) | Some(43) | Some(46) => Self::BadIdentity,
            Some(45) => Self::CertificateExpired,
            Some(51) => Self::BadSignature,
            Some(116) => Self::NoClientCertificate,
            Some(120) => Self::NoApplicationProtocol,
            _ => Self::Other,
        }
    }

    /// Lowercase label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSharedGroup => "no_shared_group",
            Self::UnknownCa => "unknown_ca",
            Self::BadIdentity => "bad_identity",
            Self::CertificateExpired => "certificate_expired",
            Self::BadSignature => "bad_signature",
            Self::NoClientCertificate => "no_client_certificate",
            Self::NoApplicationProtocol => "no_application_protocol",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Other => "other",
        }
    }
}

fn leased_provider(policy: &TlsPolicy) -> (Arc<CryptoProvider>, Negotiation) {
    let lease = Negotiation::new();
    let mut p = provider::provider(policy.key_exchange, &policy.cipher_suites);
    p.kx_groups = lease.kx().wrap(&p.kx_groups);
    p.signature_verification_algorithms = provider::verification_algorithms(policy.auth_policy);
    (Arc::new(p), lease)
}

/// QUIC Initial packets always use AES-128-GCM (RFC 9001 §5.2), whatever
/// suites the connection itself may use.
fn initial_suite() -> Result<rustls::quic::Suite, TlsConfigError> {
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or(TlsConfigError::MissingInitialSuite)
}
