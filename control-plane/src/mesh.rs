//! The mesh file: the whole mesh on one machine, without Kubernetes.
//!
//! Parsing is strict (unknown fields are errors, so a typo never silently
//! drops a setting) and every error names the field and the line. The
//! parsed [`MeshFile`] is then checked as a whole into a [`Mesh`], the model
//! the index turns into per-proxy snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phoenix_api::identity::is_dns_label;
use phoenix_api::protocol::{Protocol, UnknownProtocol};
use phoenix_api::service::{ServiceNameError, Transport};
use phoenix_api::snapshot::InboundMode;
use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, IdentityAlgorithm, KeyExchange};
use phoenix_api::{ServiceName, SpiffeId};
use serde::Deserialize;
use serde_saphyr::Spanned;

pub mod routes;

pub use routes::{MeshRoute, RouteProblem};

/// Namespace given to workloads that name none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default certificate lifetime.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest certificate lifetime accepted (tests use a few seconds).
pub const MIN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(3);

/// The mesh file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFile {
    /// SPIFFE trust domain of every identity.
    pub trust_domain: Spanned<String>,
    /// `pq-only` (default) or `pq-preferred`.
    #[serde(default)]
    pub key_exchange: KeyExchange,
    /// TLS 1.3 cipher suites in preference order.
    #[serde(default)]
    pub cipher_suites: Option<Spanned<Vec<CipherSuite>>>,
    /// `ecdsa-p256` (default) or `ml-dsa-65`: the algorithm of a new root
    /// (and, through it, of every workload certificate). A mesh whose root
    /// exists moves to another with `phoenix-control-plane rotate-ca`.
    #[serde(default)]
    pub identity_algorithm: IdentityAlgorithm,
    /// `any` (default) or `pq-only`: whether a peer authenticating with a
    /// classical signature is refused.
    #[serde(default)]
    pub auth_policy: Option<Spanned<AuthPolicy>>,
    /// Workload certificate lifetime, e.g. `24h`.
    #[serde(default)]
    pub certificate_lifetime: Option<Spanned<String>>,
    /// Close a peer connection after this long with no open stream.
    #[serde(default)]
    pub peer_idle_timeout: Option<Spanned<String>>,
    /// Timeout for a proxy's TCP connect to its local app.
    #[serde(default)]
    pub connect_timeout: Option<Spanned<String>>,
    /// `permissive` (default) or `strict`: whether intercepting proxies
    /// pass plain TCP from clients outside the mesh to the app.
    #[serde(default)]
    pub inbound_mode: InboundMode,
    /// Where the CA root and bootstrap tokens live (relative to the file).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Control-plane listeners.
    #[serde(default)]
    pub control_plane: ControlPlaneFile,
    /// The workloads.
    pub workloads: Vec<WorkloadFile>,
    /// HTTP routes (Gateway API `HTTPRoute` and `GRPCRoute`) attached to
    /// mesh services.
    #[serde(default)]
    pub routes: Vec<routes::RouteFile>,
}

/// `controlPlane:` in the mesh file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// QUIC address proxies connect to.
    pub listen: Option<SocketAddr>,
    /// Admin HTTP address.
    pub admin: Option<SocketAddr>,
}

/// One workload (an app and its proxy).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadFile {
    /// Unique name; also the default service account.
    pub name: Spanned<String>,
    /// Namespace part of the identity.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service-account part of the identity (default: the name).
    #[serde(default)]
    pub service_account: Option<String>,
    /// The proxy's QUIC address.
    #[serde(default)]
    pub inbound: Option<SocketAddr>,
    /// The proxy's admin address.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Services this workload's app calls.
    #[serde(default)]
    pub upstreams: Vec<UpstreamFile>,
    /// Services this workload's app serves.
    #[serde(default)]
    pub serve: Vec<ServeFile>,
}

/// An explicit outbound listener.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamFile {
    /// The service called.
    pub service: Spanned<String>,
    /// Where the proxy listens for the app; absent when the app's
    /// connections reach the proxy by interception (`phoenix-proxy init`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The service's virtual addresses, as a Kubernetes ClusterIP and port:
    /// with interception, an app's connection to one goes to this service
    /// (balanced over its endpoints).
    #[serde(default)]
    pub addresses: Vec<Spanned<SocketAddr>>,
    /// Per-service connect timeout (default: the mesh's `connectTimeout`).
    #[serde(default)]
    pub connect_timeout: Option<Spanned<String>>,
    /// Close connections with no bytes either way for this long.
    #[serde(default)]
    pub idle_timeout: Option<Spanned<String>>,
    /// What the service speaks: `opaque`, `http1`, `http2` or `detect`
    /// (default: `detect`, or `opaque` on the default opaque ports).
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    /// How long one HTTP request may take, to its response's end (504,
    /// gRPC DEADLINE_EXCEEDED after it).
    #[serde(default)]
    pub request_timeout: Option<Spanned<String>>,
    /// Which failed HTTP requests are retried.
    #[serde(default)]
    pub retry: Option<crate::retry::RetrySpec>,
    /// `tcp` (default) or `udp`: a UDP service gets a UDP listener, its
    /// datagrams carried as QUIC datagrams.
    #[serde(default)]
    pub transport: Option<Spanned<String>>,
}

/// A served service.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServeFile {
    /// The service name.
    pub service: Spanned<String>,
    /// Where the app listens.
    pub target: SocketAddr,
    /// Identities allowed to call it (bare name: that service account in the
    /// workload's namespace); absent: every identity of the trust domain.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// `permissive` or `strict` for this service alone (default: the mesh's).
    #[serde(default)]
    pub inbound_mode: Option<InboundMode>,
    /// What the app speaks on `target`: `opaque`, `http1`, `http2` or
    /// `detect` (default: `detect`, or `opaque` on the default opaque ports).
    #[serde(default)]
    pub protocol: Option<Spanned<String>>,
    /// `tcp` (default) or `udp`: the app serves UDP on `target`.
    #[serde(default)]
    pub transport: Option<Spanned<String>>,
}

