//! The control plane in Kubernetes: CA from a Secret, identity from
//! TokenReview, the mesh from watches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use phoenix_api::SpiffeId;
use phoenix_runtime::admin::AdminState;
use phoenix_tls::Credentials;
use phoenix_tls::handshake::TlsPolicy;
use prometheus_client::registry::Registry;

use super::MESHED_LABEL;
use super::ca_secret::{self, CaSecretError};
use super::index::Index;
use super::live::Live;
use super::routes::Raw;
use super::token_review::Reviewer;
use super::watch::{self, KINDS};
use super::webhook::Webhook;
use crate::ca::RootOrigin;
use crate::crd::{MeshConfig, TrafficPolicy};
use crate::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use crate::inject::Injector;
use crate::metrics::{KindLabels, Metrics};
use crate::roots::Phase;
use crate::source::MeshSource;
use crate::{Bound, Front, Serving, StartError};
use phoenix_runtime::supervisor::Supervisor;
use tokio::net::TcpListener;

/// How often removals every proxy has seen are dropped from the change log.
const COMPACT_EVERY: Duration = Duration::from_secs(30);
/// How often the root Secret is re-read for a rotation: well inside any
/// sensible overlap window (minutes to hours).
const SECRET_POLL: Duration = Duration::from_secs(30);

/// Settings of the Kubernetes control plane.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Our namespace (the CA Secret lives here).
    pub namespace: String,
    /// Our ServiceAccount (our identity).
    pub service_account: String,
    /// The trust domain (fixed at install; MeshConfig must agree).
    pub trust_domain: String,
    /// Name of the CA root Secret.
    pub ca_secret: String,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Admin listen address.
    pub admin: SocketAddr,
    /// Where the root certificate is written for local readers (tests, `phoenix check`).
    pub state_dir: PathBuf,
    /// Our name in the leader Lease (the pod name).
    pub holder: String,
    /// The injection webhook's HTTPS address (`None`: no webhook).
    pub webhook_listen: Option<SocketAddr>,
    /// Our Service's name: the webhook certificate's DNS names and the
    /// address injected proxies use.
    pub service: String,
    /// The MutatingWebhookConfiguration whose `caBundle` we keep.
    pub webhook_config: String,
    /// The proxy image the injector puts in pods.
    pub proxy_image: String,
}

pub use super::source::KubeSource;

/// Why the Kubernetes control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeStartError {
    /// The CA root Secret.
    #[error("CA root")]
    CaSecret(#[from] CaSecretError),
    /// The MeshConfig (read for the algorithm of a new root) cannot be read.
    #[error("cannot read MeshConfig default")]
    MeshConfig(#[source] kube::Error),
    /// The shared start-up (listeners, TLS).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The webhook's TLS.
    #[error(transparent)]
    Webhook(#[from] super::webhook::WebhookError),
    /// The webhook's listener cannot be bound.
    #[error("cannot bind the injection webhook on {addr}")]
    WebhookBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Our own identity is invalid.
    #[error(
        "namespace {namespace:?} and ServiceAccount {service_account:?} do not form an identity"
    )]
    Identity {
        /// Namespace.
        namespace: String,
        /// ServiceAccount.
        service_account: String,
        /// Why.
        #[source]
        source: phoenix_api::identity::IdentityError,
    },
}

/// Runs against the cluster `client` until `shutdown`.
pub async fn run(
    settings: KubeSettings,
    client: kube::Client,
    on_bound: impl FnOnce(&Bound) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), KubeStartError> {
    run_boxed(settings, client, Box::new(on_bound), Box::pin(shutdown)).await
}

/// The body of `run` as a boxed future, built here: the future's code (its
/// poll, and all the generic code it calls) is compiled once, in this crate,
/// and a binary only polls it through the box. A generic `async fn`, and
/// even a non-generic one awaited from generic code, is compiled anew in
/// every binary that calls it, which made the binaries' release builds slow
/// (the control plane's binary alone was 54 s of a 4 min 47 s build).
#[allow(clippy::type_complexity)]
fn run_boxed<'a>(
    settings: KubeSettings,
    client: kube::Client,
    on_bound: Box<dyn FnOnce(&Bound) + Send + 'a>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), KubeStartError>> + Send + 'a>> {
    Box::pin(run_body(settings, client, on_bound, shutdown))
}

