//! Peers' HTTP/3 connections: every request is routed and authorized on
//! its own (a policy change applies to the next request), then forwarded
//! to the app over pooled connections, with the client's verified
//! identity in `phoenix-client-id`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h3::server::RequestResolver;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use phoenix_api::SpiffeId;
use phoenix_api::protocol::Protocol;
use tracing::Instrument;

use super::app::AppProtocol;
use super::body::{self, H3Body, ServerSend};
use super::headers::{self, CLIENT_ID, CLIENT_PROTO, DST_ADDR, DST_SERVICE};
use super::respond::{self, Exchange, GRPC_PERMISSION_DENIED, GRPC_UNAVAILABLE};
use crate::connector::MAX_HEADER_BYTES;
use crate::inbound::{InboundRoute, pod_ips, route};
use crate::metrics::Direction;
use crate::metrics::http::HttpError;
use crate::state::Shared;

type Resolver = RequestResolver<h3_quinn::Connection, Bytes>;

/// Serves HTTP/3 on a peer's connection until it closes.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection, client: Arc<SpiffeId>) {
    let mut h3 = match h3::server::builder()
        .max_field_section_size(MAX_HEADER_BYTES)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(h3) => h3,
        Err(error) => {
            tracing::debug!(%error, "HTTP/3 did not start on the peer connection");
            return;
        }
    };
    let mut draining = false;
    loop {
        let accepted = if draining {
            h3.accept().await
        } else {
            tokio::select! {
                accepted = h3.accept() => accepted,
                () = shared.drained() => {
                    // GOAWAY: the peer sends no new request here, those in
                    // flight finish, and the loop ends when they have.
                    draining = true;
                    if let Err(error) = h3.shutdown(0).await {
                        tracing::debug!(%error, "cannot send GOAWAY to the peer");
                    }
                    continue;
                }
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                let client = client.clone();
                tokio::spawn(
                    async move {
                        let _active = shared.track();
                        request(&shared, &client, resolver).await;
                    }
                    .in_current_span(),
                );
            }
            Ok(None) => return,
            Err(error) => {
                if !error.is_h3_no_error() {
                    tracing::debug!(%error, "HTTP/3 peer connection ended");
                }
                return;
            }
        }
    }
}

async fn request(shared: &Arc<Shared>, client: &SpiffeId, resolver: Resolver) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(%client, %error, "peer sent no valid request head");
            return;
        }
    };
    let metrics = &shared.metrics.http;
    let grpc = headers::is_grpc(req.headers());
    let (mut send, recv) = stream.split();
    let Some(config) = shared.config.load_full() else {
        let exchange = Exchange::start(metrics, Direction::inbound, "");
        return refuse(shared, &exchange, &mut send, grpc, HttpError::no_route).await;
    };
    let service = req
        .headers()
        .get(DST_SERVICE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let original_dst = req
        .headers()
        .get(DST_ADDR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok());
    let pod_ips = pod_ips(shared, &config);
    let (service, target) = match route(&config, service.as_deref(), original_dst, client, &pod_ips)
    {
        InboundRoute::Connect { service, target } => (service, target),
        InboundRoute::NoRoute => {
            let exchange = Exchange::start(metrics, Direction::inbound, "");
            tracing::info!(%client, ?service, ?original_dst, "no such service here");
            return refuse(shared, &exchange, &mut send, grpc, HttpError::no_route).await;
        }
        InboundRoute::Denied { service } => {
            let exchange = Exchange::start(metrics, Direction::inbound, service);
            tracing::debug!(%client, service, "request denied by the service's allow-list");
            shared.metrics.denied(service, client);
            return refuse(shared, &exchange, &mut send, grpc, HttpError::denied).await;
        }
    };
    let exchange = Exchange::start(metrics, Direction::inbound, service);
    let declared = config
        .inbound
        .get(service)
        .map_or(Protocol::Detect, |i| i.protocol);
    let app_protocol = match declared {
        Protocol::Http1 => AppProtocol::Http1,
        Protocol::Http2 => AppProtocol::Http2,
        // The app's port only detects: speak what the client spoke.
        Protocol::Detect | Protocol::Opaque => {
            if req
                .headers()
                .get(CLIENT_PROTO)
                .is_some_and(|v| v == "http2")
            {
                AppProtocol::Http2
            } else {
                AppProtocol::Http1
            }
        }
    };
    let Some(app_request) = to_app(req, client, app_protocol, H3Body::peeked(recv)) else {
        return refuse(shared, &exchange, &mut send, grpc, HttpError::bad_request).await;
    };
    let app = shared
        .app_clients
        .get(target, app_protocol, config.mesh.connect_timeout);
    let response = match app.request(app_request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%client, service, %target, error = %phoenix_runtime::process::error_chain(&error), "the app gave no response");
            return refuse(shared, &exchange, &mut send, grpc, HttpError::bad_gateway).await;
        }
    };
    let (mut parts, app_body) = response.into_parts();
    exchange.headers(metrics, parts.status);
    let status = parts.status;
    let head_grpc = respond::grpc_status(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_3;
    if let Err(error) = send.send_response(Response::from_parts(parts, ())).await {
        tracing::debug!(%client, %error, "peer went away before the response");
        exchange.ended(metrics, &client.to_string(), status, head_grpc, true);
        return;
    }
    let (grpc_status, broke) = match body::pump(app_body, &mut send).await {
        Ok(trailers) => (
            trailers
                .as_ref()
                .and_then(respond::grpc_status)
                .or(head_grpc),
            false,
        ),
        Err(error) => {
            tracing::debug!(%client, error = %phoenix_runtime::process::error_chain(&error), "response body not carried to its end");
            (head_grpc, true)
        }
    };
    exchange.ended(metrics, &client.to_string(), status, grpc_status, broke);
}