/// The validated mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// Trust domain.
    pub trust_domain: String,
    /// The control plane's own identity in that trust domain.
    pub control_plane_identity: SpiffeId,
    /// Key-exchange policy.
    pub key_exchange: KeyExchange,
    /// Cipher suites in preference order.
    pub cipher_suites: Vec<CipherSuite>,
    /// The algorithm of a newly made root.
    pub identity_algorithm: IdentityAlgorithm,
    /// Which signatures authenticate a peer.
    pub auth_policy: AuthPolicy,
    /// Certificate lifetime.
    pub certificate_lifetime: Duration,
    /// Peer idle timeout.
    pub peer_idle_timeout: Duration,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Plain TCP from outside the mesh at intercepting proxies.
    pub inbound_mode: InboundMode,
    /// State directory (absolute, or relative to the working directory).
    pub state_dir: PathBuf,
    /// Control-plane QUIC address.
    pub control_listen: SocketAddr,
    /// Control-plane admin address.
    pub control_admin: SocketAddr,
    /// Workloads by name.
    pub workloads: BTreeMap<String, Workload>,
    /// HTTP routes, in file order (earlier counts as older).
    pub routes: Vec<MeshRoute>,
}

/// A validated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Name.
    pub name: String,
    /// Its identity.
    pub identity: SpiffeId,
    /// Proxy QUIC address.
    pub inbound: SocketAddr,
    /// Proxy admin address.
    pub admin: SocketAddr,
    /// Upstreams by service.
    pub upstreams: BTreeMap<ServiceName, UpstreamSpec>,
    /// Served services.
    pub serve: BTreeMap<ServiceName, Serve>,
}

/// A validated upstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Where the proxy listens for the app (none: interception).
    pub listen: Option<SocketAddr>,
    /// Virtual addresses whose intercepted connections go to this service.
    pub addresses: Vec<SocketAddr>,
    /// Per-service connect timeout.
    pub connect_timeout: Option<Duration>,
    /// Idle timeout of its connections.
    pub idle_timeout: Option<Duration>,
    /// What it speaks, as declared (`None`: its port's default).
    pub protocol: Option<Protocol>,
    /// How long one HTTP request may take.
    pub request_timeout: Option<Duration>,
    /// Which failed HTTP requests are retried.
    pub retry: Option<phoenix_api::snapshot::RetryPolicy>,
}

/// A validated served service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// Where the app listens.
    pub target: SocketAddr,
    /// Allowed identities; `None`: the whole trust domain.
    pub allow: Option<BTreeSet<SpiffeId>>,
    /// This service's override of the mesh's `inboundMode`.
    pub inbound_mode: Option<InboundMode>,
    /// What the app speaks, as declared (`None`: its port's default).
    pub protocol: Option<Protocol>,
}

/// Why a mesh file is refused. Each variant names the field, the line and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The file cannot be read.
    #[error("cannot read mesh file {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax or shape error (the message shows the line).
    #[error("mesh file {path}: {source}")]
    Yaml {
        /// The path.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A semantic error at a known place.
    #[error("mesh file {path}, line {line}: `{field}`: {problem}")]
    Invalid {
        /// The path.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// Field path, e.g. `workloads[1].serve[0].allow[0]`.
        field: String,
        /// What is wrong and how to fix it.
        problem: Problem,
    },
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Bad trust domain.
    #[error(
        "not a trust domain; use lowercase letters, digits, `.`, `-`, `_` (e.g. phoenix.local)"
    )]
    TrustDomain,
    /// A name that must be a DNS label.
    #[error("must be a DNS label: lowercase letters, digits and `-`, at most 63 characters")]
    DnsLabel,
    /// Two workloads with one name.
    #[error("workload name is used twice; names must be unique")]
    DuplicateWorkload,
    /// Two workloads with one identity.
    #[error(
        "identity {0} is already used by workload `{1}`; give each workload its own serviceAccount"
    )]
    DuplicateIdentity(String, String),
    /// A service name that does not parse.
    #[error(
        "{0}; service names are lowercase DNS names (letters, digits, `-`, `.`), optionally with `:port`, e.g. `db` or `web.shop:80`"
    )]
    ServiceName(ServiceNameError),
    /// A `/udp` suffix: the mesh file says `transport: udp` instead.
    #[error("write `transport: udp` beside the service instead of a `/udp` suffix")]
    UdpService,
    /// A transport other than `tcp` and `udp`.
    #[error("unknown transport `{0}`; use `tcp` (the default) or `udp`")]
    Transport(String),
    /// A field that means nothing for a UDP service.
    #[error("`{0}` applies to TCP services only; remove it from this UDP service")]
    NotForUdp(&'static str),
    /// Virtual addresses on a UDP upstream.
    #[error(
        "UDP is not intercepted yet: give this UDP upstream a `listen` address instead of `addresses`"
    )]
    UdpAddresses,
    /// An upstream nobody serves.
    #[error("no workload serves service `{0}`; add it to some workload's `serve` list")]
    UnservedService(String),
    /// A UDP upstream nobody serves over UDP.
    #[error(
        "no workload serves UDP service `{0}`; add it with `transport: udp` to some workload's `serve` list"
    )]
    UnservedUdpService(String),
    /// Two listeners on one fixed address.
    #[error("address {0} is already used by `{1}`; use another port or 0 for any free port")]
    AddressInUse(SocketAddr, String),
    /// The same service twice in one list.
    #[error("service `{0}` is listed twice for this workload")]
    DuplicateService(String),
    /// An allow entry that is neither a name nor a SPIFFE ID.
    #[error("allow entries are service-account names or spiffe:// IDs in trust domain {0}")]
    AllowEntry(String),
    /// A protocol name outside the known set.
    #[error("{0}")]
    Protocol(#[from] UnknownProtocol),
    /// A retry policy that cannot be used.
    #[error("{0}")]
    Retry(#[from] crate::retry::RetryError),
    /// A duration that cannot be parsed or is out of range.
    #[error("{0}; e.g. 30s, 5m or 24h")]
    Duration(String),
    /// A virtual address that cannot be dialled.
    #[error("a service's virtual address needs a concrete IP and a port, e.g. 10.96.0.10:80")]
    VirtualAddress,
    /// One virtual address for two services.
    #[error("address {0} is already the virtual address of service `{1}` for this workload")]
    VirtualAddressInUse(SocketAddr, String),
    /// An empty cipher suite list.
    #[error(
        "list at least one cipher suite (TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256)"
    )]
    NoCipherSuites,
    /// A route that cannot be used.
    #[error("{0}")]
    Route(#[from] RouteProblem),
    /// `pq-only` authentication with classical identities.
    #[error(
        "authPolicy pq-only refuses every ECDSA certificate, and identityAlgorithm is ecdsa-p256: set identityAlgorithm: ml-dsa-65 (and rotate the root) or use authPolicy: any"
    )]
    PqOnlyWithClassicalIdentities,
}

