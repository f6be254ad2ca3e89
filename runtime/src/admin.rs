//! The admin HTTP listener: `/live`, `/ready`, `/metrics`, `/config`.
//!
//! Shared by the proxy and the control plane: each supplies a [`AdminState`]
//! that says whether it is ready and what its config dump is.
//!
//! The port listens on the pod's address for the kubelet's probes and
//! Prometheus, so `/config` (every Service, endpoint and identity the
//! proxy knows) is served to loopback clients only, as Linkerd serves its
//! `/env.json`: `kubectl port-forward` and `kubectl exec` arrive there.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the admin endpoints report.
pub trait AdminState: Send + Sync + 'static {
    /// `Ok(())` when ready; otherwise the reasons it is not.
    fn ready(&self) -> Result<(), Vec<String>>;
    /// Things an operator should know while ready (e.g. stale data being
    /// served); shown in `/ready`'s body.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The config dump.
    fn config_dump(&self) -> serde_json::Value;
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, state: Arc<dyn AdminState>) {
    loop {
        let (tcp, peer) = crate::accept::accept(&listener, "admin").await;
        let local_peer = peer.ip().to_canonical().is_loopback();
        let registry = registry.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &registry, state.as_ref(), local_peer)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn route(
    req: &Request<Incoming>,
    registry: &Registry,
    state: &dyn AdminState,
    local_peer: bool,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" => match state.ready() {
            Ok(()) => {
                let warnings = state.warnings();
                let body = if warnings.is_empty() {
                    serde_json::json!({"ready": true})
                } else {
                    serde_json::json!({"ready": true, "warnings": warnings})
                };
                json(StatusCode::OK, &body)
            }
            Err(reasons) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"ready": false, "reasons": reasons}),
            ),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => Response::builder()
                    .header(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
            }
        }
        "/config" if local_peer => json(StatusCode::OK, &state.config_dump()),
        "/config" => text(
            StatusCode::FORBIDDEN,
            "/config is served to loopback clients only; use kubectl port-forward (or exec) and ask 127.0.0.1\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /live, /ready, /metrics or /config\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
