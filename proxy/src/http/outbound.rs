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
use super::respond::{
    self, Exchange, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL, GRPC_UNAVAILABLE, GRPC_UNIMPLEMENTED,
    ProxyBody,
};
use super::retry::{self, Budget};
use super::route::Pick;
use super::{deadline, replay, upgrade};
use crate::balance;
use crate::config::EndpointConfig;
use crate::metrics::Direction;
use crate::metrics::http::HttpError;
use crate::metrics::http::{RetryLabels, RetrySkipped, RouteLabels, SkippedLabels};
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
    let metrics = shared.metrics.clone();
    let max_header_bytes = shared.max_header_bytes;
    let drained = shared.clone();
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
    // On drain: HTTP/2 says GOAWAY, HTTP/1 stops keeping the connection
    // alive; either ends once its requests in flight have.
    let result = match carry {
        Carry::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(max_header_bytes as u32)
                .serve_connection(io, service);
            until_drained(conn, drained, |c| c.graceful_shutdown()).await
        }
        _ => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(max_header_bytes)
                .serve_connection(io, service)
                .with_upgrades();
            until_drained(conn, drained, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(error) = result {
        // hyper answered a request it could not parse (400, 431 for a head
        // over the limit) and closed the connection: nothing of it left.
        if error.is_parse() || error.is_parse_too_large() {
            metrics
                .http
                .error(Direction::outbound, HttpError::bad_request);
            tracing::info!(%error, "refused a malformed HTTP request from the app");
        } else {
            tracing::debug!(%error, "HTTP connection from the app ended with an error");
        }
    }
}

