//! Proxy metrics, named as Linkerd and Istio users expect.
//!
//! prometheus-client appends `_total` to counters itself, so counters are
//! registered without it. Handles for a connection's label set are fetched
//! once per connection, never per read.

pub mod http;
pub mod udp;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which way a TCP connection goes relative to this proxy's app.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// The app called out through this proxy.
    outbound,
    /// A peer called the app through this proxy.
    inbound,
}

/// Which end of a TLS handshake this proxy was.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Side {
    /// We connected.
    client,
    /// We accepted.
    server,
}

/// Outcome label of a handshake.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Handshake completed.
    success,
    /// Handshake failed.
    failure,
}

/// Labels of TCP connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// The SPIFFE ID at the other end of the tunnel.
    pub peer_identity: String,
}

/// Labels of handshake metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `client` or `server`.
    pub side: Side,
    /// IANA group name, e.g. `X25519MLKEM768`; `none` when no group was agreed.
    pub kx_group: String,
    /// The scheme the peer's handshake signature used, e.g. `ML_DSA_65` or
    /// `ECDSA_NISTP256_SHA256` (a closed set); `none` on failure.
    pub sig_scheme: String,
    /// `success` or `failure`.
    pub result: Outcome,
}

/// Labels of handshake failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `client` or `server`.
    pub side: Side,
    /// Why, e.g. `no_shared_group`, `unknown_ca`, `bad_identity`.
    pub reason: String,
}

/// Labels of per-stream outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// Tunnel status, e.g. `connected`, `denied`, `upstream_refused`.
    pub status: String,
}

/// Why a stream ended before any tunnel status: the `status` of
/// `tunnel_streams_total` beside the wire statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum StreamFailure {
    /// The tunnel header could not be encoded (outbound) or decoded
    /// (inbound): a bug or a foreign peer, never a silent reset.
    bad_request,
}

impl StreamFailure {
    fn as_str(self) -> &'static str {
        match self {
            Self::bad_request => "bad_request",
        }
    }
}

/// Labels of authorization denials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    /// The service that was called.
    pub service: String,
    /// Who called it.
    pub client_id: String,
}

/// What became of a plain (non-mesh) TCP connection at an intercepting proxy.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PlaintextDecision {
    /// Outbound to a destination outside the mesh: sent as plain TCP.
    passthrough,
    /// Inbound from outside the mesh, passed to the app (`permissive`).
    permitted,
    /// Inbound from outside the mesh, refused (`strict`).
    refused,
    /// Inbound from the kubelet (a probe source), passed even when strict.
    probe,
}

/// Labels of plain-TCP decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaintextLabels {
    /// `inbound` or `outbound`.
    pub direction: Direction,
    /// `passthrough`, `permitted`, `refused` or `probe`.
    pub decision: PlaintextDecision,
}

/// Labels for the QUIC gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuicLabels {
    /// `inbound` (accepted) or `outbound` (opened).
    pub direction: Direction,
}

