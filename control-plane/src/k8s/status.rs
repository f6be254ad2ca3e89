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

use super::live::Live;
use super::records::ObjectKey;
use crate::crd::conditions::{self, Verdict};
use crate::crd::{MeshConfig, TrafficPolicy};

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

/// Writes statuses while `leading` is true.
pub async fn run(client: kube::Client, live: Arc<Live>, mut leading: watch::Receiver<bool>) {
    let mut written: HashMap<Target, Vec<Condition>> = HashMap::new();
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
        } else {
            // A new leader rewrites everything: another replica may have
            // written in between.
            written.clear();
        }
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() { return }
                // Batch a burst of changes (a relist) into one pass.
                tokio::time::sleep(BATCH).await;
                changes.borrow_and_update();
            }
            r = leading.changed() => if r.is_err() { return },
            _ = resync.tick() => written.clear(),
        }
    }
}
