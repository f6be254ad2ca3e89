//! HTTP golden metrics, in Linkerd's vocabulary: requests, responses by
//! status and classification, response latency, retries and errors.
//!
//! Every label value is bounded: `service` is a configured service name
//! (or [`UNLISTED`](crate::inbound::UNLISTED)), `peer_identity` an identity
//! the mesh issued, `status_code` one of at most a thousand codes and
//! `grpc_status` one of gRPC's seventeen. Paths and raw authorities are
//! never labels: one scanner walking URLs must not grow the registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Direction;

/// Latency buckets, seconds: 100 µs (one mesh hop on loopback) to 30 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 15.0, 30.0,
];

/// Whether a response counts toward the success rate.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Classification {
    /// A non-5xx status and, for gRPC, status OK.
    success,
    /// A 5xx, a gRPC error status, or a stream that failed mid-response.
    failure,
}

/// Labels of `request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `outbound` (the app called) or `inbound` (the app was called).
    pub direction: Direction,
    /// The service called.
    pub service: String,
}

/// Labels of `response_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service called.
    pub service: String,
    /// The identity at the other end: the server's for outbound, the
    /// client's for inbound; empty when no peer was reached.
    pub peer_identity: String,
    /// The HTTP status sent to the client.
    pub status_code: u16,
    /// `success` or `failure`.
    pub classification: Classification,
    /// The gRPC status (from the trailers, or a trailers-only response);
    /// empty for plain HTTP.
    pub grpc_status: String,
}

/// Labels of `response_latency_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service called.
    pub service: String,
    /// The HTTP status sent to the client.
    pub status_code: u16,
}

/// Why the proxy answered a request itself instead of the server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HttpError {
    /// No endpoint could be reached (503).
    unavailable,
    /// The peer proxy or the app failed before a response (502).
    bad_gateway,
    /// The request broke HTTP's rules (400).
    bad_request,
    /// The called service's allow-list refused the client (403).
    denied,
    /// The peer proxy serves no such service (503).
    no_route,
    /// The request took longer than its timeout or gRPC deadline (504,
    /// gRPC DEADLINE_EXCEEDED).
    timeout,
    /// Routes are attached to the service and none matches the request
    /// (404, gRPC UNIMPLEMENTED).
    route_not_found,
    /// The route's backend is not a service the proxy knows, or every
    /// weight is zero (500).
    backend_invalid,
    /// The route's backend has no endpoints (503 for its share alone).
    backend_unavailable,
}

/// Labels of `retry_total` and `retry_skipped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The service called.
    pub service: String,
}

/// Why a request its policy would retry was not.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RetrySkipped {
    /// The service's retry budget was spent.
    budget,
    /// The request's body was larger than can be kept for a replay, or
    /// had not been sent whole when the response came.
    body,
}

/// Labels of `retry_skipped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkippedLabels {
    /// The service called.
    pub service: String,
    /// Why.
    pub reason: RetrySkipped,
}

/// Labels of `http_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// Why.
    pub reason: HttpError,
}

/// What a connection on a port that detects its protocol turned out to be.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DetectResult {
    /// An HTTP/1.x request line.
    http1,
    /// The HTTP/2 preface.
    http2,
    /// Bytes that are neither.
    opaque,
    /// No (or too few) bytes within the bound: a server-first protocol or
    /// a slow client, relayed as opaque.
    timeout,
    /// HTTP/1.1 whose first request asks to upgrade (WebSocket, h2c) or is
    /// a CONNECT: relayed as opaque, so the upgraded bytes flow untouched.
    upgrade,
}

/// Labels of `protocol_detect_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    /// The verdict.
    pub result: DetectResult,
}

/// A route's kind, as a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub enum RouteKindLabel {
    /// Gateway API `HTTPRoute`.
    HTTPRoute,
    /// Gateway API `GRPCRoute`.
    GRPCRoute,
}