/// Runs `conn` to its end; once the proxy drains, `drain` starts its
/// graceful end (hyper's `graceful_shutdown`: HTTP/2 GOAWAY, HTTP/1 no
/// more keep-alive) and it ends after its requests in flight. A closure
/// and not a trait: hyper-util's `GracefulConnection` leaves out HTTP/1
/// with upgrades, which the outbound side serves ([`upgrade`]).
///
/// Not an `async fn`: its future must be proven `Send` here, where `C` is
/// generic; as an `async fn` the caller's spawn hits rustc's "`Send` is not
/// general enough" for the service's borrowed futures (rust#102211).
#[allow(clippy::manual_async_fn)]
fn until_drained<C, F>(
    conn: C,
    shared: Arc<Shared>,
    drain: F,
) -> impl Future<Output = C::Output> + Send
where
    C: Future + Send,
    C::Output: Send,
    F: FnOnce(std::pin::Pin<&mut C>) + Send,
{
    async move {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => result,
            () = shared.drained() => {
                drain(conn.as_mut());
                conn.await
            }
        }
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
    let fail = |reason: HttpError, status: StatusCode, grpc_status: u8, message: &'static str| {
        metrics.error(Direction::outbound, reason);
        exchange.headers(metrics, if grpc { StatusCode::OK } else { status });
        let response = respond::error(grpc, status, grpc_status, message);
        let label = grpc.then(|| grpc_status.to_string());
        exchange.ended(metrics, "", response.status(), label, false);
        response
    };
    let unavailable = |reason: HttpError, message: &'static str| {
        fail(
            reason,
            StatusCode::SERVICE_UNAVAILABLE,
            GRPC_UNAVAILABLE,
            message,
        )
    };
    let Some(config) = shared.config.load_full() else {
        return unavailable(HttpError::unavailable, "no config yet");
    };
    let Some(upstream) = config.upstreams.get(&target.service) else {
        return unavailable(HttpError::no_route, "service no longer configured");
    };
    // Gateway API routes attached to the service: the rule that takes
    // this request decides its backend, header changes, timeouts and
    // retries. A request to a pod's own address is not routed.
    let mut rule = None;
    let mut service = &target.service;
    let mut backend = upstream;
    if target.pod.is_none() && !upstream.routes.is_empty() {
        let Some(selected) = upstream
            .routes
            .select(req.method(), req.uri(), req.headers())
        else {
            return fail(
                HttpError::route_not_found,
                StatusCode::NOT_FOUND,
                GRPC_UNIMPLEMENTED,
                "no route matches the request",
            );
        };
        let r = selected.rule;
        let labels = |backend: &str| RouteLabels {
            route_name: r.route.name.clone(),
            route_namespace: r.route.namespace.clone(),
            route_kind: r.route.kind.into(),
            backend: backend.to_owned(),
        };
        let authority = request_authority(&req, &target.service);
        if let Some((status, location)) =
            r.redirect_location(req.uri(), &authority, selected.prefix)
        {
            exchange.routed(metrics, labels(""));
            return redirect(metrics, &exchange, status, &location);
        }
        match r.pick(rand::random()) {
            Pick::Nothing => {
                exchange.routed(metrics, labels(""));
                return fail(
                    HttpError::backend_invalid,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    GRPC_INTERNAL,
                    "the route's backends all have weight 0",
                );
            }
            Pick::Parent => exchange.routed(metrics, labels(target.service.as_str())),
            Pick::Backend(chosen) => {
                exchange.routed(metrics, labels(chosen.as_str()));
                let Some(b) = config.upstreams.get(chosen) else {
                    return fail(
                        HttpError::backend_invalid,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        GRPC_INTERNAL,
                        "the route's backend is not a known service",
                    );
                };
                // The spec: a backend with no endpoints fails its share
                // of the requests, not the others'.
                if b.endpoints.is_empty() {
                    return unavailable(
                        HttpError::backend_unavailable,
                        "the route's backend has no endpoints",
                    );
                }
                service = chosen;
                backend = b;
            }
        }
        rule = Some(r.clone());
    }
    let (endpoints, dst) = match &target.pod {
        Some((endpoint, addr)) => (std::slice::from_ref(endpoint), Dst::Addr(*addr)),
        None => (backend.endpoints.as_slice(), Dst::Service),
    };
    let connect_timeout = backend
        .connect_timeout
        .unwrap_or(config.mesh.connect_timeout);
    if proto == "http1" && upgrade::wanted(&req) {
        let route = upgrade::Route {
            shared,
            endpoints,
            header: tunnel_header(shared, service, dst),
            mesh: &config.mesh,
            connect_timeout,
        };
        return match route.send(req).await {
            Ok(answered) => upgraded(shared, exchange, answered),
            Err(upgrade::UpgradeError::Unavailable) => {
                unavailable(HttpError::unavailable, "no endpoint reachable")
            }
            Err(upgrade::UpgradeError::BadGateway(error)) => {
                tracing::debug!(error = %phoenix_runtime::process::error_chain(&error), "upgrading request through a tunnel stream failed");
                fail(
                    HttpError::bad_gateway,
                    StatusCode::BAD_GATEWAY,
                    GRPC_UNAVAILABLE,
                    "peer gave no response",
                )
            }
        };
    }
    let request_timeout = rule
        .as_ref()
        .and_then(|r| r.request_timeout)
        .or(upstream.request_timeout);
    let backend_timeout = rule.as_ref().and_then(|r| r.backend_timeout);
    let deadline = deadline::of(exchange.started, request_timeout, req.headers());
    let policy = match rule.as_ref().and_then(|r| r.retry.as_ref()) {
        Some(own) => Some(own),
        None => upstream.retry.as_ref(),
    }
    .filter(|p| retry::retryable(p, req.method(), grpc));
    let Some((mut prepared, body)) = Prepared::new(req, &target.service) else {
        return fail(
            HttpError::bad_request,
            StatusCode::BAD_REQUEST,
            GRPC_UNAVAILABLE,
            "request cannot be carried",
        );
    };
    if let Some(edit) = rule.as_ref().and_then(|r| r.request_headers.as_ref()) {
        edit.apply(&mut prepared.headers);
        // What the route set must not pose as the mesh's own.
        headers::strip_mesh(&mut prepared.headers);
    }
    // A request its policy may retry keeps a copy of its body (at most
    // 64 KiB) as it streams; every request pays into its service's budget.
    let (mut body, replay, budget) = match policy {
        Some(policy) => {
            let (recorded, replay) = replay::record(body);
            let budget = shared.retry_budgets.get(&target.service, policy);
            budget.deposit();
            (recorded.boxed_unsync(), Some(replay), Some(budget))
        }
        None => (body.map_err(Into::into).boxed_unsync(), None, None),
    };
    let call = Call {
        shared,
        service,
        endpoints,
        dst,
        proto,
        prepared: &prepared,
        connect_timeout,
        mesh: &config.mesh,
    };
    let mut retries = 0;
    let mut unsent = 0;
    let answer = loop {
        let attempt = call.attempt(body);
        // A route's backend timeout bounds each attempt, within the
        // request's own deadline.
        let attempt_deadline = match (deadline, backend_timeout) {
            (d, Some(t)) => {
                let own = tokio::time::Instant::now() + t;
                Some(d.map_or(own, |d| d.min(own)))
            }
            (d, None) => d,
        };
        let result = match attempt_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, attempt)
                .await
                .unwrap_or(Err(AttemptError::Timeout)),
            None => attempt.await,
        };
        let answer = match result {
            Ok(answer) => answer,
            Err(AttemptError::Timeout) => {
                return fail(
                    HttpError::timeout,
                    StatusCode::GATEWAY_TIMEOUT,
                    GRPC_DEADLINE_EXCEEDED,
                    "request timed out",
                );
            }
            Err(AttemptError::Unavailable) => {
                return unavailable(HttpError::unavailable, "no endpoint reachable");
            }
            Err(AttemptError::BadGateway(message)) => {
                return fail(
                    HttpError::bad_gateway,
                    StatusCode::BAD_GATEWAY,
                    GRPC_UNAVAILABLE,
                    message,
                );
            }
            Err(AttemptError::BadRequest) => {
                return fail(
                    HttpError::bad_request,
                    StatusCode::BAD_REQUEST,
                    GRPC_UNAVAILABLE,
                    "request cannot be carried",
                );
            }
            Err(AttemptError::NotSent(unread)) => {
                unsent += 1;
                if unsent >= balance::MAX_ATTEMPTS {
                    return fail(
                        HttpError::bad_gateway,
                        StatusCode::BAD_GATEWAY,
                        GRPC_UNAVAILABLE,
                        "peers refused the request",
                    );
                }
                body = unread;
                continue;
            }
        };
        let (Some(policy), Some(replay), Some(budget)) = (policy, &replay, &budget) else {
            break answer;
        };
        if retries >= policy.max_retries
            || !retry::wants_retry(policy, answer.parts.status, answer.head_grpc.as_deref())
        {
            break answer;
        }
        let labels = |reason| SkippedLabels {
            service: target.service.to_string(),
            reason,
        };
        let Some(again) = replay.body() else {
            metrics
                .retries_skipped
                .get_or_create(&labels(RetrySkipped::body))
                .inc();
            break answer;
        };
        if !budget.withdraw() {
            metrics
                .retries_skipped
                .get_or_create(&labels(RetrySkipped::budget))
                .inc();
            break answer;
        }
        metrics
            .retries
            .get_or_create(&RetryLabels {
                service: target.service.to_string(),
            })
            .inc();
        tracing::debug!(service = %target.service, status = %answer.parts.status, retries, "retrying");
        retries += 1;
        // The failed answer is dropped: its stream is stopped, its body unread.
        body = again.boxed_unsync();
    };
    let edit = rule.as_ref().and_then(|r| r.response_headers.as_ref());
    finish(shared, exchange, answer, deadline, grpc, proto, edit)
}

