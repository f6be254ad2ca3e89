//! Writes status conditions on Phoenix resources (leader only).
//!
//! The index decides the verdicts (pure, tested there); this loop writes
//! those that changed since it last wrote, as a JSON merge patch of the
//! status subresource (so spec edits racing with it are never overwritten).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use tokio::sync::watch;

use phoenix_api::route::RouteKind;
use serde_json::Value;

use super::live::Live;
use super::records::ObjectKey;
use super::routes::CONTROLLER_NAME;
use crate::crd::conditions::{self, Verdict};
use crate::crd::{MeshConfig, TrafficPolicy};
use crate::gateway::{GrpcRoute, HttpRoute};

/// Re-checks everything this often even without changes (a status edited
/// by hand is put back).
const RESYNC: Duration = Duration::from_secs(60);
/// Changes arriving this close together are written in one pass.
const BATCH: Duration = Duration::from_millis(100);

/// Which resource a status belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Mesh(String),
    Policy(ObjectKey),
}

/// A route's identity in the index.
type RouteId = (RouteKind, ObjectKey);

/// Writes statuses while `leading` is true.
pub async fn run(client: kube::Client, live: Arc<Live>, mut leading: watch::Receiver<bool>) {
    let mut written: HashMap<Target, Vec<Condition>> = HashMap::new();
    let mut routes_written: HashMap<RouteId, RouteFacts> = HashMap::new();
    let mut changes = live.touches();
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *leading.borrow_and_update() {
            let work: Vec<(Target, Option<i64>, Vec<Verdict>)> = live.read(|index| {
                let meshes = index.mesh_configs().filter_map(|(name, g)| {
                    Some((
                        Target::Mesh(name.clone()),
                        g,
                        index.mesh_config_verdicts(name)?,
                    ))
                });
                let policies = index.policies().filter_map(|(key, g)| {
                    Some((Target::Policy(key.clone()), g, index.policy_verdicts(key)?))
                });
                meshes.chain(policies).collect()
            });
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let live_targets: Vec<Target> = work.iter().map(|(t, _, _)| t.clone()).collect();
            written.retain(|t, _| live_targets.contains(t));
            for (target, generation, verdicts) in work {
                let previous = written.get(&target).map(Vec::as_slice).unwrap_or_default();
                let next = conditions::merge(previous, &verdicts, generation, now.clone());
                if written.get(&target) == Some(&next) {
                    continue;
                }
                let patch = Patch::Merge(serde_json::json!({
                    "status": {"observedGeneration": generation, "conditions": next}
                }));
                let pp = PatchParams::default();
                let result = match &target {
                    Target::Mesh(name) => Api::<MeshConfig>::all(client.clone())
                        .patch_status(name, &pp, &patch)
                        .await
                        .map(drop),
                    Target::Policy(key) => {
                        Api::<TrafficPolicy>::namespaced(client.clone(), &key.namespace)
                            .patch_status(&key.name, &pp, &patch)
                            .await
                            .map(drop)
                    }
                };
                match result {
                    Ok(()) => {
                        written.insert(target, next);
                    }
                    // Deleted meanwhile: the watch will drop it.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(error) => tracing::warn!(?target, %error, "cannot write status; retrying"),
                }
            }
            write_routes(&client, &live, &mut routes_written).await;
        } else {
            // A new leader rewrites everything: another replica may have
            // written in between.
            written.clear();
            routes_written.clear();
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() { return }
                // Batch a burst of changes (a relist) into one pass.
                tokio::time::sleep(BATCH).await;
                changes.borrow_and_update();
            }
            r = leading.changed() => if r.is_err() { return },
            _ = resync.tick() => {
                written.clear();
                routes_written.clear();
            }
        }
    }
}

/// What a route's Phoenix status is made of: its generation and the
/// verdicts per parent. A route is looked at again only when this changes
/// (or on the periodic resync).
type RouteFacts = (Option<i64>, Vec<(Value, Vec<Verdict>)>);

/// Writes each route's `status.parents[]` entries under Phoenix's
/// controller name, one per Service it names. The route is read first, as
/// raw JSON (so no field of another controller's entry is lost to the
/// types): other controllers' entries are kept as they are, conditions
/// whose status did not change keep their `lastTransitionTime`, nothing is
/// written when nothing changed, and the write carries the
/// `resourceVersion` read, so a write by someone else in between makes it
/// fail (409) and be done again from a fresh read.
async fn write_routes(
    client: &kube::Client,
    live: &Live,
    written: &mut HashMap<RouteId, RouteFacts>,
) {
    type Work = Vec<(RouteId, RouteFacts)>;
    let work: Work = live.read(|index| {
        index
            .routes()
            .filter_map(|(id, r)| {
                let verdicts = index.route_verdicts(id)?;
                let facts = verdicts
                    .into_iter()
                    .map(|(parent, v)| (parent.parent_ref(), v))
                    .collect();
                Some((id.clone(), (r.generation, facts)))
            })
            .collect()
    });
    written.retain(|id, _| work.iter().any(|(w, _)| w == id));
    for (id, facts) in work {
        if written.get(&id) == Some(&facts) {
            continue;
        }
        let (kind, key) = &id;
        let resource = match kind {
            RouteKind::Http => ApiResource::erase::<HttpRoute>(&()),
            RouteKind::Grpc => ApiResource::erase::<GrpcRoute>(&()),
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, &resource);
        let mut result = Ok(false);
        // A conflict (someone wrote in between) is read again, a few times.
        for _ in 0..3 {
            result = write_route(&api, &key.name, &facts).await;
            if !matches!(&result, Err(kube::Error::Api(s)) if s.code == 409) {
                break;
            }
        }
        match result {
            Ok(_) => {
                written.insert(id, facts);
            }
            // Deleted meanwhile: the watch will drop it.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                tracing::warn!(kind = kind.as_str(), route = %key, %error, "cannot write route status; retrying");
            }
        }
    }
}

/// Reads route `name`, and writes Phoenix's `status.parents[]` entries
/// for `facts` if they differ from what it holds. Whether it wrote.
async fn write_route(
    api: &Api<DynamicObject>,
    name: &str,
    (generation, parents): &RouteFacts,
) -> Result<bool, kube::Error> {
    let current = api.get(name).await?;
    let held: Vec<Value> = current.data["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_ours = |p: &Value| p["controllerName"] == CONTROLLER_NAME;
    let ours_before: Vec<&Value> = held.iter().filter(|p| is_ours(p)).collect();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let ours: Vec<Value> = parents
        .iter()
        .map(|(parent_ref, verdicts)| {
            let before: Vec<Condition> = ours_before
                .iter()
                .find(|p| p["parentRef"] == *parent_ref)
                .and_then(|p| serde_json::from_value(p["conditions"].clone()).ok())
                .unwrap_or_default();
            serde_json::json!({
                "parentRef": parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions::merge(&before, verdicts, *generation, now.clone()),
            })
        })
        .collect();
    if ours_before.len() == ours.len() && ours_before.iter().zip(&ours).all(|(a, b)| *a == b) {
        return Ok(false);
    }
    let mut parents: Vec<Value> = held.iter().filter(|p| !is_ours(p)).cloned().collect();
    parents.extend(ours);
    let mut patch = serde_json::json!({"status": {"parents": parents}});
    if let Some(rv) = &current.metadata.resource_version {
        patch["metadata"] = serde_json::json!({"resourceVersion": rv});
    }
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| true)
}