async fn run_body(
    settings: KubeSettings,
    client: kube::Client,
    on_bound: Box<dyn FnOnce(&Bound) + Send + '_>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
) -> Result<(), KubeStartError> {
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    // The Secret's schedule (one root until a rotation), from the one read
    // that loaded or created it; re-read every SECRET_POLL so a `rotate-ca`
    // reaches every replica.
    // A root made now (a new mesh) has the MeshConfig's identityAlgorithm;
    // an existing root keeps its own until `rotate-ca`.
    let algorithm = first_root_algorithm(&client, &settings.trust_domain)
        .await
        .map_err(KubeStartError::MeshConfig)?;
    let (schedule, origin, seen) = ca_secret::start_schedule(
        client.clone(),
        &settings.namespace,
        &settings.ca_secret,
        &settings.trust_domain,
        algorithm,
    )
    .await?;
    let secret = format!("{}/{}", settings.namespace, settings.ca_secret);
    match origin {
        RootOrigin::Generated => tracing::info!(%secret, "generated a new mesh root CA"),
        RootOrigin::Loaded => tracing::info!(%secret, "loaded the mesh root CA"),
    }
    let trust_anchor = settings.state_dir.join(crate::roots::BUNDLE_FILE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let identity = SpiffeId::workload(
        &settings.trust_domain,
        &settings.namespace,
        &settings.service_account,
    )
    .map_err(|source| KubeStartError::Identity {
        namespace: settings.namespace.clone(),
        service_account: settings.service_account.clone(),
        source,
    })?;

    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let live = Arc::new(Live::new(Index::new(&settings.trust_domain, start), KINDS));
    let policy = tls_policy(&live);
    let phase = schedule.phase(SystemTime::now(), live.mesh().certificate_lifetime);
    live.apply(|index| index.set_roots(&phase.trust_roots()));
    let cp_identity = identity.clone();
    let front = Front::bind(
        &phase,
        identity,
        &policy,
        settings.listen,
        settings.admin,
        trust_anchor,
        &metrics,
    )
    .await?;

    let mut tasks = Supervisor::default();
    let w = |l: &Arc<Live>| (l.clone(), metrics.clone());
    // One watch per kind; the Gateway API's kinds are optional (their CRDs
    // may be missing: see watch::OPTIONAL_KINDS).
    let all = watcher::Config::default;
    // Only meshed pods: the rest of the cluster's pods are not held in memory.
    let meshed = all().labels(&format!("{MESHED_LABEL}=true"));
    let watches = [
        spawn_watch::<Service>(&client, all(), &live, &metrics),
        spawn_watch::<EndpointSlice>(&client, all(), &live, &metrics),
        spawn_watch::<Pod>(&client, meshed, &live, &metrics),
        spawn_watch::<Namespace>(&client, all(), &live, &metrics),
        spawn_watch::<MeshConfig>(&client, all(), &live, &metrics),
        spawn_watch::<TrafficPolicy>(&client, all(), &live, &metrics),
        spawn_watch::<Raw<HttpRoute>>(&client, all(), &live, &metrics),
        spawn_watch::<Raw<GrpcRoute>>(&client, all(), &live, &metrics),
        spawn_watch::<Raw<ReferenceGrant>>(&client, all(), &live, &metrics),
    ];
    for (name, task) in watches {
        tasks.spawn(name, task);
    }
    {
        let (live, metrics) = w(&live);
        tasks.spawn("watch health", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_compaction = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                for (kind, stale) in live.health.staleness(now) {
                    metrics
                        .kubernetes_watch_stale_seconds
                        .get_or_create(&KindLabels { kind: kind.into() })
                        .set(stale.as_secs() as i64);
                }
                metrics.config_version.set(live.version() as i64);
                if now - last_compaction >= COMPACT_EVERY {
                    live.compact();
                    last_compaction = now;
                }
            }
        });
    }

    // One replica leads and writes status; every replica serves proxies.
    let (leading, lead) = tokio::sync::watch::channel(false);
    tasks.spawn(
        "leader election",
        super::leader::run(
            client.clone(),
            settings.namespace.clone(),
            settings.holder.clone(),
            leading,
        ),
    );
    tasks.spawn(
        "status writer",
        super::status::run(client.clone(), live.clone(), lead.clone()),
    );
    let (phases, phase_rx) = tokio::sync::watch::channel(phase.clone());
    tasks.spawn(
        "trust bundle ConfigMaps",
        super::trust_bundle::run(client.clone(), live.clone(), phase_rx.clone(), lead.clone()),
    );

    let admin_state = Arc::new(KubeAdmin {
        lead,
        live: live.clone(),
        credentials: front.credentials.clone(),
        bound: front.bound.clone(),
    });
    let source = Arc::new(KubeSource {
        live: live.clone(),
        reviewer: Reviewer::new(client.clone()),
    });
    if let Some(addr) = settings.webhook_listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| KubeStartError::WebhookBind { addr, source })?;
        let svc = &settings.service;
        let ns = &settings.namespace;
        let dns = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ];
        let injector = Injector {
            image: settings.proxy_image.clone(),
            control_plane: format!("{svc}.{ns}.svc:{}", settings.listen.port()),
            control_plane_identity: cp_identity.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let credentials = Arc::new(Credentials::default());
        let webhook = Arc::new(Webhook {
            injector: arc_swap::ArcSwap::from_pointee(injector),
        });
        let tls = super::webhook::tls_config(credentials.clone())?;
        tasks.spawn("webhook", super::webhook::serve(listener, tls, webhook));
        tasks.spawn(
            "webhook roots",
            follow_roots(
                client.clone(),
                settings.webhook_config.clone(),
                phase_rx.clone(),
                admin_state.lead.clone(),
                credentials,
                cp_identity,
                dns,
            ),
        );
        tracing::info!(%addr, "injection webhook listening");
    }
    {
        let namespace = settings.namespace.clone();
        let name = settings.ca_secret.clone();
        let seen = Arc::new(tokio::sync::Mutex::new(seen));
        let reload = move || {
            let (secrets, namespace, name, seen) = (
                secrets.clone(),
                namespace.clone(),
                name.clone(),
                seen.clone(),
            );
            async move {
                let mut seen = seen.lock().await;
                match ca_secret::reload(&secrets, &namespace, &name, &mut seen).await {
                    Ok(next) => next,
                    Err(error) => {
                        tracing::warn!(error = %phoenix_runtime::process::error_chain(&error), "cannot re-read the root Secret; keeping the roots in force");
                        None
                    }
                }
            }
        };
        let lifetime = {
            let source = source.clone();
            move || source.certificate_lifetime()
        };
        tasks.spawn(
            "root schedule",
            crate::roots::drive(schedule, reload, lifetime, phases, SECRET_POLL),
        );
    }
    let serving = Serving {
        source,
        phases: phase_rx,
        metrics,
        registry,
        admin_state,
        tasks,
    };
    Ok(front.serve(serving, on_bound, shutdown).await?)
}