/// The authority a request names: its URI's, its `Host`, or the service.
fn request_authority(req: &Request<Incoming>, service: &ServiceName) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| service.to_string())
}

/// A route's redirect, answered by the proxy.
fn redirect(
    metrics: &crate::metrics::http::HttpMetrics,
    exchange: &Exchange,
    status: StatusCode,
    location: &str,
) -> Response<ProxyBody> {
    exchange.headers(metrics, status);
    exchange.ended(metrics, "", status, None, false);
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(0));
    response
}

/// The final answer, as the app gets it: counted when its body ends, cut
/// at the deadline.
fn finish(
    shared: &Arc<Shared>,
    exchange: Exchange,
    answer: Answer,
    deadline: Option<tokio::time::Instant>,
    grpc: bool,
    proto: &'static str,
    edit: Option<&super::route::HeaderEdit>,
) -> Response<ProxyBody> {
    let Answer {
        mut parts,
        body,
        head_grpc,
        peer_identity,
        hold,
    } = answer;
    let metrics = &shared.metrics.http;
    exchange.headers(metrics, parts.status);
    let status = parts.status;
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(edit) = edit {
        edit.apply(&mut parts.headers);
    }
    // hyper writes the version it serves; the peer's is not ours.
    parts.version = if proto == "http2" {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let trailers_only = head_grpc.is_some();
    let body = match deadline {
        Some(deadline) => {
            let on_fire_metrics = shared.metrics.clone();
            deadline::Deadlined::new(body, deadline, grpc, move || {
                on_fire_metrics
                    .http
                    .error(Direction::outbound, HttpError::timeout);
            })
            .boxed_unsync()
        }
        None => body,
    };
    let shared_metrics = shared.metrics.clone();
    let body = body::observed(body, move |ended| {
        let _hold = hold;
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

/// An upgrading request's answer, counted when it ends (at once for a
/// 101: what follows is bytes).
fn upgraded(
    shared: &Arc<Shared>,
    exchange: Exchange,
    answered: upgrade::Answered,
) -> Response<ProxyBody> {
    let upgrade::Answered {
        response,
        peer_identity,
    } = answered;
    let status = response.status();
    exchange.headers(&shared.metrics.http, status);
    let metrics = shared.metrics.clone();
    let (parts, body) = response.into_parts();
    let body = body::observed(body, move |ended| {
        let broke = matches!(ended, body::Ended::Failed);
        exchange.ended(&metrics.http, &peer_identity, status, None, broke);
    });
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

/// A response head from the peer, its body not yet read.
struct Answer {
    parts: http::response::Parts,
    body: ProxyBody,
    /// The gRPC status in the head (a Trailers-Only response).
    head_grpc: Option<String>,
    peer_identity: String,
    /// Kept until the response ends: the endpoint's in-flight count, and
    /// the request body's stream (reset if the exchange is abandoned).
    hold: Hold,
}

/// What an exchange holds on to until its response ends.
struct Hold {
    _guard: crate::pool::StreamGuard,
    _cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Why one attempt got no response.
enum AttemptError {
    /// No endpoint could be reached.
    Unavailable,
    /// The peer failed before a response.
    BadGateway(&'static str),
    /// The request cannot be put on the wire.
    BadRequest,
    /// The deadline passed first.
    Timeout,
    /// The peer took no new request (GOAWAY, closing); the body is back,
    /// unread.
    NotSent(ProxyBody),
}

/// One request's fixed facts, for each of its attempts.
struct Call<'a> {
    shared: &'a Arc<Shared>,
    /// The service the request goes to: the one called, or the backend
    /// its route chose.
    service: &'a ServiceName,
    endpoints: &'a [EndpointConfig],
    dst: Dst,
    proto: &'static str,
    prepared: &'a Prepared,
    connect_timeout: std::time::Duration,
    mesh: &'a crate::config::MeshConfig,
}

impl Call<'_> {
    /// Sends the request with `body` to an endpoint chosen for it now
    /// (power of two choices over the requests each has in flight,
    /// failing over to another when one cannot be reached) and waits for
    /// the response's head.
    async fn attempt(&self, body: ProxyBody) -> Result<Answer, AttemptError> {
        let Some((peer, endpoint)) = balance::connect(
            &self.shared.http_pool,
            self.endpoints,
            self.mesh,
            self.connect_timeout,
        )
        .await
        else {
            return Err(AttemptError::Unavailable);
        };
        let started = std::time::Instant::now();
        let answer = self.exchange(&peer, endpoint, body).await;
        // What the balancer learns: how long the head took, and whether
        // the endpoint failed the request (a 5xx, gRPC UNAVAILABLE, no
        // response at all), for failure accrual.
        let pool = &self.shared.http_pool;
        let now = std::time::Instant::now();
        let failed = match &answer {
            Ok(answer) => {
                pool.latency().observe(endpoint.address, now - started, now);
                answer.parts.status.is_server_error() || answer.head_grpc.as_deref() == Some("14")
            }
            Err(AttemptError::BadGateway(_)) => true,
            Err(_) => false,
        };
        if pool.accrual().record(endpoint.address, failed, now) {
            tracing::info!(peer = %endpoint.address, service = %self.service, "endpoint failing requests in a row: set aside for a while");
        }
        answer
    }

    /// Sends the request with `body` to `peer` and waits for the head.
    async fn exchange(
        &self,
        peer: &crate::pool::PeerConn,
        endpoint: &EndpointConfig,
        body: ProxyBody,
    ) -> Result<Answer, AttemptError> {
        let peer_identity = endpoint.identity.to_string();
        let guard = peer.stream_guard();
        let Some(mut sender) = peer.http3.clone() else {
            return self.through_tunnel(peer, endpoint, body, guard).await;
        };
        let h3_request = self
            .prepared
            .to_h3(self.service, self.dst, self.proto)
            .ok_or(AttemptError::BadRequest)?;
        let stream = match sender.send_request(h3_request).await {
            Ok(stream) => stream,
            Err(error) => {
                // Nothing of the request left (the peer said GOAWAY, or
                // its connection is closing): another endpoint may take
                // it, whatever its method.
                tracing::debug!(peer = %endpoint.address, %error, "peer takes no new request; trying another");
                peer.drain();
                return Err(AttemptError::NotSent(body));
            }
        };
        let (mut send, mut recv) = stream.split();
        let mut body = body;
        // What of the body is ready goes with the head; a body that is not
        // whole yet is pumped by a task of its own.
        let whole = body::send_ready(&mut body, &mut send)
            .await
            .unwrap_or_else(|error| {
                tracing::debug!(error = %phoenix_runtime::process::error_chain(&error), "request body not carried to its end");
                true
            });
        let cancel = (!whole).then(|| {
            let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(
                async move {
                    tokio::select! {
                        result = body::pump(body, &mut send) => {
                            if let Err(error) = result {
                                tracing::debug!(error = %phoenix_runtime::process::error_chain(&error), "request body not carried to its end");
                            }
                        }
                        // The exchange was abandoned (a timeout, a retry,
                        // the client gone): reset, so the peer never takes
                        // a cut body as whole.
                        _ = cancelled => body::SendHalf::cancel(&mut send),
                    }
                }
                .in_current_span(),
            );
            cancel
        });
        let head = recv.recv_response().await.map_err(|error| {
            tracing::debug!(peer = %endpoint.address, %error, "peer sent no response");
            AttemptError::BadGateway("peer sent no response")
        })?;
        let (parts, ()) = head.into_parts();
        let head_grpc = respond::grpc_status(&parts.headers);
        Ok(Answer {
            parts,
            body: H3Body::peeked(recv).boxed_unsync(),
            head_grpc,
            peer_identity,
            hold: Hold {
                _guard: guard,
                _cancel: cancel,
            },
        })
    }

    /// The attempt to a peer from before HTTP/3: inside a tunnel stream.
    async fn through_tunnel(
        &self,
        peer: &crate::pool::PeerConn,
        endpoint: &EndpointConfig,
        body: ProxyBody,
        guard: crate::pool::StreamGuard,
    ) -> Result<Answer, AttemptError> {
        let header = tunnel_header(self.shared, self.service, self.dst);
        let version = if self.proto == "http2" {
            AppProtocol::Http2
        } else {
            AppProtocol::Http1
        };
        let request = self.prepared.to_legacy(version, body);
        let response = legacy::send(&self.shared.metrics, peer, &header, request, version)
            .await
            .map_err(|error| {
                tracing::debug!(peer = %endpoint.address, error = %phoenix_runtime::process::error_chain(&error), "request through a tunnel stream failed");
                AttemptError::BadGateway("peer gave no response")
            })?;
        let (parts, body) = response.into_parts();
        let head_grpc = respond::grpc_status(&parts.headers);
        Ok(Answer {
            parts,
            body: body.map_err(Into::into).boxed_unsync(),
            head_grpc,
            peer_identity: endpoint.identity.to_string(),
            hold: Hold {
                _guard: guard,
                _cancel: None,
            },
        })
    }
}

/// Where a request goes at the peer: the service, or the pod's address
/// the app dialled.
#[derive(Clone, Copy, Debug)]
enum Dst {
    Service,
    Addr(SocketAddr),
}

/// What a tunnel stream to `service` asks the peer for.
fn tunnel_header(shared: &Shared, service: &ServiceName, dst: Dst) -> ConnectRequest {
    ConnectRequest {
        service: matches!(dst, Dst::Service).then(|| service.clone()),
        original_dst: match dst {
            Dst::Addr(addr) => Some(addr),
            Dst::Service => None,
        },
        connection_id: shared.connection_id(),
    }
}

/// A request from the app, checked and stripped of what is the hop's,
/// kept apart from its body so every attempt can be built from it.
struct Prepared {
    method: http::Method,
    headers: http::HeaderMap,
    authority: Authority,
    path: PathAndQuery,
}

impl Prepared {
    /// The authority kept (`Host` for HTTP/1, `:authority` for HTTP/2; the
    /// service name when the client sent neither, as HTTP/1.0 may). `None`
    /// for a request no peer could take.
    fn new(req: Request<Incoming>, service: &ServiceName) -> Option<(Self, Incoming)> {
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
        Some((
            Self {
                method: parts.method,
                headers: parts.headers,
                authority,
                path,
            },
            body,
        ))
    }

    /// The request's head as it goes to an HTTP/3 peer: where it goes and
    /// which version the client spoke added.
    fn to_h3(&self, service: &ServiceName, dst: Dst, proto: &'static str) -> Option<Request<()>> {
        let mut headers = self.headers.clone();
        // The authority travels as `:authority`; HTTP/3 refuses a `Host`
        // that differs from it.
        headers.remove(header::HOST);
        match dst {
            Dst::Service => headers.insert(DST_SERVICE, headers::value(service.as_str())?),
            Dst::Addr(addr) => headers.insert(DST_ADDR, headers::value(&addr.to_string())?),
        };
        headers.insert(CLIENT_PROTO, http::HeaderValue::from_static(proto));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(self.path.clone())
            .build()
            .ok()?;
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_3;
        *request.headers_mut() = headers;
        Some(request)
    }

    /// The request as it goes inside a tunnel stream to a peer from
    /// before HTTP/3, and from there to the app: HTTP/1.1 in origin form
    /// with its `Host`, or HTTP/2 with its `:authority`.
    fn to_legacy(&self, version: AppProtocol, body: ProxyBody) -> Request<ProxyBody> {
        let mut headers = self.headers.clone();
        let (uri, version) = match version {
            AppProtocol::Http1 => {
                if !headers.contains_key(header::HOST)
                    && let Ok(host) = http::HeaderValue::from_str(self.authority.as_str())
                {
                    headers.insert(header::HOST, host);
                }
                (Uri::from(self.path.clone()), Version::HTTP_11)
            }
            AppProtocol::Http2 => {
                headers.remove(header::HOST);
                let uri = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(self.authority.clone())
                    .path_and_query(self.path.clone())
                    .build()
                    .unwrap_or_else(|_| Uri::from(self.path.clone()));
                (uri, Version::HTTP_2)
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        request
    }
}
