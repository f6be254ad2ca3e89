//! The proxy's side of the control plane: certificates and config.
//!
//! The proxy trusts the control plane through the mesh root it was given,
//! proves who it is with its bootstrap token, and gets a certificate for the
//! identity the token names (the CSR contributes only its public key). It
//! renews at two thirds of the lifetime; established connections keep their
//! certificate, new handshakes use the new one.
//!
//! With a certificate it subscribes to config: one full snapshot, then
//! deltas. When the control plane goes away the proxy keeps the last good
//! config and resubscribes with backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phoenix_api::SpiffeId;
use phoenix_api::control::{self, ALPN_CONTROL, ErrorCode, Request, Response, WIRE_VERSION};
use phoenix_api::frame::{Direction, FrameDecoder};
use phoenix_api::secret::Secret;
use phoenix_api::snapshot::Snapshot;
use phoenix_api::tls_policy::IdentityAlgorithm;
use phoenix_tls::credentials::{Credentials, Loaded};
use phoenix_tls::frames::ReadFrameError;
use phoenix_tls::handshake::TlsPolicy;
use serde::de::DeserializeOwned;

use crate::config::ProxyConfig;
use crate::state::Shared;
use phoenix_runtime::backoff::Backoff;

/// Where the control plane is and how to prove who we are to it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// Its QUIC address, `host:port`: an IP, or a name resolved at every
    /// connection (in a cluster, the control plane's Service).
    pub address: String,
    /// The identity its certificate must carry.
    pub identity: SpiffeId,
    /// Where our token comes from.
    pub token: Token,
    /// Key exchange for talking to it (the mesh setting is not known yet).
    pub policy: TlsPolicy,
    /// The algorithm of our key until config names the mesh's.
    pub identity_algorithm: IdentityAlgorithm,
}

/// The token that proves who we are.
#[derive(Clone, Debug)]
pub enum Token {
    /// Given once (file mode: `phoenix up` passes it in the environment).
    Fixed(Secret),
    /// Read from a file at every request: a projected ServiceAccount token,
    /// which the kubelet rotates in place.
    File(std::path::PathBuf),
}