impl Mesh {
    /// Reads and validates a mesh file.
    pub fn load(path: &Path) -> Result<Self, MeshError> {
        let text = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates mesh-file text; `path` is for messages and for
    /// resolving a relative `stateDir`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, MeshError> {
        let file: MeshFile = serde_saphyr::from_str(text).map_err(|source| MeshError::Yaml {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        validate(file, path)
    }

    /// The workload whose identity is `id`.
    pub fn workload_by_identity(&self, id: &SpiffeId) -> Option<&Workload> {
        self.workloads.values().find(|w| &w.identity == id)
    }
}

/// The control plane's identity: ServiceAccount `control-plane` in namespace `phoenix`.
pub fn control_plane_identity(
    trust_domain: &str,
) -> Result<SpiffeId, phoenix_api::identity::IdentityError> {
    SpiffeId::workload(trust_domain, "phoenix", "control-plane")
}

fn validate(file: MeshFile, path: &Path) -> Result<Mesh, MeshError> {
    let invalid = |line: u64, field: String, problem: Problem| MeshError::Invalid {
        path: path.to_owned(),
        line,
        field,
        problem,
    };
    // A declared protocol, parsed strictly: a typo is an error naming the
    // line, never a silently opaque port.
    let protocol = |v: &Option<Spanned<String>>, field: &str| {
        v.as_ref()
            .map(|v| {
                v.value.parse::<Protocol>().map_err(|e| {
                    invalid(v.referenced.line(), field.to_owned(), Problem::Protocol(e))
                })
            })
            .transpose()
    };
    let transport = |v: &Option<Spanned<String>>, field: &str| match v {
        None => Ok(Transport::Tcp),
        Some(v) => match v.value.as_str() {
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            other => Err(invalid(
                v.referenced.line(),
                field.to_owned(),
                Problem::Transport(other.to_owned()),
            )),
        },
    };
    let MeshFile {
        trust_domain,
        key_exchange,
        cipher_suites,
        identity_algorithm,
        auth_policy,
        certificate_lifetime,
        peer_idle_timeout,
        connect_timeout,
        inbound_mode,
        state_dir,
        control_plane,
        workloads: workload_files,
        routes: route_files,
    } = file;
    let auth_policy = match auth_policy {
        None => AuthPolicy::default(),
        Some(a) if a.value == AuthPolicy::PqOnly && !identity_algorithm.is_post_quantum() => {
            return Err(invalid(
                a.referenced.line(),
                "authPolicy".into(),
                Problem::PqOnlyWithClassicalIdentities,
            ));
        }
        Some(a) => a.value,
    };
    let td = trust_domain.value.clone();
    let control_plane_identity = control_plane_identity(&td).map_err(|_| {
        invalid(
            trust_domain.referenced.line(),
            "trustDomain".into(),
            Problem::TrustDomain,
        )
    })?;
    let cipher_suites = match cipher_suites {
        None => CipherSuite::DEFAULT.to_vec(),
        Some(s) if s.value.is_empty() => {
            return Err(invalid(
                s.referenced.line(),
                "cipherSuites".into(),
                Problem::NoCipherSuites,
            ));
        }
        Some(s) => s.value,
    };
    let duration = |field: &str, v: Option<Spanned<String>>, default: Duration, min: Duration| {
        let Some(v) = v else { return Ok(default) };
        let d = phoenix_api::duration::parse(&v.value).map_err(|e| {
            invalid(
                v.referenced.line(),
                field.into(),
                Problem::Duration(e.to_string()),
            )
        })?;
        if d < min {
            return Err(invalid(
                v.referenced.line(),
                field.into(),
                Problem::Duration(format!(
                    "must be at least {}",
                    phoenix_api::duration::format(min)
                )),
            ));
        }
        Ok(d)
    };
    let certificate_lifetime = duration(
        "certificateLifetime",
        certificate_lifetime,
        DEFAULT_CERTIFICATE_LIFETIME,
        MIN_CERTIFICATE_LIFETIME,
    )?;
    let peer_idle_timeout = duration(
        "peerIdleTimeout",
        peer_idle_timeout,
        Duration::from_secs(60),
        Duration::from_millis(100),
    )?;
    let connect_timeout = duration(
        "connectTimeout",
        connect_timeout,
        Duration::from_secs(5),
        Duration::from_millis(10),
    )?;
    let base = path.parent().unwrap_or(Path::new("."));
    let state_dir = base.join(state_dir.unwrap_or_else(|| PathBuf::from(".phoenix")));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));

