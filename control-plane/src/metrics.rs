//! Control-plane metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of certificate issuance.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssueLabels {
    /// `issued`, or the refusal code (`invalid_token`, `invalid_csr`, ...).
    pub result: String,
}

/// Labels of config pushes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `snapshot` or `delta`.
    pub kind: String,
}

/// Labels of handshakes (same vocabulary as the proxy).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Always `server` here.
    pub side: String,
    /// IANA group name.
    pub kx_group: String,
    /// The scheme that authenticated the client (`none`: a bootstrapping
    /// proxy without a certificate, or a failure).
    pub sig_scheme: String,
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of handshake failures (same vocabulary as the proxy).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Always `server` here.
    pub side: String,
    /// Why, e.g. `no_shared_group`, `unknown_ca`, `timeout`.
    pub reason: String,
}

/// Labels of Kubernetes watch metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The watched kind, e.g. `EndpointSlice`.
    pub kind: String,
}

/// Every control-plane metric.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Certificate requests by result.
    pub certificates: Family<IssueLabels, Counter>,
    /// Config messages sent by kind.
    pub config_pushes: Family<PushLabels, Counter>,
    /// Bytes of config sent.
    pub config_push_bytes: Counter,
    /// Proxies subscribed now.
    pub subscribers: Gauge,
    /// Current mesh version.
    pub config_version: Gauge,
    /// Mesh file reloads refused (the last good mesh stays).
    pub config_refused: Counter,
    /// Handshakes.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Handshake failures by reason.
    pub tls_handshake_failures: Family<FailureLabels, Counter>,
    /// Expiry of the control plane's own serving certificate.
    pub certificate_expiry_timestamp_seconds: Gauge,
    /// Mesh roots trusted now (2 while a rotation overlaps).
    pub trust_roots: Gauge,
    /// Kubernetes watch failures by kind (each is retried with backoff).
    pub kubernetes_watch_errors: Family<KindLabels, Counter>,
    /// How long each kind's watch has been failing (0 when healthy): how
    /// stale what the control plane serves may be.
    pub kubernetes_watch_stale_seconds: Family<KindLabels, Gauge>,
}

impl Metrics {
    /// Registers every metric.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "control_certificates",
            "Certificate requests by result",
            self.certificates.clone(),
        );
        r.register(
            "control_config_pushes",
            "Config messages sent to proxies",
            self.config_pushes.clone(),
        );
        r.register(
            "control_config_push_bytes",
            "Bytes of config sent to proxies",
            self.config_push_bytes.clone(),
        );
        r.register(
            "control_subscribers",
            "Proxies subscribed to config",
            self.subscribers.clone(),
        );
        r.register(
            "config_version",
            "Version of the mesh config in force",
            self.config_version.clone(),
        );
        r.register(
            "config_refused",
            "Mesh file reloads refused as invalid",
            self.config_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes by side, key-exchange group and result",
            self.tls_handshakes.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshake failures by reason",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the control plane's serving certificate, Unix seconds",
            self.certificate_expiry_timestamp_seconds.clone(),
        );
        r.register(
            "trust_roots",
            "Mesh root certificates trusted now (two while a root rotation overlaps)",
            self.trust_roots.clone(),
        );
        r.register(
            "kubernetes_watch_errors",
            "Kubernetes watch failures by kind (retried with backoff)",
            self.kubernetes_watch_errors.clone(),
        );
        r.register(
            "kubernetes_watch_stale_seconds",
            "How long each kind's Kubernetes watch has been failing; 0 when healthy",
            self.kubernetes_watch_stale_seconds.clone(),
        );
    }

    /// Counts a watch failure of `kind`.
    pub fn watch_error(&self, kind: &str) {
        self.kubernetes_watch_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Counts a handshake failure, by reason.
    pub fn handshake_failure(&self, reason: &str) {
        self.handshake("none", "none", "failure");
        self.tls_handshake_failures
            .get_or_create(&FailureLabels {
                side: "server".into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a handshake.
    pub fn handshake(&self, kx_group: &str, sig_scheme: &str, result: &str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                side: "server".into(),
                kx_group: kx_group.into(),
                sig_scheme: sig_scheme.into(),
                result: result.into(),
            })
            .inc();
    }
}

impl phoenix_tls::establish::Record for Metrics {
    fn success(&self, kx_group: &'static str, sig_scheme: &'static str) {
        self.handshake(kx_group, sig_scheme, "success");
    }

    fn failure(&self, reason: phoenix_tls::HandshakeFailure) {
        self.handshake_failure(reason.as_str());
    }
}
