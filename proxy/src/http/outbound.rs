//! The app's HTTP connections: served by hyper, each request balanced over
//! the service's endpoints and sent on its own HTTP/3 stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use phoenix_api::ServiceName;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::body::{self, H3Body};
use super::detect::{Carry, Prefixed};
use super::headers::{self, CLIENT_PROTO, DST_ADDR, DST_SERVICE};
use super::respond::{self, Exchange, GRPC_UNAVAILABLE, ProxyBody};
use crate::balance;
use crate::config::EndpointConfig;
use crate::metrics::Direction;
use crate::metrics::http::HttpError;
use crate::state::Shared;

/// How long an HTTP/1 client has to send a request's head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an app's HTTP connection goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The service (its endpoints are looked up per request, so a
    /// long-lived HTTP/2 connection reaches pods that appear later).
    pub service: ServiceName,
    /// The pod the app dialled, when it called a pod and not the service.
    pub pod: Option<(EndpointConfig, SocketAddr)>,
}

/// Serves the app's connection `io` as `carry` (HTTP/1 or HTTP/2) until
/// the app closes it.
pub async fn serve(shared: Arc<Shared>, target: Target, io: Prefixed<TcpStream>, carry: Carry) {
    let target = Arc::new(target);
    let proto = match carry {
        Carry::Http2 => "http2",
        _ => "http1",
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let target = target.clone();
        async move { Ok::<_, Infallible>(request(&shared, &target, req, proto).await) }
    });
    let io = TokioIo::new(io);
    let result = match carry {
        Carry::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service)
                .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection from the app ended with an error");
    }
}

async fn request(
    shared: &Arc<Shared>,
    target: &Target,
    req: Request<Incoming>,
    proto: &'static str,
) -> Response<ProxyBody> {
    let metrics = &shared.metrics.http;
    let grpc = headers::is_grpc(req.headers());
    let exchange = Exchange::start(metrics, Direction::outbound, target.service.as_str());
    let fail = |reason: HttpError, status: StatusCode, message: &'static str| {
        metrics.error(Direction::outbound, reason);
        exchange.headers(metrics, if grpc { StatusCode::OK } else { status });
        let response = respond::error(grpc, status, GRPC_UNAVAILABLE, message);
        let grpc_status = grpc.then(|| GRPC_UNAVAILABLE.to_string());
        exchange.ended(metrics, "", response.status(), grpc_status, false);
        response
    };
    let Some(config) = shared.config.load_full() else {
        return fail(
            HttpError::unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "no config yet",
        );
    };
    let Some(upstream) = config.upstreams.get(&target.service) else {
        return fail(
            HttpError::no_route,
            StatusCode::SERVICE_UNAVAILABLE,
            "service no longer configured",
        );
    };
    let (endpoints, dst) = match &target.pod {
        Some((endpoint, addr)) => (std::slice::from_ref(endpoint), (DST_ADDR, addr.to_string())),
        None => (
            upstream.endpoints.as_slice(),
            (DST_SERVICE, target.service.to_string()),
        ),
    };
    let Some(h3_request) = to_peer(req, &target.service, dst, proto) else {
        return fail(
            HttpError::bad_request,
            StatusCode::BAD_REQUEST,
            "request cannot be carried",
        );
    };
    let (h3_request, body) = h3_request;
    let timeout = upstream
        .connect_timeout
        .unwrap_or(config.mesh.connect_timeout);
    // Per request: power of two choices over the requests each endpoint
    // has in flight, failing over to another endpoint when one cannot be
    // reached (no byte of the request has left yet).
    let Some((peer, endpoint)) =
        balance::connect(&shared.http_pool, endpoints, &config.mesh, timeout).await
    else {
        return fail(
            HttpError::unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "no endpoint reachable",
        );
    };
    let peer_identity = endpoint.identity.to_string();
    let guard = peer.stream_guard();
    let Some(mut sender) = peer.http3.clone() else {
        return fail(
            HttpError::bad_gateway,
            StatusCode::BAD_GATEWAY,
            "peer connection has no HTTP/3",
        );
    };
    let stream = match sender.send_request(h3_request).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(peer = %endpoint.address, %error, "cannot send the request to the peer");
            return fail(
                HttpError::bad_gateway,
                StatusCode::BAD_GATEWAY,
                "peer refused the request",
            );
        }
    };
    let (mut send, mut recv) = stream.split();
    tokio::spawn(
        async move {
            if let Err(error) = body::pump(body, &mut send).await {
                tracing::debug!(error = %phoenix_runtime::process::error_chain(&error), "request body not carried to its end");
            }
        }
        .in_current_span(),
    );
    let head = match recv.recv_response().await {
        Ok(head) => head,
        Err(error) => {
            tracing::debug!(peer = %endpoint.address, %error, "peer sent no response");
            return fail(
                HttpError::bad_gateway,
                StatusCode::BAD_GATEWAY,
                "peer sent no response",
            );
        }
    };
    let (mut parts, ()) = head.into_parts();
    exchange.headers(metrics, parts.status);
    let status = parts.status;
    let head_grpc = respond::grpc_status(&parts.headers);
    let trailers_only = head_grpc.is_some();
    headers::strip_hop_by_hop(&mut parts.headers);
    // hyper writes the version it serves; the peer's HTTP/3 is not ours.
    parts.version = if proto == "http2" {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let shared_metrics = shared.metrics.clone();
    let body = H3Body::observed(recv, move |ended| {
        let _guard = guard;
        let (grpc_status, broke) = match ended {
            body::Ended::Trailers(t) => (respond::grpc_status(t).or(head_grpc), false),
            body::Ended::Complete | body::Ended::Dropped => (head_grpc, false),
            body::Ended::Failed => (head_grpc, true),
        };
        exchange.ended(
            &shared_metrics.http,
            &peer_identity,
            status,
            grpc_status,
            broke,
        );
    });
    if trailers_only {
        // gRPC's Trailers-Only: the status is in the head and nothing
        // follows. gRPC clients require it as one HEADERS frame that ends
        // the stream, which hyper sends only for a body already at its
        // end; the stream's end is still read (and counted) apart.
        tokio::spawn(async move {
            let mut body = body;
            while let Some(Ok(_)) = body.frame().await {}
        });
        let empty = http_body_util::Empty::new().map_err(|never| match never {});
        return Response::from_parts(parts, empty.boxed_unsync());
    }
    Response::from_parts(parts, body.boxed_unsync())
}

/// The request as it goes to the peer: the hop's headers dropped, the
/// authority kept (`Host` for HTTP/1, `:authority` for HTTP/2; the service
/// name when the client sent neither, as HTTP/1.0 may), and where it goes
/// and which version the client spoke added. `None` for a request that
/// has no path a peer could take.
fn to_peer(
    req: Request<Incoming>,
    service: &ServiceName,
    (dst_name, dst_value): (http::HeaderName, String),
    proto: &'static str,
) -> Option<(Request<()>, Incoming)> {
    let (mut parts, body) = req.into_parts();
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => match parts.headers.get(header::HOST) {
            Some(host) => Authority::try_from(host.as_bytes()).ok()?,
            None => Authority::try_from(service.as_str()).ok()?,
        },
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_mesh(&mut parts.headers);
    // The authority travels as `:authority`; HTTP/3 refuses a `Host` that
    // differs from it.
    parts.headers.remove(header::HOST);
    parts.headers.insert(dst_name, headers::value(&dst_value)?);
    parts
        .headers
        .insert(CLIENT_PROTO, http::HeaderValue::from_static(proto));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()?;
    parts.version = Version::HTTP_3;
    Some((Request::from_parts(parts, ()), body))
}