    // Fixed addresses already claimed, for conflict messages.
    // Every fixed address is claimed once, whatever its transport (the
    // inbound port is QUIC over UDP, the admin port TCP), except that a TCP
    // and a UDP upstream may listen on one address: iperf3 and DNS reach
    // one port over both.
    let mut claimed: BTreeMap<SocketAddr, Vec<(Option<Transport>, String)>> = BTreeMap::new();
    let mut claim_as = |transport: Option<Transport>,
                        addr: SocketAddr,
                        owner: String,
                        line: u64,
                        field: String| {
        if addr.port() == 0 {
            return Ok(());
        }
        let owners = claimed.entry(addr).or_default();
        let clash = owners
            .iter()
            .find(|(theirs, _)| theirs.is_none() || transport.is_none() || *theirs == transport);
        if let Some((_, prev)) = clash {
            return Err(invalid(
                line,
                field,
                Problem::AddressInUse(addr, prev.clone()),
            ));
        }
        owners.push((transport, owner));
        Ok(())
    };

    let control_listen = control_plane.listen.unwrap_or(any);
    let control_admin = control_plane.admin.unwrap_or(any);

    let mut workloads = BTreeMap::new();
    let mut identities: BTreeMap<SpiffeId, String> = BTreeMap::new();
    let mut served: BTreeSet<ServiceName> = BTreeSet::new();
    for (i, w) in workload_files.iter().enumerate() {
        let line = w.name.referenced.line();
        let at = |f: &str| format!("workloads[{i}].{f}");
        let name = w.name.value.clone();
        if !is_dns_label(&name) {
            return Err(invalid(line, at("name"), Problem::DnsLabel));
        }
        if workloads.contains_key(&name) {
            return Err(invalid(line, at("name"), Problem::DuplicateWorkload));
        }
        let namespace = w
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let service_account = w.service_account.clone().unwrap_or_else(|| name.clone());
        if !is_dns_label(&namespace) {
            return Err(invalid(line, at("namespace"), Problem::DnsLabel));
        }
        let identity = SpiffeId::workload(&td, &namespace, &service_account)
            .map_err(|_| invalid(line, at("serviceAccount"), Problem::DnsLabel))?;
        if let Some(other) = identities.insert(identity.clone(), name.clone()) {
            return Err(invalid(
                line,
                at("serviceAccount"),
                Problem::DuplicateIdentity(identity.to_string(), other),
            ));
        }
        let inbound = w.inbound.unwrap_or(any);
        let admin = w.admin.unwrap_or(any);
        claim_as(
            None,
            inbound,
            format!("workloads[{i}].inbound"),
            line,
            at("inbound"),
        )?;
        claim_as(
            None,
            admin,
            format!("workloads[{i}].admin"),
            line,
            at("admin"),
        )?;

        let mut upstreams = BTreeMap::new();
        let mut virtual_addresses: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for (j, u) in w.upstreams.iter().enumerate() {
            let uline = u.service.referenced.line();
            let field = at(&format!("upstreams[{j}].service"));
            let service: ServiceName = u
                .service
                .value
                .parse()
                .map_err(|e| invalid(uline, field.clone(), Problem::ServiceName(e)))?;
            if service.transport() == Transport::Udp {
                return Err(invalid(uline, field.clone(), Problem::UdpService));
            }
            let service_transport =
                transport(&u.transport, &at(&format!("upstreams[{j}].transport")))?;
            let service = service.with_transport(service_transport);
            if service_transport == Transport::Udp {
                let tcp_only = |set: bool, name: &'static str| {
                    if set {
                        Err(invalid(
                            uline,
                            at(&format!("upstreams[{j}].{name}")),
                            Problem::NotForUdp(name),
                        ))
                    } else {
                        Ok(())
                    }
                };
                tcp_only(u.protocol.is_some(), "protocol")?;
                tcp_only(u.request_timeout.is_some(), "requestTimeout")?;
                tcp_only(u.retry.is_some(), "retry")?;
                if !u.addresses.is_empty() {
                    return Err(invalid(
                        uline,
                        at(&format!("upstreams[{j}].addresses")),
                        Problem::UdpAddresses,
                    ));
                }
            }
            let optional = |field: &str, v: &Option<Spanned<String>>, min: Duration| {
                v.as_ref()
                    .map(|v| {
                        duration(
                            &at(&format!("upstreams[{j}].{field}")),
                            Some(v.clone()),
                            min,
                            min,
                        )
                    })
                    .transpose()
            };
            for (k, a) in u.addresses.iter().enumerate() {
                let addr = a.value;
                let field = at(&format!("upstreams[{j}].addresses[{k}]"));
                if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
                    return Err(invalid(a.referenced.line(), field, Problem::VirtualAddress));
                }
                if let Some(other) = virtual_addresses.insert(addr, u.service.value.clone()) {
                    return Err(invalid(
                        a.referenced.line(),
                        field,
                        Problem::VirtualAddressInUse(addr, other),
                    ));
                }
            }
            let spec = UpstreamSpec {
                listen: u.listen,
                addresses: u.addresses.iter().map(|a| a.value).collect(),
                connect_timeout: optional(
                    "connectTimeout",
                    &u.connect_timeout,
                    Duration::from_millis(10),
                )?,
                idle_timeout: optional("idleTimeout", &u.idle_timeout, Duration::from_millis(100))?,
                protocol: protocol(&u.protocol, &at(&format!("upstreams[{j}].protocol")))?,
                request_timeout: optional(
                    "requestTimeout",
                    &u.request_timeout,
                    Duration::from_millis(1),
                )?,
                retry: u
                    .retry
                    .as_ref()
                    .map(|r| {
                        r.to_wire().map_err(|e| {
                            invalid(uline, at(&format!("upstreams[{j}].retry")), e.into())
                        })
                    })
                    .transpose()?,
            };
            if upstreams.insert(service, spec).is_some() {
                return Err(invalid(
                    uline,
                    field,
                    Problem::DuplicateService(u.service.value.clone()),
                ));
            }
            if let Some(listen) = u.listen {
                claim_as(
                    Some(service_transport),
                    listen,
                    at(&format!("upstreams[{j}].listen")),
                    uline,
                    at(&format!("upstreams[{j}].listen")),
                )?;
            }
        }
        let mut serve = BTreeMap::new();
        for (j, s) in w.serve.iter().enumerate() {
            let sline = s.service.referenced.line();
            let field = at(&format!("serve[{j}].service"));
            let service: ServiceName = s
                .service
                .value
                .parse()
                .map_err(|e| invalid(sline, field.clone(), Problem::ServiceName(e)))?;
            if service.transport() == Transport::Udp {
                return Err(invalid(sline, field.clone(), Problem::UdpService));
            }
            let service_transport = transport(&s.transport, &at(&format!("serve[{j}].transport")))?;
            let service = service.with_transport(service_transport);
            if service_transport == Transport::Udp {
                for (set, name) in [
                    (s.protocol.is_some(), "protocol"),
                    (s.inbound_mode.is_some(), "inboundMode"),
                ] {
                    if set {
                        return Err(invalid(
                            sline,
                            at(&format!("serve[{j}].{name}")),
                            Problem::NotForUdp(name),
                        ));
                    }
                }
            }
            let allow = match &s.allow {
                None => None,
                Some(entries) => {
                    let mut ids = BTreeSet::new();
                    for (k, e) in entries.iter().enumerate() {
                        let id = resolve_allow(&e.value, &td, &namespace).ok_or_else(|| {
                            invalid(
                                e.referenced.line(),
                                at(&format!("serve[{j}].allow[{k}]")),
                                Problem::AllowEntry(td.clone()),
                            )
                        })?;
                        ids.insert(id);
                    }
                    Some(ids)
                }
            };
            if serve
                .insert(
                    service.clone(),
                    Serve {
                        target: s.target,
                        allow,
                        inbound_mode: s.inbound_mode,
                        protocol: protocol(&s.protocol, &at(&format!("serve[{j}].protocol")))?,
                    },
                )
                .is_some()
            {
                return Err(invalid(
                    sline,
                    field,
                    Problem::DuplicateService(s.service.value.clone()),
                ));
            }
            served.insert(service);
        }
        workloads.insert(
            name.clone(),
            Workload {
                name,
                identity,
                inbound,
                admin,
                upstreams,
                serve,
            },
        );
    }
    for (i, w) in workload_files.iter().enumerate() {
        for (j, u) in w.upstreams.iter().enumerate() {
            let udp = u.transport.as_ref().is_some_and(|t| t.value == "udp");
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            let wanted = u
                .service
                .value
                .parse::<ServiceName>()
                .map(|s| s.with_transport(transport));
            if !wanted.is_ok_and(|s| served.contains(&s)) {
                let name = u.service.value.clone();
                return Err(invalid(
                    u.service.referenced.line(),
                    format!("workloads[{i}].upstreams[{j}].service"),
                    if udp {
                        Problem::UnservedUdpService(name)
                    } else {
                        Problem::UnservedService(name)
                    },
                ));
            }
        }
    }
    // Every served service and the protocol its apps declare (the first
    // declaration, when several workloads serve it).
    let mut served_protocols = BTreeMap::new();
    for w in workloads.values() {
        for (service, serve) in &w.serve {
            served_protocols
                .entry(service.clone())
                .or_insert(serve.protocol);
        }
    }
    let routes = routes::validate(&route_files, &served_protocols)
        .map_err(|(line, field, problem)| invalid(line, field, problem))?;
    Ok(Mesh {
        trust_domain: td,
        control_plane_identity,
        key_exchange,
        cipher_suites,
        identity_algorithm,
        auth_policy,
        certificate_lifetime,
        peer_idle_timeout,
        connect_timeout,
        inbound_mode,
        state_dir,
        control_listen,
        control_admin,
        workloads,
        routes,
    })
}

