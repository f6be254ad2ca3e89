//! Responses the proxy makes itself, and how every response is counted.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use tokio::time::Instant;

use super::body::BoxError;
use crate::metrics::Direction;
use crate::metrics::http::{
    Classification, HttpMetrics, LatencyLabels, ResponseLabels, RouteLabels, RouteLatencyLabels,
    RouteResponseLabels,
};

/// The body of every response the outbound proxy gives its app.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// gRPC's status for a peer that cannot be reached or failed.
pub const GRPC_UNAVAILABLE: u8 = 14;
/// gRPC's status for a call past its deadline.
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;
/// gRPC's status for a method nothing serves (no route matches).
pub const GRPC_UNIMPLEMENTED: u8 = 12;
/// gRPC's status for a failure inside the mesh (an invalid backend).
pub const GRPC_INTERNAL: u8 = 13;
/// gRPC's status for a caller the server's policy refuses.
pub const GRPC_PERMISSION_DENIED: u8 = 7;

/// A response of the proxy's own: `status` with `message` as the body, or
/// for a gRPC request a trailers-only response with `grpc_status` (what
/// a gRPC client reads; it ignores the HTTP status).
pub fn error(
    grpc: bool,
    status: StatusCode,
    grpc_status: u8,
    message: &'static str,
) -> Response<ProxyBody> {
    let (head, ()) = error_head(grpc, status, grpc_status, message).into_parts();
    let body = if grpc {
        Bytes::new()
    } else {
        Bytes::from_static(message.as_bytes())
    };
    Response::from_parts(
        head,
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// The head of [`error`] (for an HTTP/3 stream, which sends the body apart).
pub fn error_head(
    grpc: bool,
    status: StatusCode,
    grpc_status: u8,
    message: &'static str,
) -> Response<()> {
    let mut response = Response::new(());
    if !grpc {
        *response.status_mut() = status;
    }
    let headers = response.headers_mut();
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(u16::from(grpc_status)));
        headers.insert("grpc-message", HeaderValue::from_static(message));
    } else {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(message.len()));
    }
    response
}

/// The gRPC status in `headers` as a bounded label value: `0`–`16`, or
/// `other` for anything else.
pub fn grpc_status(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("grpc-status")?;
    Some(
        match value.to_str().ok().and_then(|v| v.parse::<u8>().ok()) {
            Some(code) if code <= 16 => code.to_string(),
            _ => "other".to_owned(),
        },
    )
}

/// What is known of one request, to count it when its response ends.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// The service called.
    pub service: String,
    /// When its headers arrived.
    pub started: Instant,
    /// The route and backend that took it, if routes apply (set once,
    /// after the exchange has started).
    pub route: std::sync::OnceLock<RouteLabels>,
}

impl Exchange {
    /// Starts one, counting the request.
    pub fn start(metrics: &HttpMetrics, direction: Direction, service: &str) -> Self {
        metrics
            .requests
            .get_or_create(&crate::metrics::http::RequestLabels {
                direction,
                service: service.to_owned(),
            })
            .inc();
        Self {
            direction,
            service: service.to_owned(),
            started: Instant::now(),
            route: std::sync::OnceLock::new(),
        }
    }

    /// A route took the request (to `route.backend`): counts it there.
    pub fn routed(&self, metrics: &HttpMetrics, route: RouteLabels) {
        metrics.route_requests.get_or_create(&route).inc();
        let _ = self.route.set(route);
    }

    /// The response's headers arrived with `status`: observes the latency.
    pub fn headers(&self, metrics: &HttpMetrics, status: StatusCode) {
        metrics
            .latency
            .get_or_create(&LatencyLabels {
                direction: self.direction,
                service: self.service.clone(),
                status_code: status.as_u16(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(route) = self.route.get() {
            metrics
                .route_latency
                .get_or_create(&RouteLatencyLabels {
                    route: route.clone(),
                    status_code: status.as_u16(),
                })
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    /// The response ended: counts it. A failure is a 5xx, a gRPC status
    /// other than OK, or a stream that broke midway.
    pub fn ended(
        &self,
        metrics: &HttpMetrics,
        peer_identity: &str,
        status: StatusCode,
        grpc_status: Option<String>,
        broke: bool,
    ) {
        let failed =
            broke || status.is_server_error() || grpc_status.as_deref().is_some_and(|g| g != "0");
        let classification = if failed {
            Classification::failure
        } else {
            Classification::success
        };
        if let Some(route) = self.route.get() {
            metrics
                .route_responses
                .get_or_create(&RouteResponseLabels {
                    route: route.clone(),
                    status_code: status.as_u16(),
                    classification,
                    grpc_status: grpc_status.clone().unwrap_or_default(),
                })
                .inc();
        }
        metrics
            .responses
            .get_or_create(&ResponseLabels {
                direction: self.direction,
                service: self.service.clone(),
                peer_identity: peer_identity.to_owned(),
                status_code: status.as_u16(),
                classification,
                grpc_status: grpc_status.unwrap_or_default(),
            })
            .inc();
    }
}