/// Keeps the webhook in step with the mesh roots: its certificate from the
/// root that signs and (on the leader) the configuration's `caBundle`,
/// re-checked every 10 s.
#[allow(clippy::too_many_arguments)]
async fn follow_roots(
    client: kube::Client,
    config_name: String,
    mut phases: tokio::sync::watch::Receiver<Phase>,
    mut lead: tokio::sync::watch::Receiver<bool>,
    credentials: Arc<Credentials>,
    identity: SpiffeId,
    dns: Vec<String>,
) {
    let mut issued: Option<(Arc<crate::ca::Ca>, std::time::Instant)> = None;
    loop {
        let phase = phases.borrow_and_update().clone();
        let stale = issued.as_ref().is_none_or(|(signer, at)| {
            !Arc::ptr_eq(signer, &phase.signer) || at.elapsed() > WEBHOOK_CERT_LIFETIME * 2 / 3
        });
        if stale {
            match issue_webhook_cert(&phase.signer, &credentials, &identity, &dns) {
                Ok(()) => issued = Some((phase.signer.clone(), std::time::Instant::now())),
                Err(error) => {
                    tracing::error!(%error, "cannot issue the webhook certificate; retrying")
                }
            }
        }
        if *lead.borrow_and_update() {
            match super::webhook_config::ensure_ca_bundle(
                client.clone(),
                &config_name,
                &phase.bundle,
            )
            .await
            {
                Ok(true) => tracing::info!(config = %config_name, "webhook caBundle updated"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %phoenix_runtime::process::error_chain(&error), "cannot update the webhook caBundle; retrying")
                }
            }
        }
        // A cheap GET: every 10 s, so entries added by an upgrade (without
        // a caBundle) are filled in before many pods are refused.
        let retry = if issued.is_some() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            r = phases.changed() => if r.is_err() { return },
            r = lead.changed() => if r.is_err() { return },
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// Lifetime of the webhook's serving certificate.
const WEBHOOK_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn issue_webhook_cert(
    signer: &crate::ca::Ca,
    credentials: &Credentials,
    identity: &SpiffeId,
    dns: &[String],
) -> Result<(), StartError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let pem = signer.issue_with_dns(&key, identity, dns, WEBHOOK_CERT_LIFETIME)?;
    let provider =
        phoenix_tls::provider::provider(phoenix_api::tls_policy::KeyExchange::PqPreferred, &[]);
    credentials.store(Credentials::parse(&pem, &key.serialize_pem(), &provider)?);
    Ok(())
}

