//! The mesh roots in every namespace, as the ConfigMap `phoenix-trust-bundle`
//! (key `ca.crt`), like Istio's `istio-ca-root-cert`.
//!
//! An injected proxy reads its first trust anchor from this ConfigMap
//! (mounted), not from a value frozen into the pod at admission: a proxy
//! container restarted after a root rotation (OOM-killed, node reboot)
//! starts from the current roots, where a pod-spec copy would still name a
//! retired root and never reach the control plane again. Once connected,
//! the proxy follows the bundle in its config. The leader keeps every
//! namespace's copy equal to the roots in force; kube-system and
//! kube-node-lease are skipped (never injected).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use super::live::Live;
use crate::roots::Phase;

/// The ConfigMap's name in every namespace (what the injector projects).
pub const CONFIG_MAP: &str = crate::inject::TRUST_CONFIG_MAP;
/// Its key holding the PEM roots.
pub const KEY: &str = crate::inject::TRUST_KEY;
/// Namespaces never injected, so never given a copy.
pub const SKIPPED: &[&str] = &["kube-system", "kube-node-lease"];
/// Every copy is re-read this often (one edited or deleted by hand is put back).
const RECHECK: Duration = Duration::from_secs(300);

/// Why a namespace's copy could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot read or write ConfigMap {namespace}/{CONFIG_MAP}")]
pub struct TrustBundleError {
    /// The namespace.
    pub namespace: String,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// Makes `namespace`'s copy hold `bundle`; `Ok(false)` when it already did.
/// An update carries the version read, so a concurrent edit fails (and the
/// next round retries). A create that loses to another writer (a previous
/// leader) reads again and compares: what that writer put there may be an
/// older bundle, so it is never taken as current unread.
pub async fn ensure(
    client: kube::Client,
    namespace: &str,
    bundle: &str,
) -> Result<bool, TrustBundleError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let error = |source| TrustBundleError {
        namespace: namespace.to_owned(),
        source,
    };
    let data = BTreeMap::from([(KEY.to_owned(), bundle.to_owned())]);
    let mut raced = false;
    loop {
        match api.get_opt(CONFIG_MAP).await.map_err(error)? {
            Some(current) if current.data.as_ref() == Some(&data) => return Ok(false),
            Some(mut current) => {
                current.data = Some(data);
                api.replace(CONFIG_MAP, &PostParams::default(), &current)
                    .await
                    .map_err(error)?;
                return Ok(true);
            }
            None => match api
                .create(&PostParams::default(), &new_map(namespace, &data))
                .await
            {
                Ok(_) => return Ok(true),
                // Someone created it between our read and our create: read
                // it once more (a second race is an error; the next round retries).
                Err(kube::Error::Api(status)) if status.code == 409 && !raced => raced = true,
                Err(source) => return Err(error(source)),
            },
        }
    }
}

/// The ConfigMap as first written, labelled as Phoenix's.
fn new_map(namespace: &str, data: &BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "phoenix".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(data.clone()),
        ..ConfigMap::default()
    }
}

/// While this replica leads, keeps every namespace's copy equal to the
/// roots in force: on a rotation, for a new namespace (polled from the
/// watched Namespaces every 2 s), and every five minutes for all.
pub async fn run(
    client: kube::Client,
    live: Arc<Live>,
    mut phases: tokio::sync::watch::Receiver<Phase>,
    mut lead: tokio::sync::watch::Receiver<bool>,
) {
    // Namespace → the bundle written there, while leading.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut since_recheck = Instant::now();
    loop {
        if !*lead.borrow_and_update() {
            written.clear();
        } else {
            if since_recheck.elapsed() >= RECHECK {
                written.clear();
                since_recheck = Instant::now();
            }
            let bundle = phases.borrow_and_update().bundle.clone();
            let namespaces: BTreeSet<String> = live
                .read(|index| index.namespace_names())
                .into_iter()
                .filter(|n| !SKIPPED.contains(&n.as_str()))
                .collect();
            written.retain(|n, _| namespaces.contains(n));
            for namespace in namespaces {
                if written.get(&namespace) == Some(&bundle) {
                    continue;
                }
                match ensure(client.clone(), &namespace, &bundle).await {
                    Ok(changed) => {
                        if changed {
                            tracing::info!(%namespace, "trust bundle ConfigMap written");
                        }
                        written.insert(namespace, bundle.clone());
                    }
                    Err(error) => {
                        tracing::warn!(error = %phoenix_runtime::process::error_chain(&error), "cannot write the trust bundle; retrying")
                    }
                }
            }
        }
        tokio::select! {
            r = phases.changed() => if r.is_err() { return },
            r = lead.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