impl From<phoenix_api::route::RouteKind> for RouteKindLabel {
    fn from(kind: phoenix_api::route::RouteKind) -> Self {
        match kind {
            phoenix_api::route::RouteKind::Http => Self::HTTPRoute,
            phoenix_api::route::RouteKind::Grpc => Self::GRPCRoute,
        }
    }
}

/// Labels of `route_request_total`: which route and backend took a
/// request (all from config, so bounded by it; `backend` is empty for a
/// redirect the proxy answered).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route_name: String,
    /// Its namespace.
    pub route_namespace: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub route_kind: RouteKindLabel,
    /// The backend service chosen.
    pub backend: String,
}

/// Labels of `route_response_latency_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLatencyLabels {
    /// The route and backend.
    #[prometheus(flatten)]
    pub route: RouteLabels,
    /// The HTTP status sent to the client.
    pub status_code: u16,
}

/// Labels of `route_response_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResponseLabels {
    /// The route and backend.
    #[prometheus(flatten)]
    pub route: RouteLabels,
    /// The HTTP status sent to the client.
    pub status_code: u16,
    /// `success` or `failure`.
    pub classification: Classification,
    /// The gRPC status; empty for plain HTTP.
    pub grpc_status: String,
}

/// The HTTP metrics of one proxy.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Requests received, per direction and service.
    pub requests: Family<RequestLabels, Counter>,
    /// Responses completed (their end of stream or trailers seen).
    pub responses: Family<ResponseLabels, Counter>,
    /// Time from the request's headers to the response's headers.
    pub latency: Family<LatencyLabels, Histogram>,
    /// Responses the proxy made itself, by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Protocol detection verdicts.
    pub detect: Family<DetectLabels, Counter>,
    /// Requests sent again after a retryable failure.
    pub retries: Family<RetryLabels, Counter>,
    /// Retryable failures not retried, by reason.
    pub retries_skipped: Family<SkippedLabels, Counter>,
    /// Requests a route took, by route and backend.
    pub route_requests: Family<RouteLabels, Counter>,
    /// Responses to routed requests, completed.
    pub route_responses: Family<RouteResponseLabels, Counter>,
    /// Routed requests' time to their response's headers.
    pub route_latency: Family<RouteLatencyLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            errors: Family::default(),
            detect: Family::default(),
            retries: Family::default(),
            retries_skipped: Family::default(),
            route_requests: Family::default(),
            route_responses: Family::default(),
            route_latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl HttpMetrics {
    /// Registers every HTTP metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("request", "HTTP requests received", self.requests.clone());
        registry.register(
            "response",
            "HTTP responses completed, by status and classification",
            self.responses.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from a request's headers to its response's headers",
            self.latency.clone(),
        );
        registry.register(
            "http_errors",
            "HTTP responses the proxy made itself, by reason",
            self.errors.clone(),
        );
        registry.register(
            "retry",
            "HTTP requests sent again after a retryable failure",
            self.retries.clone(),
        );
        registry.register(
            "retry_skipped",
            "Retryable HTTP failures not retried (budget spent, body not replayable)",
            self.retries_skipped.clone(),
        );
        registry.register(
            "route_request",
            "HTTP requests taken by a Gateway API route, by route and backend",
            self.route_requests.clone(),
        );
        registry.register(
            "route_response",
            "Responses to routed HTTP requests, by route, backend and status",
            self.route_responses.clone(),
        );
        registry.register(
            "route_response_latency_seconds",
            "Time from a routed request's headers to its response's headers",
            self.route_latency.clone(),
        );
        registry.register(
            "protocol_detect",
            "Protocol detection verdicts on ports that detect",
            self.detect.clone(),
        );
    }

    /// Counts a detection verdict.
    pub fn detected(&self, result: DetectResult) {
        self.detect.get_or_create(&DetectLabels { result }).inc();
    }

    /// Counts a response the proxy made itself.
    pub fn error(&self, direction: Direction, reason: HttpError) {
        self.errors
            .get_or_create(&ErrorLabels { direction, reason })
            .inc();
    }
}
