//! Phoenix control plane: turns a mesh description into per-proxy config
//! snapshots, issues workload certificates, and pushes config to proxies.
//!
//! Sources: the mesh file ([`mesh`], file mode). The pure [`index`] builds
//! snapshots; [`hub`] holds the live state; [`server`] speaks to proxies;
//! [`ca`] signs certificates.

#[cfg(feature = "kubernetes")]
pub mod admission;
pub mod ca;
#[cfg(feature = "kubernetes")]
pub mod crd;
#[cfg(feature = "kubernetes")]
pub mod gateway;
pub mod hub;
pub mod index;
#[cfg(feature = "kubernetes")]
pub mod inject;
#[cfg(feature = "kubernetes")]
pub mod k8s;
pub mod mesh;
pub mod metrics;
pub mod publish;
pub mod retry;
pub mod roots;
pub mod server;
pub mod source;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use phoenix_api::control::ALPN_CONTROL;
use phoenix_runtime::admin::{self, AdminState};
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::{ClientAuth, TlsPolicy};
use phoenix_tls::{Credentials, TlsContext};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::ca::{Ca, RootOrigin};
use crate::hub::Hub;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::roots::{Phase, Schedule};
use crate::server::Server;
use crate::source::MeshSource;
use crate::tokens::Tokens;
use phoenix_runtime::supervisor::Supervisor;

/// File of saved proxy registrations in the state directory.
pub const REGISTRATIONS_FILE: &str = "registrations.json";
/// How long restored registrations wait for their proxy to resubscribe
/// (longer than a proxy's 5 s maximum resubscription backoff).
const RESTORE_GRACE: Duration = Duration::from_secs(30);

/// Lifetime of the control plane's own serving certificate.
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Settings of one control-plane run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The mesh file (re-read when it changes).
    pub mesh_path: PathBuf,
    /// The tokens file (re-read when it changes).
    pub tokens_path: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin: SocketAddr,
    /// State directory (CA root).
    pub state_dir: PathBuf,
}

