//! The Kubernetes source: the cluster's meshed Services and pods, and
//! proxies authenticated by their ServiceAccount tokens (TokenReview).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::control::ErrorCode;
use phoenix_tls::handshake::TlsPolicy;
use tokio::sync::watch;

use super::live::{self, Live};
use super::token_review::{ReviewError, Reviewer};
use crate::source::{MeshSource, Refusal, SourceFuture, Subscription};

/// The Kubernetes source the server reads.
#[derive(Debug)]
pub struct KubeSource {
    /// Live cluster state.
    pub live: Arc<Live>,
    /// Checks proxy tokens.
    pub reviewer: Reviewer,
}

impl MeshSource for KubeSource {
    fn tls_policy(&self) -> TlsPolicy {
        super::run::tls_policy(&self.live)
    }

    fn certificate_lifetime(&self) -> Duration {
        self.live.mesh().certificate_lifetime
    }

    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> SourceFuture<'a, Result<(SpiffeId, Duration), Refusal>> {
        Box::pin(async move {
            let reviewed = self.reviewer.review(token).await.map_err(|e| Refusal {
                label: e.metric_label(),
                code: match e {
                    ReviewError::Api(_) => ErrorCode::Internal,
                    _ => ErrorCode::InvalidToken,
                },
                message: phoenix_runtime::process::error_chain(&e),
            })?;
            let mesh = self.live.mesh();
            let identity = SpiffeId::workload(
                &mesh.settings.trust_domain,
                &reviewed.namespace,
                &reviewed.service_account,
            )
            .map_err(|e| Refusal {
                label: "invalid_token",
                code: ErrorCode::InvalidToken,
                message: format!("the token's ServiceAccount is not a valid identity: {e}"),
            })?;
            Ok((identity, mesh.certificate_lifetime))
        })
    }

    fn subscribe(
        &self,
        client: &SpiffeId,
        inbound: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Box<dyn Subscription + '_>, Refusal> {
        let Some((namespace, service_account)) = client.namespace_and_service_account() else {
            return Err(Refusal {
                label: "unknown_workload",
                code: ErrorCode::UnknownWorkload,
                message: format!(
                    "{client} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>)"
                ),
            });
        };
        // The pod is found by the address the proxy reports (its pod IP; a
        // proxy bound to 0.0.0.0 is taken at the address it connects from)
        // and must run as the certificate's identity. A proxy outside the
        // cluster matches no pod: it gets the Services, no inbound.
        let ip = if inbound.ip().is_unspecified() {
            remote.ip().to_canonical()
        } else {
            inbound.ip()
        };
        let ip = Some(ip).filter(|ip| !ip.is_loopback());
        let subscription = Some(self.live.subscribe(namespace, service_account, ip));
        Ok(Box::new(KubeSubscription {
            live: &self.live,
            subscription,
        }))
    }

    fn set_roots(&self, roots: &crate::roots::TrustRoots) {
        let configured = self.live.mesh().settings.auth_policy;
        if crate::roots::TrustRoots::effective(Some(roots), configured) != configured {
            tracing::warn!(
                "authPolicy pq-only is not in force yet: a trusted root is ECDSA P-256; it applies once every root is ML-DSA (set identityAlgorithm: ml-dsa-65 in MeshConfig default, run rotate-ca, and wait for the old root to retire)"
            );
        }
        self.live.apply(|index| index.set_roots(roots));
    }
}

/// A subscribed proxy, known to the index (and its compaction) until dropped.
struct KubeSubscription<'a> {
    live: &'a Live,
    subscription: Option<live::Subscription>,
}

impl Subscription for KubeSubscription<'_> {
    fn changes(&self) -> watch::Receiver<u64> {
        self.live.changes()
    }

    fn next_frame(&mut self, wire_version: u32) -> Result<Option<(Vec<u8>, bool)>, Refusal> {
        Ok(self
            .subscription
            .as_mut()
            .and_then(|s| self.live.next_frame(s, wire_version)))
    }
}

impl Drop for KubeSubscription<'_> {
    fn drop(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            self.live.unsubscribe(subscription);
        }
    }
}
