//! Watches: one kube-runtime watcher per kind, feeding the index.
//!
//! kube-runtime's watcher lists, then watches from the list's
//! resourceVersion, and relists when the API server answers 410 Gone (or the
//! watch breaks); errors come out of the stream and it retries with backoff.
//! A (re)list arrives as `Init`, `InitApply`… and `InitDone`: objects are
//! staged as they come and published at `InitDone`, when whatever the
//! previous list had and this one lacks is deleted (it went away while the
//! watch was down).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;

use super::index::Index;
use super::live::Live;
use super::policy::PolicyRecord;
use super::records::{self, ObjectKey};
use crate::crd::{MeshConfig, TrafficPolicy};
use crate::metrics::Metrics;

/// Every kind the control plane watches, for health reporting.
pub const KINDS: &[&str] = &[
    "Service",
    "EndpointSlice",
    "Pod",
    "Namespace",
    "MeshConfig",
    "TrafficPolicy",
];

/// A kind the index consumes.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Its kind, as in `KINDS`.
    const KIND: &'static str;
    /// Sets (`Some`) or deletes (`None`) the object `key` in the index.
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>);
}

impl Watched for Service {
    const KIND: &'static str = "Service";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_service(key.clone(), obj.and_then(records::service));
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_slice(key.clone(), obj.and_then(records::slice));
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_pod(key.clone(), obj.and_then(records::pod));
    }
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        let record = obj.map(records::namespace);
        if let Some(value) = record
            .as_ref()
            .and_then(|r| r.invalid_default_policy.as_ref())
        {
            tracing::warn!(namespace = %key.name, %value, "ignoring phoenix.dev/default-policy: use allow-mesh, allow-namespace or deny");
        }
        index.apply_namespace(&key.name, record);
    }
}

impl Watched for MeshConfig {
    const KIND: &'static str = "MeshConfig";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_mesh_config(
            &key.name,
            obj.map(|m| &m.spec),
            obj.and_then(|m| m.metadata.generation),
        );
    }
}

impl Watched for TrafficPolicy {
    const KIND: &'static str = "TrafficPolicy";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        let record = obj.map(|p| {
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second());
            PolicyRecord {
                generation: p.metadata.generation,
                ..PolicyRecord::new(key, &p.spec, created)
            }
        });
        index.apply_policy(key.clone(), record);
    }
}

/// The index key of any object (cluster-scoped objects have namespace `""`).
pub fn key_of<K: kube::Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(
        obj.meta().namespace.as_deref().unwrap_or(""),
        &obj.name_any(),
    )
}

/// Feeds `api`'s objects into `live` until the stream ends (it does not,
/// short of the task being dropped: errors are retried with backoff).
pub async fn run<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
) {
    let mut known: HashSet<ObjectKey> = HashSet::new();
    let mut listing: Option<HashSet<ObjectKey>> = None;
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(kind = K::KIND, %error, "watch failed; serving what is known, retrying");
                live.health.failed(K::KIND, &error, Instant::now());
                metrics.watch_error(K::KIND);
                continue;
            }
        };
        live.health.ok(K::KIND);
        match event {
            Event::Init => listing = Some(HashSet::new()),
            Event::InitApply(obj) => {
                let key = key_of(&obj);
                live.stage(|index| K::apply(index, &key, Some(&obj)));
                known.insert(key.clone());
                if let Some(seen) = listing.as_mut() {
                    seen.insert(key);
                }
            }
            Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                let gone: Vec<ObjectKey> = known.difference(&seen).cloned().collect();
                live.apply(|index| {
                    for key in &gone {
                        K::apply(index, key, None);
                    }
                });
                known = seen;
                live.health.synced(K::KIND);
                tracing::info!(
                    kind = K::KIND,
                    objects = known.len(),
                    removed = gone.len(),
                    "listed"
                );
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                live.apply(|index| K::apply(index, &key, Some(&obj)));
                known.insert(key);
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                live.apply(|index| K::apply(index, &key, None));
                known.remove(&key);
            }
        }
    }
}