/// Answers a request the proxy will not forward, and counts it.
async fn refuse(
    shared: &Shared,
    exchange: &Exchange,
    send: &mut ServerSend,
    grpc: bool,
    reason: HttpError,
) {
    let metrics = &shared.metrics.http;
    metrics.error(Direction::inbound, reason);
    let (status, grpc_status, message) = match reason {
        HttpError::denied => (
            StatusCode::FORBIDDEN,
            GRPC_PERMISSION_DENIED,
            "denied by the service's policy",
        ),
        HttpError::bad_request => (
            StatusCode::BAD_REQUEST,
            GRPC_UNAVAILABLE,
            "request cannot be forwarded",
        ),
        HttpError::bad_gateway => (
            StatusCode::BAD_GATEWAY,
            GRPC_UNAVAILABLE,
            "the app gave no response",
        ),
        HttpError::timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            super::respond::GRPC_DEADLINE_EXCEEDED,
            "request timed out",
        ),
        // Routes are chosen by the client's proxy; the inbound side never
        // refuses for them, but a reason is a reason.
        HttpError::route_not_found => (
            StatusCode::NOT_FOUND,
            super::respond::GRPC_UNIMPLEMENTED,
            "no route matches the request",
        ),
        HttpError::backend_invalid => (
            StatusCode::INTERNAL_SERVER_ERROR,
            super::respond::GRPC_INTERNAL,
            "the route's backend is not a known service",
        ),
        HttpError::no_route | HttpError::unavailable | HttpError::backend_unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            GRPC_UNAVAILABLE,
            "no such service here",
        ),
    };
    let head = respond::error_head(grpc, status, grpc_status, message);
    let sent_status = head.status();
    exchange.headers(metrics, sent_status);
    let grpc_label = grpc.then(|| grpc_status.to_string());
    exchange.ended(metrics, "", sent_status, grpc_label, false);
    if send.send_response(head).await.is_ok() {
        if !grpc {
            let _ = send.send_data(Bytes::from_static(message.as_bytes())).await;
        }
        let _ = send.finish().await;
    }
}

/// The request as the app gets it: mesh headers replaced by the client's
/// identity, in the app's HTTP version, to the authority the client named.
fn to_app(
    req: Request<()>,
    client: &SpiffeId,
    protocol: AppProtocol,
    body: super::app::AppBody,
) -> Option<Request<super::app::AppBody>> {
    let (mut parts, ()) = req.into_parts();
    strip(&mut parts.headers);
    parts
        .headers
        .insert(CLIENT_ID, headers::value(&client.to_string())?);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(parts.uri.authority()?.clone())
        .path_and_query(path)
        .build()
        .ok()?;
    parts.version = match protocol {
        AppProtocol::Http1 => Version::HTTP_11,
        AppProtocol::Http2 => Version::HTTP_2,
    };
    Some(Request::from_parts(parts, body))
}

fn strip(headers: &mut HeaderMap) {
    headers::strip_hop_by_hop(headers);
    headers::strip_mesh(headers);
}