/// Addresses and facts printed on stdout as one JSON line at start.
pub use phoenix_runtime::announce::ControlPlaneBound as Bound;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CA could not be loaded or created.
    #[error("certificate authority")]
    Ca(#[from] ca::CaError),
    /// TLS setup failed.
    #[error("TLS")]
    Tls(#[from] phoenix_tls::handshake::TlsConfigError),
    /// Our own certificate is unusable.
    #[error("serving certificate")]
    Credentials(#[from] phoenix_tls::credentials::CredentialsError),
    /// Key generation failed.
    #[error("key generation")]
    Key(#[from] rcgen::Error),
    /// The root schedule (`roots.json`) is unusable.
    #[error("root schedule")]
    Roots(#[from] roots::RootsError),
    /// The trust bundle file cannot be written.
    #[error("cannot write the trust bundle {path}")]
    TrustBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The tokens file is unusable.
    #[error("tokens")]
    Tokens(#[from] tokens::TokensError),
    /// A task the control plane needs ended before shutdown (a bug: it is
    /// logged).
    #[error("the control plane's {task} task {how} before shutdown")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// How it ended (returned, panicked).
        how: &'static str,
    },
    /// A listener could not be bound.
    #[error("cannot bind {what} on {addr}")]
    Bind {
        /// Which.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the control plane with an already validated `mesh` until `shutdown`.
pub async fn run(
    settings: Settings,
    mesh: Mesh,
    on_bound: impl FnOnce(&Bound) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), StartError> {
    run_boxed(settings, mesh, Box::new(on_bound), Box::pin(shutdown)).await
}

/// The body of `run` as a boxed future, built here: the future's code (its
/// poll, and all the generic code it calls) is compiled once, in this crate,
/// and a binary only polls it through the box. A generic `async fn`, and
/// even a non-generic one awaited from generic code, is compiled anew in
/// every binary that calls it, which made the binaries' release builds slow
/// (the control plane's binary alone was 54 s of a 4 min 47 s build).
#[allow(clippy::type_complexity)]
fn run_boxed<'a>(
    settings: Settings,
    mesh: Mesh,
    on_bound: Box<dyn FnOnce(&Bound) + Send + 'a>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StartError>> + Send + 'a>> {
    Box::pin(run_body(settings, mesh, on_bound, shutdown))
}

async fn run_body(
    settings: Settings,
    mesh: Mesh,
    on_bound: Box<dyn FnOnce(&Bound) + Send + '_>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let (ca, origin) = Ca::load_or_create(
        &settings.state_dir,
        &mesh.trust_domain,
        mesh.identity_algorithm,
    )?;
    let trust_anchor = settings.state_dir.join(roots::BUNDLE_FILE);
    match origin {
        RootOrigin::Generated => {
            tracing::info!(dir = %settings.state_dir.display(), "generated a new mesh root CA")
        }
        RootOrigin::Loaded => {
            tracing::info!(dir = %settings.state_dir.display(), "loaded the mesh root CA")
        }
    }
    let schedule = Schedule::load(&settings.state_dir, Arc::new(ca))?;
    let phase = schedule.phase(SystemTime::now(), mesh.certificate_lifetime);
    let tokens = Tokens::load(&settings.tokens_path)?;
    if tokens.is_empty() {
        tracing::warn!(path = %settings.tokens_path.display(), "no bootstrap tokens: no proxy can obtain a certificate yet");
    }
    let policy = TlsPolicy {
        key_exchange: mesh.key_exchange,
        cipher_suites: mesh.cipher_suites.clone(),
        auth_policy: roots::TrustRoots::effective(Some(&phase.trust_roots()), mesh.auth_policy),
    };
    let front = Front::bind(
        &phase,
        mesh.control_plane_identity.clone(),
        &policy,
        settings.listen,
        settings.admin,
        trust_anchor,
        &metrics,
    )
    .await?;

    let (hub, restored) =
        Hub::new(mesh, tokens).persist_to(settings.state_dir.join(REGISTRATIONS_FILE));
    if restored > 0 {
        tracing::info!(
            restored,
            "restored proxy registrations; unconfirmed ones expire in {RESTORE_GRACE:?}"
        );
    }
    let hub = Arc::new(hub);
    hub.set_roots(&phase.trust_roots());
    metrics.config_version.set(hub.version() as i64);
    let admin_state = Arc::new(ControlAdmin {
        hub: hub.clone(),
        credentials: front.credentials.clone(),
        bound: front.bound.clone(),
    });
    let mut tasks = Supervisor::default();
    tasks.spawn(
        "mesh file watch",
        watch_files(settings.clone(), hub.clone(), metrics.clone()),
    );
    {
        let hub = hub.clone();
        tasks.spawn("restored registrations", async move {
            tokio::time::sleep(RESTORE_GRACE).await;
            hub.expire_restored();
            // Done; a supervised task that returns means a bug.
            std::future::pending::<()>().await;
        });
    }
    let (phases, phase_rx) = tokio::sync::watch::channel(phase);
    {
        let hub = hub.clone();
        let dir = settings.state_dir.clone();
        let mut stamp_then = stamp(&dir.join(roots::ROOTS_FILE));
        let metrics = metrics.clone();
        let reload = move || {
            let now = stamp(&dir.join(roots::ROOTS_FILE));
            let changed = now != stamp_then;
            stamp_then = now;
            let loaded = changed.then(|| match std::fs::read(dir.join(roots::ROOTS_FILE)) {
                Ok(bytes) => {
                    Schedule::from_json(&bytes, roots::ROOTS_FILE).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            });
            let next = match loaded {
                Some(Ok(s)) => Some(s),
                Some(Err(error)) => {
                    metrics.config_refused.inc();
                    tracing::error!(%error, "root schedule refused; keeping the roots in force");
                    None
                }
                None => None,
            };
            std::future::ready(next)
        };
        let lifetime = {
            let hub = hub.clone();
            move || hub.certificate_lifetime()
        };
        tasks.spawn(
            "root schedule",
            roots::drive(schedule, reload, lifetime, phases, Duration::from_secs(1)),
        );
    }
    // Close the hub before connections end, so ending subscriptions do
    // not erase the registrations saved for the next start.
    let closing = hub.clone();
    let shutdown = async move {
        shutdown.await;
        closing.close();
    };
    let serving = Serving {
        source: hub,
        phases: phase_rx,
        metrics,
        registry,
        admin_state,
        tasks,
    };
    front.serve(serving, on_bound, shutdown).await
}

/// What every control plane presents, whatever its source: a serving
/// certificate from the mesh CA, the QUIC endpoint and the admin listener.
pub(crate) struct Front {
    endpoint: quinn::Endpoint,
    admin_listener: TcpListener,
    tls: TlsContext,
    transport: TransportSettings,
    credentials: Arc<Credentials>,
    identity: phoenix_api::SpiffeId,
    bound: Bound,
}

impl Front {
    /// Issues our serving certificate and binds both listeners.
    pub(crate) async fn bind(
        phase: &Phase,
        identity: phoenix_api::SpiffeId,
        policy: &TlsPolicy,
        listen: SocketAddr,
        admin: SocketAddr,
        trust_anchor: PathBuf,
        metrics: &Metrics,
    ) -> Result<Self, StartError> {
        let credentials = Arc::new(Credentials::default());
        let not_after = renew_serving_cert(&phase.signer, &credentials, &identity, policy)?;
        metrics.certificate_expiry_timestamp_seconds.set(not_after);
        metrics.trust_roots.set(phase.trusted as i64);
        write_bundle(&trust_anchor, &phase.bundle)?;
        let tls = TlsContext::new(&phase.bundle, credentials.clone())?;
        let transport = TransportSettings::default();
        let (default_server, _lease) = tls.server(
            policy,
            ClientAuth::Optional,
            &[ALPN_CONTROL],
            transport.server_transport(),
        )?;
        let endpoint = phoenix_tls::endpoint::bind(listen, &transport, Some(default_server))
            .map_err(|source| StartError::Bind {
                what: "control QUIC endpoint",
                addr: listen,
                source,
            })?;
        let admin_listener = TcpListener::bind(admin)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin listener",
                addr: admin,
                source,
            })?;
        let local = |r: std::io::Result<SocketAddr>, what, addr| {
            r.map_err(|source| StartError::Bind { what, addr, source })
        };
        let bound = Bound {
            control: local(endpoint.local_addr(), "control QUIC endpoint", listen)?,
            admin: local(admin_listener.local_addr(), "admin listener", admin)?,
            identity: identity.to_string(),
            trust_anchor,
        };
        Ok(Self {
            endpoint,
            admin_listener,
            tls,
            transport,
            credentials,
            identity,
            bound,
        })
    }

    /// Serves proxies and the admin port until `shutdown`, renewing the
    /// serving certificate under the source's policy and following the
    /// mesh roots in `phases` (each new bundle goes to the source, which
    /// sends it to every proxy); then drains and returns. A supervised task
    /// that ends first is an error: the process exits instead of serving
    /// half a control plane.
    pub(crate) async fn serve(
        self,
        serving: Serving,
        on_bound: impl FnOnce(&Bound),
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let Serving {
            source,
            mut phases,
            metrics,
            registry,
            admin_state,
            mut tasks,
        } = serving;
        let Front {
            endpoint,
            admin_listener,
            tls,
            transport,
            credentials,
            identity,
            bound,
        } = self;
        let signer = Arc::new(arc_swap::ArcSwap::new(
            phases.borrow_and_update().signer.clone(),
        ));
        let server = Arc::new(Server {
            source: source.clone(),
            ca: signer.clone(),
            tls: tls.clone(),
            transport,
            metrics: metrics.clone(),
        });
        tasks.spawn("control endpoint", server.serve(endpoint.clone()));
        tasks.spawn(
            "admin",
            admin::serve(admin_listener, Arc::new(registry), admin_state),
        );
        let trust_anchor = bound.trust_anchor.clone();
        tasks.spawn("serving certificate", async move {
            let mut watching = true;
            let mut renew_in = SERVING_CERT_LIFETIME * 2 / 3;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(renew_in) => {}
                    changed = phases.changed(), if watching => {
                        if changed.is_err() {
                            // The schedule's driver ended: keep renewing
                            // with the roots in force.
                            tracing::error!("the root schedule stopped; keeping the roots in force");
                            watching = false;
                            continue;
                        }
                        // Trust first, then sign: a proxy must never see a
                        // certificate from a root it was not told about.
                        let phase = phases.borrow_and_update().clone();
                        if let Err(error) = tls.set_roots(&phase.bundle) {
                            tracing::error!(%error, "cannot trust the new mesh roots");
                            continue;
                        }
                        if let Err(error) = write_bundle(&trust_anchor, &phase.bundle) {
                            tracing::warn!(%error, "cannot write the trust bundle for local proxies");
                        }
                        metrics.trust_roots.set(phase.trusted as i64);
                        source.set_roots(&phase.trust_roots());
                        signer.store(phase.signer);
                    }
                }
                renew_in = match renew_serving_cert(&signer.load(), &credentials, &identity, &source.tls_policy()) {
                    Ok(na) => {
                        metrics.certificate_expiry_timestamp_seconds.set(na);
                        SERVING_CERT_LIFETIME * 2 / 3
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot renew the serving certificate; retrying in 10s");
                        Duration::from_secs(10)
                    }
                };
            }
        });
        on_bound(&bound);
        tracing::info!(control = %bound.control, admin = %bound.admin, "control plane ready");

        tokio::select! {
            () = shutdown => {}
            (task, ended) = tasks.first_to_end() => {
                tracing::error!(task, how = ended.as_str(), "a control-plane task ended before shutdown; exiting");
                tasks.abort_all();
                endpoint.close(quinn::VarInt::from_u32(1), b"control plane task ended");
                return Err(StartError::TaskEnded { task, how: ended.as_str() });
            }
        }
        tracing::info!("shutting down");
        endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        tasks.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok(())
    }
}

/// What a control plane serves once its listeners are bound, whatever its
/// source: both modes build one and hand it to [`Front::serve`].
pub(crate) struct Serving {
    /// Where the mesh comes from.
    pub(crate) source: Arc<dyn MeshSource>,
    /// The mesh roots in force, as the schedule moves.
    pub(crate) phases: tokio::sync::watch::Receiver<Phase>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Their registry, served on the admin port.
    pub(crate) registry: Registry,
    /// What the admin port reports.
    pub(crate) admin_state: Arc<dyn AdminState>,
    /// The source's own tasks (watches, schedules); the server's join them.
    pub(crate) tasks: Supervisor,
}

/// Writes the trust bundle for proxies that bootstrap from a file, whole or
/// not at all (written aside, then renamed).
fn write_bundle(path: &Path, bundle: &str) -> Result<(), StartError> {
    let io = |source| StartError::TrustBundle {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("crt.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&tmp, bundle).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn renew_serving_cert(
    ca: &Ca,
    credentials: &Credentials,
    identity: &phoenix_api::SpiffeId,
    policy: &TlsPolicy,
) -> Result<i64, StartError> {
    // Our own certificate follows the signing root's algorithm, so a
    // pq-only proxy accepts the control plane once the mesh has migrated.
    let key = rcgen::KeyPair::generate_for(ca::signature_algorithm(ca.algorithm()))?;
    let pem = ca.issue_for_key(&key, identity, SERVING_CERT_LIFETIME)?;
    let provider = phoenix_tls::provider::provider(policy.key_exchange, &policy.cipher_suites);
    let loaded = Credentials::parse(&pem, &key.serialize_pem(), &provider)?;
    let not_after = loaded.not_after;
    credentials.store(loaded);
    Ok(not_after)
}

/// Re-reads the mesh and tokens files when they change. An invalid mesh is
/// refused (log line and `config_refused_total`); the last good one stays.
async fn watch_files(settings: Settings, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut mesh_stamp = stamp(&settings.mesh_path);
    let mut tokens_stamp = stamp(&settings.tokens_path);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stamp(&settings.tokens_path);
        if now != tokens_stamp {
            tokens_stamp = now;
            match Tokens::load(&settings.tokens_path) {
                Ok(t) => {
                    tracing::info!(tokens = t.len(), "bootstrap tokens reloaded");
                    hub.set_tokens(t);
                }
                Err(error) => {
                    tracing::error!(%error, "tokens file refused; keeping the previous tokens")
                }
            }
        }
        let now = stamp(&settings.mesh_path);
        if now == mesh_stamp {
            continue;
        }
        mesh_stamp = now;
        match Mesh::load(&settings.mesh_path) {
            Ok(mesh) => {
                let current = hub.mesh();
                if mesh.trust_domain != current.trust_domain {
                    metrics.config_refused.inc();
                    tracing::error!(
                        from = %current.trust_domain,
                        to = %mesh.trust_domain,
                        "mesh file refused: the trust domain cannot change while running; restart with a new stateDir"
                    );
                    continue;
                }
                if *current == mesh {
                    continue;
                }
                hub.set_mesh(mesh);
                metrics.config_version.set(hub.version() as i64);
                tracing::info!(version = hub.version(), "mesh file reloaded");
            }
            Err(error) => {
                metrics.config_refused.inc();
                tracing::error!(%error, "mesh file refused; keeping the last good mesh");
            }
        }
    }
}

/// Modification time and length: enough to notice an edit.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct ControlAdmin {
    hub: Arc<Hub>,
    credentials: Arc<Credentials>,
    bound: Bound,
}

impl AdminState for ControlAdmin {
    fn ready(&self) -> Result<(), Vec<String>> {
        match self.credentials.current() {
            Some(_) => Ok(()),
            None => Err(vec!["no serving certificate".into()]),
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let mesh = self.hub.mesh();
        let cert = self.credentials.current();
        serde_json::json!({
            "version": self.hub.version(),
            "control": self.bound.control,
            "admin": self.bound.admin,
            "identity": self.bound.identity,
            "trustAnchor": self.bound.trust_anchor,
            "certificate": cert.as_ref().map(|c| serde_json::json!({
                "identity": c.identity.to_string(),
                "notAfter": c.not_after,
            })),
            "mesh": {
                "trustDomain": mesh.trust_domain,
                "keyExchange": mesh.key_exchange.as_str(),
                "cipherSuites": mesh.cipher_suites,
                "certificateLifetimeSeconds": mesh.certificate_lifetime.as_secs(),
                "workloads": mesh.workloads.values().map(|w| serde_json::json!({
                    "name": w.name,
                    "identity": w.identity.to_string(),
                    "upstreams": w.upstreams,
                    "serve": w.serve.iter().map(|(s, v)| serde_json::json!({
                        "service": s,
                        "target": v.target,
                        "allow": v.allow.as_ref().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            },
            "registrations": self.hub.registrations(),
        })
    }
}