/// The identityAlgorithm of the MeshConfig, for a root made at start (the
/// default when there is none, or when it is invalid: that is reported when
/// it is read). An API error fails the start rather than make a root of
/// the wrong algorithm, which would stay until a rotation.
async fn first_root_algorithm(
    client: &kube::Client,
    trust_domain: &str,
) -> Result<phoenix_api::tls_policy::IdentityAlgorithm, kube::Error> {
    use super::policy::{MESH_CONFIG_NAME, MeshRecord};
    let configs: Api<MeshConfig> = Api::all(client.clone());
    Ok(match configs.get_opt(MESH_CONFIG_NAME).await? {
        Some(mc) => MeshRecord::validate(MESH_CONFIG_NAME, &mc.spec, trust_domain)
            .map(|m| m.identity_algorithm)
            .unwrap_or_default(),
        None => Default::default(),
    })
}

/// The TLS policy in force: the MeshConfig's, with `pq-only` only once
/// every trusted root is ML-DSA ([`crate::roots::TrustRoots::effective`]).
pub(super) fn tls_policy(live: &Live) -> TlsPolicy {
    // Read per handshake: the policy is computed inside the read, so the
    // trust bundle is not copied.
    let mesh = live.mesh();
    let auth_policy = live.read(|index| {
        crate::roots::TrustRoots::effective(index.roots(), mesh.settings.auth_policy)
    });
    TlsPolicy {
        key_exchange: mesh.settings.key_exchange,
        cipher_suites: mesh.settings.cipher_suites,
        auth_policy,
    }
}

struct KubeAdmin {
    lead: tokio::sync::watch::Receiver<bool>,
    live: Arc<Live>,
    credentials: Arc<Credentials>,
    bound: Bound,
}

impl AdminState for KubeAdmin {
    fn ready(&self) -> Result<(), Vec<String>> {
        let mut reasons = self.live.health.unsynced();
        if self.credentials.current().is_none() {
            reasons.push("no serving certificate".into());
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.live.health.warnings(Instant::now())
    }

    fn config_dump(&self) -> serde_json::Value {
        let mesh = self.live.mesh();
        self.live.read(|index| {
            serde_json::json!({
                "source": "kubernetes",
                "leader": *self.lead.borrow(),
                "version": index.version(),
                "control": self.bound.control,
                "admin": self.bound.admin,
                "identity": self.bound.identity,
                "mesh": mesh.settings,
                "certificateLifetimeSeconds": mesh.certificate_lifetime.as_secs(),
                "sharedResources": index.published_len(),
            })
        })
    }
}

/// A watch of every `K` (cluster-wide), as a named task.
fn spawn_watch<K: watch::Watched>(
    client: &kube::Client,
    config: watcher::Config,
    live: &Arc<Live>,
    metrics: &Arc<Metrics>,
) -> (&'static str, futures::future::BoxFuture<'static, ()>) {
    let task = watch::run(
        Api::<K>::all(client.clone()),
        config,
        live.clone(),
        metrics.clone(),
    );
    (K::TASK, Box::pin(task))
}