impl Token {
    /// The current token.
    pub fn read(&self) -> Result<Secret, ControlError> {
        match self {
            Token::Fixed(t) => Ok(t.clone()),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| Secret::new(t.trim()))
                .map_err(|source| ControlError::TokenFile {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// Why talking to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// TLS config could not be built.
    #[error("TLS config")]
    Tls(#[from] phoenix_tls::handshake::TlsConfigError),
    /// quinn refused to connect.
    #[error("cannot start connection")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed.
    #[error("connection to the control plane failed")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream failed.
    #[error("control stream failed")]
    Stream,
    /// A frame could not be encoded or decoded.
    #[error("bad control frame")]
    Frame(#[from] control::FrameError),
    /// The CSR could not be built.
    #[error("cannot build key or CSR")]
    Csr(#[from] rcgen::Error),
    /// The returned certificate is unusable.
    #[error("certificate from the control plane is unusable")]
    Credentials(#[from] phoenix_tls::credentials::CredentialsError),
    /// The control plane refused the request.
    #[error("control plane refused: {code:?}: {message}")]
    Refused {
        /// Its reason code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The control plane answered with an unexpected message.
    #[error("unexpected answer from the control plane")]
    Unexpected,
    /// The control plane's name does not resolve.
    #[error("cannot resolve the control plane address {address}")]
    Resolve {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file cannot be read.
    #[error("cannot read the token file {path}")]
    TokenFile {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ControlPlane {
    /// The address to connect to now, in the family of our endpoint.
    pub async fn resolve(&self, endpoint: &quinn::Endpoint) -> Result<SocketAddr, ControlError> {
        if let Ok(addr) = self.address.parse() {
            return Ok(addr);
        }
        let error = |source| ControlError::Resolve {
            address: self.address.clone(),
            source,
        };
        let v6 = endpoint.local_addr().map_err(error)?.is_ipv6();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&self.address)
            .await
            .map_err(error)?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| error(std::io::Error::other("no address")))
    }
}

/// The algorithm our next key should have: the mesh's signing root's, from
/// config, or the bootstrap setting before any config arrived.
pub fn wanted_algorithm(shared: &Shared, cp: &ControlPlane) -> IdentityAlgorithm {
    shared
        .config
        .load()
        .as_ref()
        .map_or(cp.identity_algorithm, |c| c.mesh.identity_algorithm)
}

/// The TLS policy towards the control plane: the bootstrap one, with the
/// mesh's `authPolicy` once config names it, so under `pq-only` a classical
/// certificate cannot pose as the control plane either.
fn control_policy(shared: &Shared, cp: &ControlPlane) -> TlsPolicy {
    let mut policy = cp.policy.clone();
    if let Some(config) = shared.config.load().as_ref() {
        policy.auth_policy = config.mesh.tls.auth_policy;
    }
    policy
}

/// rcgen's signature algorithm for a key of `algorithm`.
fn key_algorithm(algorithm: IdentityAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match algorithm {
        IdentityAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        IdentityAlgorithm::MlDsa65 => &rcgen::PKCS_ML_DSA_65,
    }
}

/// Asks the control plane for a certificate (server-authenticated only),
/// for a new key of `algorithm`.
pub async fn obtain_certificate(
    shared: &Shared,
    cp: &ControlPlane,
    algorithm: IdentityAlgorithm,
) -> Result<Loaded, ControlError> {
    let key = rcgen::KeyPair::generate_for(key_algorithm(algorithm))?;
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let addr = cp.resolve(&shared.endpoint).await?;
    let (config, _lease) = shared.tls.client(
        &control_policy(shared, cp),
        cp.identity.clone(),
        &[ALPN_CONTROL],
        false,
        shared.transport.client_transport_to(Some(addr.ip())),
    )?;
    let conn = shared
        .endpoint
        .connect_with(config, addr, "control-plane.phoenix")?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &Request::IssueCertificate {
            token: cp.token.read()?,
            csr_pem,
        },
    )
    .await?;
    let answer: Response = read_frame(&mut recv, &mut FrameDecoder::new(Direction::Response))
        .await?
        .ok_or(ControlError::Stream)?;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    match answer {
        Response::Certificate { chain_pem, .. } => {
            let provider =
                phoenix_tls::provider::provider(cp.policy.key_exchange, &cp.policy.cipher_suites);
            Ok(Credentials::parse(
                &chain_pem,
                &key.serialize_pem(),
                &provider,
            )?)
        }
        Response::Error { code, message } => Err(ControlError::Refused { code, message }),
        _ => Err(ControlError::Unexpected),
    }
}

/// Keeps a valid certificate in `shared.tls` for ever: renews at two thirds
/// of each certificate's lifetime, retrying with backoff, and at once when
/// config names another identity algorithm than our key's (a mesh moving
/// to ML-DSA: the new root signs, so every proxy re-keys; the old root
/// stays trusted meanwhile, so no handshake breaks).
pub async fn certificates(shared: Arc<Shared>, cp: ControlPlane) {
    let mut backoff = control_backoff();
    let mut config_changed = shared.config_changed.subscribe();
    loop {
        let algorithm = wanted_algorithm(&shared, &cp);
        match obtain_certificate(&shared, &cp, algorithm).await {
            Ok(loaded) => {
                backoff.reset();
                let (nb, na) = (loaded.not_before, loaded.not_after);
                tracing::info!(identity = %loaded.identity, not_after = na, algorithm = %algorithm, "certificate obtained");
                shared.metrics.certificate_expiry_timestamp_seconds.set(na);
                shared.metrics.certificate_renewals.inc();
                shared.tls.credentials().store(loaded);
                let renew_at = nb + (na - nb) * 2 / 3;
                let renewal = tokio::time::sleep(until_unix(renew_at));
                tokio::pin!(renewal);
                loop {
                    tokio::select! {
                        () = &mut renewal => break,
                        changed = config_changed.changed() => {
                            if changed.is_err() {
                                // The proxy is shutting down: renew on time.
                                (&mut renewal).await;
                                break;
                            }
                            let wanted = wanted_algorithm(&shared, &cp);
                            if wanted != algorithm {
                                // Spread the mesh's proxies over a second
                                // rather than all at the CA at once.
                                let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
                                tracing::info!(from = %algorithm, to = %wanted, in_ms = jitter.as_millis() as u64, "the mesh signs with another algorithm now: re-keying");
                                tokio::time::sleep(jitter).await;
                                break;
                            }
                        }
                    }
                }
            }
            Err(error) => {
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?wait, "cannot obtain a certificate");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Subscribes to config for ever, applying snapshots and deltas.
pub async fn subscribe(shared: Arc<Shared>, cp: ControlPlane, inbound: SocketAddr) {
    let mut backoff = control_backoff();
    loop {
        if shared.tls.credentials().current().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        match subscription(&shared, &cp, inbound, &mut backoff).await {
            Ok(()) => tracing::info!("control plane closed the subscription; resubscribing"),
            Err(error) => {
                tracing::warn!(%error, "config subscription failed; keeping the last good config")
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn subscription(
    shared: &Shared,
    cp: &ControlPlane,
    inbound: SocketAddr,
    backoff: &mut Backoff,
) -> Result<(), ControlError> {
    let addr = cp.resolve(&shared.endpoint).await?;
    let (config, _lease) = shared.tls.client(
        &control_policy(shared, cp),
        cp.identity.clone(),
        &[ALPN_CONTROL],
        true,
        shared.transport.client_transport_to(Some(addr.ip())),
    )?;
    let conn = shared
        .endpoint
        .connect_with(config, addr, "control-plane.phoenix")?
        .await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        &Request::Subscribe {
            wire_version: WIRE_VERSION,
            inbound,
        },
    )
    .await?;
    // The last snapshot received, valid or not: deltas apply to it, and a
    // later delta may turn a refused snapshot valid again.
    let mut wire: Option<Snapshot> = None;
    let mut frames = FrameDecoder::new(Direction::Response);
    loop {
        let msg = match read_frame::<Response>(&mut recv, &mut frames).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            // A snapshot or delta this proxy cannot read (a service name
            // outside the grammar, a field it does not know): refused like
            // an invalid one, counted, and the last good config stays.
            Err(ControlError::Frame(error @ control::FrameError::Json(_))) => {
                shared.metrics.config_refused.inc();
                tracing::error!(error = %phoenix_runtime::process::error_chain(&error), "config refused: cannot read the control plane's message; keeping the last good config");
                return Err(ControlError::Frame(error));
            }
            Err(error) => return Err(error),
        };
        backoff.reset();
        let next = match msg {
            Response::Snapshot(s) => s,
            Response::Delta(d) => {
                let Some(base) = &wire else {
                    return Err(ControlError::Unexpected);
                };
                match base.apply(&d) {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, "delta does not apply; resubscribing");
                        shared.metrics.config_refused.inc();
                        return Ok(());
                    }
                }
            }
            Response::Error { code, message } => {
                return Err(ControlError::Refused { code, message });
            }
            Response::Certificate { .. } => return Err(ControlError::Unexpected),
        };
        apply(shared, &next);
        wire = Some(next);
    }
    Ok(())
}

/// Validates and installs a snapshot; an invalid one is refused, counted and
/// logged, and the last good config stays.
pub fn apply(shared: &Shared, snapshot: &Snapshot) -> bool {
    match ProxyConfig::try_from(snapshot) {
        Ok(config) => {
            tracing::info!(version = config.version, "config applied");
            shared.install(config);
            true
        }
        Err(error) => {
            shared.metrics.config_refused.inc();
            tracing::error!(version = snapshot.version, %error, "config refused; keeping the last good config");
            false
        }
    }
}

async fn write_frame<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), ControlError> {
    let frame = control::encode_frame(msg, Direction::Request)?;
    send.write_all(&frame)
        .await
        .map_err(|_| ControlError::Stream)
}

/// Reads the control plane's next message; `None` when the stream ended
/// cleanly between frames. `frames` lives as long as the stream: it holds
/// the part of a frame read so far, never more than the frame in progress.
async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    frames: &mut FrameDecoder,
) -> Result<Option<T>, ControlError> {
    match phoenix_tls::frames::read_body(recv, frames).await {
        Ok(Some(body)) => Ok(Some(control::decode_body(&body)?)),
        Ok(None) => Ok(None),
        Err(ReadFrameError::Frame(error)) => Err(ControlError::Frame(error)),
        Err(ReadFrameError::Stream(_)) => Err(ControlError::Stream),
    }
}

/// Retries toward the control plane: from 100 ms to 5 s, jittered.
fn control_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

fn until_unix(at: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(at.max(0) as u64).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_api::snapshot::{Endpoint, MeshSettings, Resource, Upstream};
    use phoenix_api::tls_policy::{CipherSuite, KeyExchange};
    use phoenix_tls::endpoint::TransportSettings;

    fn shared() -> Shared {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().pem();
        let tls = phoenix_tls::TlsContext::new(&root, Arc::new(Credentials::default())).unwrap();
        let transport = TransportSettings::default();
        let endpoint =
            phoenix_tls::endpoint::bind("127.0.0.1:0".parse().unwrap(), &transport, None).unwrap();
        Shared::new(tls, transport, endpoint, Default::default())
    }

    fn snapshot(version: u64, identity: &str) -> Snapshot {
        let resources = [
            Resource::Mesh(MeshSettings {
                trust_domain: "td".into(),
                key_exchange: KeyExchange::PqOnly,
                cipher_suites: CipherSuite::DEFAULT.to_vec(),
                peer_idle_timeout_ms: 1000,
                connect_timeout_ms: 1000,
                inbound_mode: Default::default(),
                trust_bundle_pem: None,
                identity_algorithm: Default::default(),
                auth_policy: Default::default(),
            }),
            Resource::Upstream(Upstream {
                service: "db".parse().unwrap(),
                listen: Some("127.0.0.1:0".parse().unwrap()),
                addresses: vec![],
                connect_timeout_ms: None,
                idle_timeout_ms: None,
                endpoints: vec![Endpoint {
                    address: "127.0.0.1:9".parse().unwrap(),
                    identity: identity.into(),
                    other_ips: vec![],
                }],
                protocol: Default::default(),
                request_timeout_ms: None,
                retry: None,
                routes: Vec::new(),
            }),
        ];
        Snapshot {
            version,
            resources: resources.into_iter().map(|r| (r.key(), r)).collect(),
        }
    }

    #[tokio::test]
    async fn an_invalid_snapshot_is_refused_and_the_last_good_one_stays() {
        let shared = shared();
        assert!(apply(&shared, &snapshot(1, "spiffe://td/ns/default/sa/db")));
        assert_eq!(shared.metrics.config_version.get(), 1);

        assert!(!apply(
            &shared,
            &snapshot(2, "spiffe://other-domain/ns/default/sa/db")
        ));
        assert_eq!(shared.metrics.config_refused.get(), 1);
        assert_eq!(shared.metrics.config_version.get(), 1);
        let kept = shared.config.load_full().unwrap();
        assert_eq!(kept.version, 1, "the last good config stays in force");
    }
}