/// Every metric the proxy exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections opened.
    pub tcp_open: Family<TcpLabels, Counter>,
    /// TCP connections closed.
    pub tcp_close: Family<TcpLabels, Counter>,
    /// TCP connections open now.
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    /// Bytes read from the app's (or upstream's) socket.
    pub tcp_read_bytes: Family<TcpLabels, Counter>,
    /// Bytes written to the app's (or upstream's) socket.
    pub tcp_write_bytes: Family<TcpLabels, Counter>,
    /// QUIC connections open now.
    pub quic_connections_open: Family<QuicLabels, Gauge>,
    /// QUIC streams (tunnelled TCP connections) open now.
    pub quic_streams_open: Family<QuicLabels, Gauge>,
    /// Handshakes by side, group and result.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// Handshake failures by reason.
    pub tls_handshake_failures: Family<FailureLabels, Counter>,
    /// Tunnel stream outcomes.
    pub tunnel_streams: Family<StreamLabels, Counter>,
    /// Plain TCP connections an intercepting proxy passed or refused: every
    /// byte that did not cross the mesh encrypted is accounted for here.
    pub tcp_plaintext: Family<PlaintextLabels, Counter>,
    /// Outbound connections closed by their service's idle timeout.
    pub idle_timeouts: Counter,
    /// Streams refused by a service's allow-list.
    pub authz_deny: Family<DenyLabels, Counter>,
    /// Version of the config in force.
    pub config_version: Gauge,
    /// Config updates refused as invalid.
    pub config_refused: Counter,
    /// CA certificates trusted now (2 during a root rotation's overlap).
    pub trust_roots: Gauge,
    /// `notAfter` of the proxy's certificate.
    pub certificate_expiry_timestamp_seconds: Gauge,
    /// Certificates obtained (first issue and renewals).
    pub certificate_renewals: Counter,
    /// HTTP golden metrics.
    pub http: http::HttpMetrics,
    /// UDP flows and datagrams.
    pub udp: udp::UdpMetrics,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("tcp_open", "TCP connections opened", self.tcp_open.clone());
        registry.register(
            "tcp_close",
            "TCP connections closed",
            self.tcp_close.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            self.tcp_open_connections.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from TCP sockets",
            self.tcp_read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to TCP sockets",
            self.tcp_write_bytes.clone(),
        );
        registry.register(
            "quic_connections_open",
            "QUIC connections to peer proxies currently open",
            self.quic_connections_open.clone(),
        );
        registry.register(
            "quic_streams_open",
            "QUIC streams (tunnelled TCP connections) currently open",
            self.quic_streams_open.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes by side, key-exchange group and result",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshake failures by reason",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tunnel_streams",
            "Tunnel streams by direction and connect status",
            self.tunnel_streams.clone(),
        );
        registry.register(
            "tcp_idle_timeouts",
            "Outbound connections closed by their service's idle timeout",
            self.idle_timeouts.clone(),
        );
        registry.register(
            "authz_deny",
            "Streams denied by a service's allow-list",
            self.authz_deny.clone(),
        );
        registry.register(
            "config_version",
            "Version of the config snapshot in force",
            self.config_version.clone(),
        );
        registry.register(
            "tcp_plaintext",
            "Plain TCP connections at an intercepting proxy: outbound passthrough, inbound permitted or refused",
            self.tcp_plaintext.clone(),
        );
        registry.register(
            "trust_roots",
            "Mesh root certificates trusted now (two while a root rotation overlaps)",
            self.trust_roots.clone(),
        );
        registry.register(
            "config_refused",
            "Config updates refused as invalid (the last good config stays)",
            self.config_refused.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry of the proxy's workload certificate, Unix seconds",
            self.certificate_expiry_timestamp_seconds.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Workload certificates obtained from the control plane",
            self.certificate_renewals.clone(),
        );
        self.http.register(registry);
        self.udp.register(registry);
    }

    /// Counters for one TCP connection, fetched once.
    pub fn tcp(&self, direction: Direction, peer_identity: &str) -> TcpHandles {
        let labels = TcpLabels {
            direction,
            peer_identity: peer_identity.to_owned(),
        };
        self.tcp_open.get_or_create(&labels).inc();
        self.tcp_open_connections.get_or_create(&labels).inc();
        TcpHandles {
            read: self.tcp_read_bytes.get_or_create(&labels).clone(),
            write: self.tcp_write_bytes.get_or_create(&labels).clone(),
            open: self.tcp_open_connections.get_or_create(&labels).clone(),
            close: self.tcp_close.get_or_create(&labels).clone(),
        }
    }

    /// Counts a plain-TCP decision.
    pub fn plaintext(&self, direction: Direction, decision: PlaintextDecision) {
        self.tcp_plaintext
            .get_or_create(&PlaintextLabels {
                direction,
                decision,
            })
            .inc();
    }

    /// Counts a handshake.
    pub fn handshake(&self, side: Side, kx_group: &str, sig_scheme: &str, result: Outcome) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                side,
                kx_group: kx_group.to_owned(),
                sig_scheme: sig_scheme.to_owned(),
                result,
            })
            .inc();
    }

    /// Where one side's handshakes are recorded (see `phoenix_tls::establish`).
    pub fn handshakes(&self, side: Side) -> HandshakeRecorder<'_> {
        HandshakeRecorder {
            metrics: self,
            side,
        }
    }

    /// Counts a handshake failure.
    pub fn handshake_failure(&self, side: Side, reason: &str) {
        self.handshake(side, "none", "none", Outcome::failure);
        self.tls_handshake_failures
            .get_or_create(&FailureLabels {
                side,
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a stream outcome.
    pub fn stream(&self, direction: Direction, status: phoenix_api::header::Status) {
        self.tunnel_streams
            .get_or_create(&StreamLabels {
                direction,
                status: status.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a stream or request `service`'s allow-list refused to `client`.
    pub fn denied(&self, service: &str, client: &phoenix_api::SpiffeId) {
        self.authz_deny
            .get_or_create(&DenyLabels {
                service: service.to_owned(),
                client_id: client.to_string(),
            })
            .inc();
    }

    /// Counts a stream that failed before any tunnel status.
    pub fn stream_failed(&self, direction: Direction, failure: StreamFailure) {
        self.tunnel_streams
            .get_or_create(&StreamLabels {
                direction,
                status: failure.as_str().to_owned(),
            })
            .inc();
    }
}

/// A connection's metric handles; dropping it counts the close.
#[derive(Debug)]
pub struct TcpHandles {
    /// Bytes read from the local socket.
    pub read: Counter,
    /// Bytes written to the local socket.
    pub write: Counter,
    open: Gauge,
    close: Counter,
}

impl Drop for TcpHandles {
    fn drop(&mut self) {
        self.open.dec();
        self.close.inc();
    }
}

/// Increments a gauge for as long as it lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records one side's handshakes in the proxy's metrics.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeRecorder<'a> {
    metrics: &'a Metrics,
    side: Side,
}

impl phoenix_tls::establish::Record for HandshakeRecorder<'_> {
    fn success(&self, kx_group: &'static str, sig_scheme: &'static str) {
        self.metrics
            .handshake(self.side, kx_group, sig_scheme, Outcome::success);
    }

    fn failure(&self, reason: phoenix_tls::HandshakeFailure) {
        self.metrics.handshake_failure(self.side, reason.as_str());
    }
}
