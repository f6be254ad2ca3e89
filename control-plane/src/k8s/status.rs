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
use kube::api::{Patch, PatchParams};
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
    let mut routes_written: HashMap<RouteId, Vec<Value>> = HashMap::new();
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

/// Writes each route's `status.parents[]` entries under Phoenix's
/// controller name, one per Service it names, leaving other controllers'
/// entries as they are (read just before, so only a write racing this one
/// could be lost, and the next pass puts it back).
async fn write_routes(
    client: &kube::Client,
    live: &Live,
    written: &mut HashMap<RouteId, Vec<Value>>,
) {
    type Work = Vec<(
        RouteId,
        Option<i64>,
        Vec<(super::routes::Parent, Vec<Verdict>)>,
    )>;
    let work: Work = live.read(|index| {
        index
            .routes()
            .filter_map(|(id, r)| Some((id.clone(), r.generation, index.route_verdicts(id)?)))
            .collect()
    });
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    written.retain(|id, _| work.iter().any(|(w, ..)| w == id));
    for (id, generation, parents) in work {
        let previous = written.get(&id).cloned().unwrap_or_default();
        let ours: Vec<Value> = parents
            .iter()
            .map(|(parent, verdicts)| {
                let parent_ref = parent.parent_ref();
                let before: Vec<Condition> = previous
                    .iter()
                    .find(|p| p["parentRef"] == parent_ref)
                    .and_then(|p| serde_json::from_value(p["conditions"].clone()).ok())
                    .unwrap_or_default();
                let conditions = conditions::merge(&before, verdicts, generation, now.clone());
                serde_json::json!({
                    "parentRef": parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": conditions,
                })
            })
            .collect();
        if written.get(&id) == Some(&ours) {
            continue;
        }
        let (kind, key) = &id;
        let result = match kind {
            RouteKind::Http => {
                let api = Api::<HttpRoute>::namespaced(client.clone(), &key.namespace);
                patch_parents(&api, &key.name, &ours).await
            }
            RouteKind::Grpc => {
                let api = Api::<GrpcRoute>::namespaced(client.clone(), &key.namespace);
                patch_parents(&api, &key.name, &ours).await
            }
        };
        match result {
            Ok(()) => {
                written.insert(id, ours);
            }
            // Deleted meanwhile: the watch will drop it.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                tracing::warn!(kind = kind.as_str(), route = %key, %error, "cannot write route status; retrying");
            }
        }
    }
}

/// Sets `status.parents` to the other controllers' entries and `ours`.
async fn patch_parents<K>(api: &Api<K>, name: &str, ours: &[Value]) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let current = serde_json::to_value(api.get(name).await?).unwrap_or_default();
    let mut parents: Vec<Value> = current["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    parents.extend(ours.iter().cloned());
    let patch = Patch::Merge(serde_json::json!({"status": {"parents": parents}}));
    api.patch_status(name, &PatchParams::default(), &patch)
        .await
        .map(drop)
}
