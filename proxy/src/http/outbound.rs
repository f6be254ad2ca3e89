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
use phoenix_api::header::ConnectRequest;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::app::AppProtocol;
use super::body::{self, H3Body};
use super::detect::{Carry, Prefixed};
use super::headers::{self, CLIENT_PROTO, DST_ADDR, DST_SERVICE};
use super::legacy;
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
        Some((endpoint, addr)) => (std::slice::from_ref(endpoint), Dst::Addr(*addr)),
        None => (upstream.endpoints.as_slice(), Dst::Service),
    };
    let Some(prepared) = Prepared::new(req, &target.service) else {
        return fail(
            HttpError::bad_request,
            StatusCode::BAD_REQUEST,
            "request cannot be carried",
        );
    };
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
        // A peer from before HTTP/3: the request goes inside a tunnel stream.
        let header = ConnectRequest {
            service: matches!(dst, Dst::Service).then(|| target.service.clone()),
            original_dst: match dst {
                Dst::Addr(addr) => Some(addr),
                Dst::Service => None,
            },
            connection_id: shared.connection_id(),
        };
        let version = if proto == "http2" {
            AppProtocol::Http2
        } else {
            AppProtocol::Http1
        };
        let response = match legacy::send(
            &shared.metrics,
            &peer,
            &header,
            prepared.into_legacy(version),
            version,
        )
        .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(peer = %endpoint.address, error = %phoenix_runtime::process::error_chain(&error), "request through a tunnel stream failed");
                return fail(
                    HttpError::bad_gateway,
                    StatusCode::BAD_GATEWAY,
                    "peer gave no response",
                );
            }
        };
        let (mut parts, body) = response.into_parts();
        exchange.headers(metrics, parts.status);
        let status = parts.status;
        let head_grpc = respond::grpc_status(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        let shared_metrics = shared.metrics.clone();
        let body = body::Observed::new(body, move |ended| {
            let _guard = guard;
            let (grpc_status, broke) = outcome(ended, head_grpc);
            exchange.ended(
                &shared_metrics.http,
                &peer_identity,
                status,
                grpc_status,
                broke,
            );
        });
        return Response::from_parts(parts, body.boxed_unsync());
    };
    let (h3_request, body) = match prepared.into_h3(&target.service, dst, proto) {
        Some(r) => r,
        None => {
            return fail(
                HttpError::bad_request,
                StatusCode::BAD_REQUEST,
                "request cannot be carried",
            );
        }
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
        let (grpc_status, broke) = outcome(ended, head_grpc);
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

/// The gRPC status to count and whether the stream broke, from how a
/// response body ended (`head` is the status its head carried, if any).
fn outcome(ended: body::Ended<'_>, head: Option<String>) -> (Option<String>, bool) {
    match ended {
        body::Ended::Trailers(t) => (respond::grpc_status(t).or(head), false),
        body::Ended::Complete | body::Ended::Dropped => (head, false),
        body::Ended::Failed => (head, true),
    }
}

/// Where a request goes at the peer: the service, or the pod's address
/// the app dialled.
#[derive(Clone, Copy, Debug)]
enum Dst {
    Service,
    Addr(SocketAddr),
}

/// A request from the app, checked and stripped of what is the hop's,
/// before it is known which kind of peer takes it.
struct Prepared {
    parts: http::request::Parts,
    body: Incoming,
    authority: Authority,
    path: PathAndQuery,
}

impl Prepared {
    /// The authority kept (`Host` for HTTP/1, `:authority` for HTTP/2; the
    /// service name when the client sent neither, as HTTP/1.0 may). `None`
    /// for a request no peer could take.
    fn new(req: Request<Incoming>, service: &ServiceName) -> Option<Self> {
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
        Some(Self {
            parts,
            body,
            authority,
            path,
        })
    }

    /// The request as it goes to an HTTP/3 peer: where it goes and which
    /// version the client spoke added.
    fn into_h3(
        self,
        service: &ServiceName,
        dst: Dst,
        proto: &'static str,
    ) -> Option<(Request<()>, Incoming)> {
        let Self {
            mut parts,
            body,
            authority,
            path,
        } = self;
        // The authority travels as `:authority`; HTTP/3 refuses a `Host`
        // that differs from it.
        parts.headers.remove(header::HOST);
        match dst {
            Dst::Service => parts
                .headers
                .insert(DST_SERVICE, headers::value(service.as_str())?),
            Dst::Addr(addr) => parts
                .headers
                .insert(DST_ADDR, headers::value(&addr.to_string())?),
        };
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

    /// The request as it goes inside a tunnel stream to a peer from
    /// before HTTP/3, and from there to the app: HTTP/1.1 in origin form
    /// with its `Host`, or HTTP/2 with its `:authority`.
    fn into_legacy(self, version: AppProtocol) -> Request<Incoming> {
        let Self {
            mut parts,
            body,
            authority,
            path,
        } = self;
        match version {
            AppProtocol::Http1 => {
                if !parts.headers.contains_key(header::HOST)
                    && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
                {
                    parts.headers.insert(header::HOST, host);
                }
                parts.uri = Uri::from(path);
                parts.version = Version::HTTP_11;
            }
            AppProtocol::Http2 => {
                parts.headers.remove(header::HOST);
                if let Ok(uri) = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority)
                    .path_and_query(path.clone())
                    .build()
                {
                    parts.uri = uri;
                } else {
                    parts.uri = Uri::from(path);
                }
                parts.version = Version::HTTP_2;
            }
        }
        Request::from_parts(parts, body)
    }
}
