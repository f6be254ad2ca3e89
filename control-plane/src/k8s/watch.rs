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
use phoenix_api::route::RouteKind;
use serde::de::DeserializeOwned;

use super::index::Index;
use super::live::Live;
use super::policy::PolicyRecord;
use super::records::{self, ObjectKey};
use super::routes::GrantRecord;
use super::routes::Raw;
use crate::crd::{MeshConfig, TrafficPolicy};
use crate::gateway::grpcroutes::GrpcRouteSpec;
use crate::gateway::httproutes::HttpRouteSpec;
use crate::gateway::referencegrants::ReferenceGrantSpec;
use crate::gateway::{GrpcRoute, HttpRoute, ReferenceGrant};
use crate::metrics::Metrics;

/// Every kind the control plane watches, for health reporting.
pub const KINDS: &[&str] = &[
    "Service",
    "EndpointSlice",
    "Pod",
    "Namespace",
    "MeshConfig",
    "TrafficPolicy",
    "HTTPRoute",
    "GRPCRoute",
    "ReferenceGrant",
];

/// Kinds whose CRDs a cluster may not have (the Gateway API's: users
/// install them, Phoenix does not own them). While the API server answers
/// 404 for one, it counts as listed and empty, so the control plane is
/// ready without them, and its watch keeps asking, so routes apply once
/// the CRDs are installed (no restart).
pub const OPTIONAL_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute", "ReferenceGrant"];

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
    /// Its watch's task name (in the error should it ever end).
    const TASK: &'static str;
    /// Sets (`Some`) or deletes (`None`) the object `key` in the index.
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>);
}

impl Watched for Service {
    const KIND: &'static str = "Service";
    const TASK: &'static str = "Service watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_service(key.clone(), obj.and_then(records::service));
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";
    const TASK: &'static str = "EndpointSlice watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_slice(key.clone(), obj.and_then(records::slice));
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";
    const TASK: &'static str = "Pod watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        index.apply_pod(key.clone(), obj.and_then(records::pod));
    }
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";
    const TASK: &'static str = "Namespace watch";
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
    const TASK: &'static str = "MeshConfig watch";
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
    const TASK: &'static str = "TrafficPolicy watch";
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

impl Watched for Raw<HttpRoute> {
    const KIND: &'static str = "HTTPRoute";
    const TASK: &'static str = "HTTPRoute watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        let record = obj.map(|r| r.route::<HttpRouteSpec>(RouteKind::Http, &key.namespace));
        index.apply_route(RouteKind::Http, key.clone(), record);
    }
}

impl Watched for Raw<GrpcRoute> {
    const KIND: &'static str = "GRPCRoute";
    const TASK: &'static str = "GRPCRoute watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        let record = obj.map(|r| r.route::<GrpcRouteSpec>(RouteKind::Grpc, &key.namespace));
        index.apply_route(RouteKind::Grpc, key.clone(), record);
    }
}

impl Watched for Raw<ReferenceGrant> {
    const KIND: &'static str = "ReferenceGrant";
    const TASK: &'static str = "ReferenceGrant watch";
    fn apply(index: &mut Index, key: &ObjectKey, obj: Option<&Self>) {
        let record = obj.and_then(|g| {
            match serde_json::from_value::<ReferenceGrantSpec>(g.spec.clone()) {
                Ok(spec) => Some(GrantRecord {
                    from: spec
                        .from
                        .iter()
                        .map(|f| (f.group.clone(), f.kind.clone(), f.namespace.clone()))
                        .collect(),
                    to: spec
                        .to
                        .iter()
                        .map(|t| (t.group.clone(), t.kind.clone(), t.name.clone()))
                        .collect(),
                }),
                // A grant that cannot be read grants nothing.
                Err(error) => {
                    tracing::warn!(grant = %key, %error, "ignoring a ReferenceGrant the Gateway API v1.5.1 types cannot read");
                    None
                }
            }
        });
        index.apply_grant(key.clone(), record);
    }
}

/// The index key of any object (cluster-scoped objects have namespace `""`).
pub fn key_of<K: kube::Resource>(obj: &K) -> ObjectKey {
    ObjectKey::new(
        obj.meta().namespace.as_deref().unwrap_or(""),
        &obj.name_any(),
    )
}

/// 404s in a row (with the watcher's backoff, some seconds) after which an
/// optional kind is taken as no longer served and its objects forgotten.
const NOT_FOUND_TO_FORGET: u32 = 3;

/// Whether the API server answered that it has no such resource (its
/// CRD is not installed).
fn is_not_found(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404
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
    // 404s in a row, for an optional kind.
    let mut not_found = 0;
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) if OPTIONAL_KINDS.contains(&K::KIND) && is_not_found(&error) => {
                if !live.health.is_synced(K::KIND) {
                    tracing::info!(
                        kind = K::KIND,
                        "the API server does not serve this kind (Gateway API CRDs not installed?); routes are off until it does"
                    );
                    live.health.synced(K::KIND);
                }
                // Served no more (its CRD deleted: its objects went first,
                // as Delete events; this is the backstop for missed ones).
                // A single 404 may be one API server that has not loaded
                // the CRD yet: only a persisting one clears what is known.
                not_found += 1;
                if not_found >= NOT_FOUND_TO_FORGET && !known.is_empty() {
                    let gone = std::mem::take(&mut known);
                    live.apply(|index| {
                        for key in &gone {
                            K::apply(index, key, None);
                        }
                    });
                    tracing::info!(
                        kind = K::KIND,
                        removed = gone.len(),
                        "no longer served; its objects are removed"
                    );
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(kind = K::KIND, %error, "watch failed; serving what is known, retrying");
                live.health.failed(K::KIND, &error, Instant::now());
                metrics.watch_error(K::KIND);
                continue;
            }
        };
        live.health.ok(K::KIND);
        not_found = 0;
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
