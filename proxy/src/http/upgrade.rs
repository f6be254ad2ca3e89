//! An upgrade (WebSocket, h2c) or a CONNECT asked by a later request of a
//! keep-alive HTTP/1.1 connection.
//!
//! The first request of a connection is read before it is served
//! ([`super::detect`]): one that upgrades sends the whole connection
//! through the tunnel as bytes. A client may also upgrade later, on a
//! connection that has carried plain requests. HTTP/3 has no `Upgrade`
//! (its WebSocket is RFC 9220's extended CONNECT, which apps do not
//! speak), so such a request goes the way a first one does: on a tunnel
//! stream of its own to an endpoint chosen for it, as HTTP/1.1 with its
//! `Upgrade` kept. Once the app answers 101 (2xx to a CONNECT), the
//! client's connection and the stream are joined and bytes flow both ways
//! untouched until either side closes. Any other answer is an ordinary
//! response, and the client's connection goes on.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use phoenix_api::header::ConnectRequest;
use tracing::Instrument;

use super::app::AppProtocol;
use super::respond::ProxyBody;
use super::{headers, legacy};
use crate::balance;
use crate::config::{EndpointConfig, MeshConfig};
use crate::state::Shared;

/// Whether `req` switches protocols once answered: an upgrade or a CONNECT.
pub fn wanted(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT || headers::upgrades(req.headers())
}

/// Where an upgrading request may go.
pub struct Route<'a> {
    /// The proxy's state (its tunnel pool, its metrics).
    pub shared: &'a Arc<Shared>,
    /// The endpoints to choose from.
    pub endpoints: &'a [EndpointConfig],
    /// What the tunnel stream asks the peer for.
    pub header: ConnectRequest,
    /// The mesh's settings (for connecting).
    pub mesh: &'a MeshConfig,
    /// How long a connection to an endpoint may take.
    pub connect_timeout: Duration,
}

/// Why an upgrading request got no answer from the app.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// No endpoint could be reached.
    #[error("no endpoint reachable")]
    Unavailable,
    /// The peer or its app failed before an answer.
    #[error("peer gave no answer")]
    BadGateway(#[source] legacy::LegacyError),
}

/// The app's answer to an upgrading request, and who gave it.
pub struct Answered {
    /// The answer, as the client gets it.
    pub response: Response<ProxyBody>,
    /// The endpoint's identity.
    pub peer_identity: String,
}

impl Route<'_> {
    /// Sends `req` to an endpoint on a tunnel stream; when the app
    /// switches protocols, joins the client's upgraded connection to it.
    pub async fn send(self, mut req: Request<Incoming>) -> Result<Answered, UpgradeError> {
        let client_side = hyper::upgrade::on(&mut req);
        let connect = req.method() == Method::CONNECT;
        let (mut parts, body) = req.into_parts();
        let upgrade = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::strip_mesh(&mut parts.headers);
        if let Some(upgrade) = upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, upgrade);
        }
        if !connect {
            // Origin form, as HTTP/1.1 sends it to an origin (`Host` kept).
            parts.uri = parts
                .uri
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        }
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());

        let Some((peer, endpoint)) = balance::connect(
            &self.shared.pool,
            self.endpoints,
            self.mesh,
            self.connect_timeout,
        )
        .await
        else {
            return Err(UpgradeError::Unavailable);
        };
        let mut guard = Some(peer.stream_guard());
        let mut response = legacy::send(
            &self.shared.metrics,
            &peer,
            &self.header,
            request,
            AppProtocol::Http1,
        )
        .await
        .map_err(UpgradeError::BadGateway)?;
        let status = response.status();
        let switched =
            status == StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success());
        if switched {
            let server_side = hyper::upgrade::on(&mut response);
            let guard = guard.take();
            tokio::spawn(
                async move {
                    let _guard = guard;
                    match tokio::try_join!(client_side, server_side) {
                        Ok((client, server)) => {
                            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                                Err(error) => tracing::debug!(%error, "upgraded connection ended with an error"),
                            }
                        }
                        Err(error) => tracing::debug!(%error, "upgrade did not complete"),
                    }
                }
                .in_current_span(),
            );
        }
        let (mut parts, body) = response.into_parts();
        if !switched {
            headers::strip_hop_by_hop(&mut parts.headers);
        }
        // hyper writes the version it is given; the client spoke HTTP/1.1
        // to us, whatever the app answered the tunnel stream in (1.0 for
        // Python's http.server), as `finish` does for every other answer.
        parts.version = Version::HTTP_11;
        // A 101 keeps its `Connection` and `Upgrade`: the client checks them.
        // Otherwise the stream counts as in flight until the body ends.
        let body = super::body::observed(body, move |_| drop(guard));
        Ok(Answered {
            response: Response::from_parts(parts, body.boxed_unsync()),
            peer_identity: endpoint.identity.to_string(),
        })
    }
}