fn resolve_allow(entry: &str, td: &str, namespace: &str) -> Option<SpiffeId> {
    if entry.starts_with("spiffe://") {
        let id: SpiffeId = entry.parse().ok()?;
        (id.trust_domain() == td).then_some(id)
    } else {
        SpiffeId::workload(td, namespace, entry).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
trustDomain: phoenix.local
workloads:
  - name: web
    upstreams:
      - service: db
        listen: 127.0.0.1:25432
  - name: db
    serve:
      - service: db
        target: 127.0.0.1:15432
        allow: [web]
";

    fn parse(text: &str) -> Result<Mesh, MeshError> {
        Mesh::parse(text, Path::new("/etc/phoenix/mesh.yaml"))
    }

    fn problem(text: &str) -> (u64, String, Problem) {
        match parse(text) {
            Err(MeshError::Invalid {
                line,
                field,
                problem,
                ..
            }) => (line, field, problem),
            other => panic!("expected a semantic error, got {other:?}"),
        }
    }

    #[test]
    fn the_readme_example_parses_with_defaults() {
        let mesh = parse(EXAMPLE).unwrap();
        assert_eq!(mesh.key_exchange, KeyExchange::PqOnly);
        assert_eq!(mesh.certificate_lifetime, DEFAULT_CERTIFICATE_LIFETIME);
        assert_eq!(mesh.state_dir, PathBuf::from("/etc/phoenix/.phoenix"));
        let db = &mesh.workloads["db"];
        assert_eq!(
            db.identity.to_string(),
            "spiffe://phoenix.local/ns/default/sa/db"
        );
        let allow = db.serve["db"].allow.as_ref().unwrap();
        assert!(allow.contains(&"spiffe://phoenix.local/ns/default/sa/web".parse().unwrap()));
    }

    #[test]
    fn service_names_take_a_port_and_refuse_what_the_header_cannot_carry() {
        let k8s = EXAMPLE.replace("service: db", "service: db.shop:5432");
        let mesh = parse(&k8s).unwrap();
        assert!(mesh.workloads["db"].serve.contains_key("db.shop:5432"));
        for (bad, want) in [
            (
                "db.shop:5432:1",
                Problem::ServiceName(ServiceNameError::BadChar(':')),
            ),
            ("Db", Problem::ServiceName(ServiceNameError::BadChar('D'))),
            ("db:0", Problem::ServiceName(ServiceNameError::BadPort)),
            (
                "db..shop",
                Problem::ServiceName(ServiceNameError::EmptyLabel),
            ),
            ("dns:53/udp", Problem::UdpService),
        ] {
            let text = EXAMPLE.replacen("service: db", &format!("service: \"{bad}\""), 1);
            let (line, field, p) = problem(&text);
            assert_eq!(
                (line, field.as_str()),
                (5, "workloads[0].upstreams[0].service")
            );
            assert_eq!(p, want, "{bad}");
        }
        let err = parse(&EXAMPLE.replacen("service: db", "service: \"db:x\"", 1)).unwrap_err();
        assert!(
            err.to_string().contains("e.g. `db` or `web.shop:80`"),
            "the error shows the grammar: {err}"
        );
    }

    #[test]
    fn syntax_errors_show_the_line() {
        let err =
            parse("trustDomain: phoenix.local\nworkloads:\n  - name: web\n    upstream: []\n")
                .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("line 4") && msg.contains("unknown field `upstream`"),
            "{msg}"
        );
        let err = parse("trustDomain: x\nkeyExchange: classic\nworkloads: []\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn semantic_errors_name_field_and_line() {
        let (line, field, p) =
            problem(&EXAMPLE.replace("allow: [web]", "allow: [\"spiffe://other.td/ns/a/sa/b\"]"));
        assert_eq!(
            (line, field.as_str()),
            (11, "workloads[1].serve[0].allow[0]")
        );
        assert_eq!(p, Problem::AllowEntry("phoenix.local".into()));

        let (line, field, p) = problem(&EXAMPLE.replace(
            "service: db\n        listen",
            "service: cache\n        listen",
        ));
        assert_eq!(
            (line, field.as_str()),
            (5, "workloads[0].upstreams[0].service")
        );
        assert_eq!(p, Problem::UnservedService("cache".into()));

        let (_, field, p) = problem(&EXAMPLE.replace("name: db", "name: web"));
        assert_eq!(field, "workloads[1].name");
        assert_eq!(p, Problem::DuplicateWorkload);

        let (_, field, _) = problem(&format!("{EXAMPLE}certificateLifetime: 1s\n"));
        assert_eq!(field, "certificateLifetime");

        let (_, field, p) =
            problem(&EXAMPLE.replace("name: db", "name: db\n    inbound: 127.0.0.1:25432"));
        assert_eq!(field, "workloads[1].inbound");
        assert!(matches!(p, Problem::AddressInUse(..)));

        let (line, _, p) =
            problem(&EXAMPLE.replace("trustDomain: phoenix.local", "trustDomain: Phoenix"));
        assert_eq!((line, p), (1, Problem::TrustDomain));

        // A protocol typo names the field, the line and the choices.
        let (line, field, p) = problem(&EXAMPLE.replace(
            "allow: [web]",
            "allow: [web]
        protocol: htpp1",
        ));
        assert_eq!(
            (line, field.as_str()),
            (12, "workloads[1].serve[0].protocol")
        );
        assert_eq!(
            p.to_string(),
            "unknown protocol `htpp1`: use opaque, http1, http2 or detect"
        );
    }

    #[test]
    fn upstream_timeouts_are_read_and_checked() {
        let mesh = parse(
            "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {service: db, listen: 127.0.0.1:0, connectTimeout: 2s, idleTimeout: 30m}\n  - name: db\n    serve: [{service: db, target: 127.0.0.1:1}]\n",
        )
        .unwrap();
        let u = &mesh.workloads["web"].upstreams["db"];
        assert_eq!(u.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(u.idle_timeout, Some(Duration::from_secs(1800)));
        let (line, field, problem) = problem(
            "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {service: db, listen: 127.0.0.1:0, idleTimeout: soon}\n  - name: db\n    serve: [{service: db, target: 127.0.0.1:1}]\n",
        );
        assert_eq!(line, 5);
        assert_eq!(field, "workloads[0].upstreams[0].idleTimeout");
        assert!(matches!(problem, Problem::Duration(_)));
    }

    #[test]
    fn http_timeouts_and_retries_are_read_and_checked() {
        let mesh = parse(
            "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {service: db, listen: 127.0.0.1:0, requestTimeout: 1500ms, retry: {statusCodes: [503], grpcStatusCodes: [UNAVAILABLE], budget: {percent: 10}}}\n  - name: db\n    serve: [{service: db, target: 127.0.0.1:1}]\n",
        )
        .unwrap();
        let u = &mesh.workloads["web"].upstreams["db"];
        assert_eq!(u.request_timeout, Some(Duration::from_millis(1500)));
        let retry = u.retry.as_ref().unwrap();
        assert_eq!(retry.grpc_status_codes, vec![14]);
        assert_eq!((retry.max_retries, retry.budget_percent), (2, 10));
        let (line, field, problem) = problem(
            "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {service: db, listen: 127.0.0.1:0, retry: {statusCodes: [503], maxRetries: 50}}\n  - name: db\n    serve: [{service: db, target: 127.0.0.1:1}]\n",
        );
        assert_eq!(line, 5);
        assert_eq!(field, "workloads[0].upstreams[0].retry");
        assert_eq!(
            problem,
            Problem::Retry(crate::retry::RetryError::MaxRetries(50))
        );
        let error = parse(
            "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {service: db, listen: 127.0.0.1:0, retry: {statusCode: [503]}}\n  - name: db\n    serve: [{service: db, target: 127.0.0.1:1}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("statusCode"),
            "an unknown field is named: {error}"
        );
    }

    #[test]
    fn virtual_addresses_are_concrete_and_one_service_each() {
        let with = |addresses: &str| {
            format!(
                "trustDomain: td\nworkloads:\n  - name: web\n    upstreams:\n      - {{service: db, addresses: {addresses}}}\n      - {{service: cache, addresses: [\"10.96.0.11:6379\"]}}\n  - name: db\n    serve: [{{service: db, target: 127.0.0.1:1}}, {{service: cache, target: 127.0.0.1:2}}]\n"
            )
        };
        let mesh = parse(&with(r#"["10.96.0.10:5432", "[fd00::10]:5432"]"#)).unwrap();
        assert_eq!(
            mesh.workloads["web"].upstreams["db"].addresses,
            vec![
                "10.96.0.10:5432".parse().unwrap(),
                "[fd00::10]:5432".parse().unwrap()
            ]
        );
        for (bad, expected) in [
            (r#"["10.96.0.10:0"]"#, Problem::VirtualAddress),
            (r#"["0.0.0.0:80"]"#, Problem::VirtualAddress),
            (
                r#"["10.96.0.11:6379"]"#,
                Problem::VirtualAddressInUse("10.96.0.11:6379".parse().unwrap(), "db".into()),
            ),
        ] {
            let (line, field, problem) = problem(&with(bad));
            assert_eq!(problem, expected, "{bad}");
            assert!(field.contains(".addresses["), "{field}");
            assert!(line == 5 || line == 6, "{line}");
        }
    }

    const ROUTES: &str = "\
trustDomain: phoenix.local
workloads:
  - name: client
    upstreams: [{service: web, listen: 127.0.0.1:0}]
  - name: web
    serve: [{service: web, target: 127.0.0.1:8001}, {service: web-v2, target: 127.0.0.1:8002}]
routes:
  - kind: HTTPRoute
    name: canary
    spec:
      parentRefs: [{name: web}]
      rules:
        - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: \"1\"}]}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-routed, value: canary}]}
          backendRefs: [{name: web-v2}]
          timeouts: {request: 2s, backendRequest: 500ms}
          retry: {codes: [503], attempts: 2}
";

    #[test]
    fn routes_parse_in_the_gateway_api_shape() {
        let mesh = parse(ROUTES).unwrap();
        let route = &mesh.routes[0];
        assert_eq!(route.namespace, "default");
        assert!(route.parents.contains("web"));
        let rule = &route.rules[0];
        assert_eq!(rule.backends[0].service.as_str(), "web-v2");
        assert_eq!(rule.backends[0].weight, 1, "the default weight");
        assert_eq!(
            rule.matches[0].headers[0].name, "x-canary",
            "names fold to lowercase"
        );
        assert_eq!(rule.request_timeout_ms, Some(2000));
        assert_eq!(rule.backend_request_timeout_ms, Some(500));
        assert_eq!(rule.retry.as_ref().unwrap().max_retries, 2);
    }

    #[test]
    fn bad_routes_name_the_field_the_line_and_the_fix() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "name: web}]\n      rules",
                "name: nope}]\n      rules",
                "spec.parentRefs[0]",
                "no workload serves service `nope`",
            ),
            (
                "backendRefs: [{name: web-v2}]",
                "backendRefs: [{name: web-v2, weight: 2000000}]",
                "spec.rules[0].backendRefs[0].weight",
                "over 1000000",
            ),
            (
                "type: RequestHeaderModifier\n              requestHeaderModifier: {set: [{name: x-routed, value: canary}]}",
                "type: URLRewrite",
                "spec.rules[0].filters[0]",
                "URLRewrite filter is not supported",
            ),
            (
                "type: PathPrefix, value: /api",
                "type: RegularExpression, value: /api",
                "spec.rules[0].matches[0]",
                "not supported",
            ),
            (
                "request: 2s, backendRequest: 500ms",
                "request: 1s, backendRequest: 5s",
                "spec.rules[0].timeouts.backendRequest",
                "must not be longer",
            ),
            (
                "attempts: 2}",
                "attempts: 2, backoff: 100ms}",
                "spec.rules[0].retry.backoff",
                "backoff",
            ),
            (
                "kind: HTTPRoute",
                "kind: TCPRoute",
                "kind",
                "HTTPRoute or GRPCRoute",
            ),
            (
                "parentRefs: [{name: web}]",
                "parentRefs: [{name: web, namespace: shop}]",
                "spec.parentRefs[0]",
                "no namespace",
            ),
            (
                "backendRefs: [{name: web-v2}]",
                "backendRefs: [{name: web-v2}]\n          filters2: []",
                "",
                "unknown field",
            ),
        ];
        for (from, to, field, message) in cases {
            assert!(ROUTES.contains(from), "case does not apply: {from}");
            let text = ROUTES.replace(from, to);
            match parse(&text) {
                Err(MeshError::Invalid {
                    line,
                    field: got,
                    problem,
                    ..
                }) => {
                    assert_eq!(got, format!("routes[0].{field}"), "{to}");
                    assert!(problem.to_string().contains(message), "{to}: {problem}");
                    assert!(line > 6, "{to}: line {line}");
                }
                Err(other) if field.is_empty() => {
                    assert!(other.to_string().contains(message), "{to}: {other}");
                }
                other => panic!("{to}: expected an error, got {other:?}"),
            }
        }
    }

    #[test]
    fn grpc_routes_match_methods_and_refuse_http_fields() {
        let text = ROUTES.replace(
            "  - kind: HTTPRoute\n    name: canary\n    spec:\n      parentRefs: [{name: web}]\n      rules:\n        - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: \"1\"}]}]\n          filters:\n            - type: RequestHeaderModifier\n              requestHeaderModifier: {set: [{name: x-routed, value: canary}]}\n          backendRefs: [{name: web-v2}]\n          timeouts: {request: 2s, backendRequest: 500ms}\n          retry: {codes: [503], attempts: 2}\n",
            "  - kind: GRPCRoute\n    name: by-method\n    spec:\n      parentRefs: [{name: web}]\n      rules:\n        - matches: [{method: {service: echo.Echo, method: Unary}}]\n          backendRefs: [{name: web-v2}]\n",
        );
        let mesh = parse(&text).unwrap();
        let m = &mesh.routes[0].rules[0].matches[0];
        assert_eq!(m.grpc_service.as_deref(), Some("echo.Echo"));
        assert_eq!(m.grpc_method.as_deref(), Some("Unary"));
        let bad = text.replace(
            "{method: {service: echo.Echo, method: Unary}}",
            "{path: {value: /x}}",
        );
        let (_, field, problem) = problem(&bad);
        assert_eq!(field, "routes[0].spec.rules[0].matches[0]");
        assert!(problem.to_string().contains("GRPCRoute"), "{problem}");
    }

    const UDP: &str = "\
trustDomain: phoenix.local
workloads:
  - name: game
    upstreams:
      - service: lobby
        transport: udp
        listen: 127.0.0.1:7777
      - service: lobby
        listen: 127.0.0.1:7777
  - name: lobby
    serve:
      - service: lobby
        transport: udp
        target: 127.0.0.1:17777
        allow: [game]
      - service: lobby
        target: 127.0.0.1:17777
";

    #[test]
    fn a_udp_and_a_tcp_service_of_one_name_are_two_services_on_one_port() {
        let mesh = parse(UDP).unwrap();
        let game = &mesh.workloads["game"];
        let udp: ServiceName = "lobby/udp".parse().unwrap();
        let tcp: ServiceName = "lobby".parse().unwrap();
        let listen = Some("127.0.0.1:7777".parse().unwrap());
        assert_eq!(game.upstreams[&udp].listen, listen);
        assert_eq!(game.upstreams[&tcp].listen, listen);
        let lobby = &mesh.workloads["lobby"];
        assert!(lobby.serve[&udp].allow.is_some());
        assert!(lobby.serve[&tcp].allow.is_none());
    }

    #[test]
    fn udp_mistakes_name_the_field_and_the_fix() {
        let cases: [(&str, &str, &str); 7] = [
            (
                "        transport: udp\n        listen",
                "        transport: quic\n        listen",
                "upstreams[0].transport",
            ),
            (
                "        listen: 127.0.0.1:7777\n      - service: lobby\n        listen",
                "        listen: 127.0.0.1:7777\n        protocol: http2\n      - service: lobby\n        listen",
                "upstreams[0].protocol",
            ),
            (
                "        listen: 127.0.0.1:7777\n      - service: lobby\n        listen",
                "        listen: 127.0.0.1:7777\n        addresses: [10.96.0.7:7777]\n      - service: lobby\n        listen",
                "upstreams[0].addresses",
            ),
            (
                "        allow: [game]",
                "        allow: [game]\n        protocol: opaque",
                "serve[0].protocol",
            ),
            (
                "      - service: lobby\n        transport: udp\n        target",
                "      - service: \"lobby/udp\"\n        target",
                "serve[0].service",
            ),
            // A second UDP listener on the address is a conflict; TCP beside it is not.
            (
                "      - service: lobby\n        listen: 127.0.0.1:7777",
                "      - service: lobby\n        listen: 127.0.0.1:7777\n      - service: other\n        transport: udp\n        listen: 127.0.0.1:7777",
                "upstreams[2].listen",
            ),
            // Served over TCP only: the UDP upstream names the fix.
            (
                "      - service: lobby\n        transport: udp\n        target: 127.0.0.1:17777\n        allow: [game]\n",
                "",
                "upstreams[0].service",
            ),
        ];
        for (from, to, field) in cases {
            assert!(UDP.contains(from), "{from}");
            let text = UDP.replacen(from, to, 1);
            let (_, at, problem) = problem(&text);
            assert!(at.ends_with(field), "{at} for {field}: {problem}");
            let message = problem.to_string();
            assert!(
                ["udp", "UDP", "tcp", "TCP", "address"]
                    .iter()
                    .any(|w| message.contains(w)),
                "{message}"
            );
        }
    }

    /// The README's mesh file is a real one: every field it shows parses,
    /// so the documentation cannot drift from the format.
    #[test]
    fn the_readmes_mesh_file_parses() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        let section = readme.split("### The mesh file").nth(1).unwrap();
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap();
        let mesh = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        let udp: ServiceName = "dns/udp".parse().unwrap();
        assert!(mesh.workloads["web"].upstreams.contains_key(&udp));
        assert!(mesh.workloads["api"].serve.contains_key(&udp));
    }
}
