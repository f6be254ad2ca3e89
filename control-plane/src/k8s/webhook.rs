//! The injection webhook's HTTPS listener: `POST /inject` and
//! `POST /inject/namespace` with an AdmissionReview, answered by
//! [`crate::admission::review`].
//!
//! The webhook configuration has one entry per path, and the API server's
//! `namespaceSelector` decides which one a pod goes to: pods of namespaces
//! labelled `phoenix.dev/inject=enabled` come to `/inject/namespace`, pods of
//! namespaces with neither `enabled` nor `disabled` come to `/inject` (where
//! the pod's own annotation decides). The API server reads the label as it
//! admits the pod, so a namespace labelled a moment ago is honoured; a
//! watch cache here could still miss it.
//!
//! The API server verifies our certificate against the `caBundle` of the
//! MutatingWebhookConfiguration, which the control plane keeps equal to the
//! mesh's trust bundle ([`super::webhook_config`]); the certificate comes
//! from the mesh CA with the Service's DNS names. TLS 1.3 with
//! X25519MLKEM768 preferred; X25519 is accepted here, because the API server
//! is not a mesh peer and older ones lack ML-KEM.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use phoenix_api::tls_policy::{CipherSuite, KeyExchange};
use phoenix_tls::Credentials;
use tokio::net::TcpListener;

use crate::admission;
use crate::inject::{INJECT, Injector};

/// Largest AdmissionReview accepted (a pod is a few KiB; the API server
/// caps requests at 3 MiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long a client may take for the TLS handshake or the request body
/// (the API server's own webhook timeout is 10 s).
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Path of pods whose namespace asks for nothing (the pod's annotation decides).
pub const PATH: &str = "/inject";
/// Path of pods whose namespace is labelled `phoenix.dev/inject=enabled`.
pub const NAMESPACE_PATH: &str = "/inject/namespace";

/// What the webhook answers with: the injector (its trust bundle follows
/// root rotations).
pub struct Webhook {
    /// The injector in force.
    pub injector: ArcSwap<Injector>,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// rustls refused the configuration.
    #[error("webhook TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// The rustls server config: our certificate from `credentials`, which the
/// control plane renews in place.
pub fn tls_config(credentials: Arc<Credentials>) -> Result<rustls::ServerConfig, WebhookError> {
    let provider = phoenix_tls::provider::provider(KeyExchange::PqPreferred, CipherSuite::DEFAULT);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(credentials);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves the webhook on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: rustls::ServerConfig, webhook: Arc<Webhook>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = phoenix_runtime::accept::accept(&listener, "webhook").await;
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "webhook TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(handle(req, &webhook).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, webhook: &Webhook) -> Response<Full<Bytes>> {
    // What the namespace asks, as the API server's selector saw it.
    let namespace_enabled = match req.uri().path() {
        PATH => false,
        NAMESPACE_PATH => true,
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("not found; the webhook serves POST {PATH} and {NAMESPACE_PATH}"),
            );
        }
    };
    if req.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("POST an AdmissionReview to {PATH} or {NAMESPACE_PATH}"),
        );
    }
    // A declared length over the limit is refused before reading a byte
    // (with `Expect: 100-continue`, before the client sends it).
    if hyper::body::Body::size_hint(req.body()).lower() > MAX_BODY as u64 {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview exceeds {MAX_BODY} bytes"),
        );
    }
    let body = match tokio::time::timeout(
        IO_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the AdmissionReview did not arrive within {IO_TIMEOUT:?}"),
            );
        }
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the AdmissionReview exceeds {MAX_BODY} bytes"),
            );
        }
    };
    let injector = webhook.injector.load();
    let labels = |_: &str| {
        let mut labels = BTreeMap::new();
        if namespace_enabled {
            labels.insert(INJECT.to_owned(), "enabled".to_owned());
        }
        labels
    };
    match admission::review(&body, &injector, labels) {
        Ok(out) => Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(out)))
            .unwrap_or_default(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({"error": message})).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
