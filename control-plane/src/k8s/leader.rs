//! Leader election on a coordination.k8s.io Lease.
//!
//! Every replica serves proxies; only the leader writes status, so replicas
//! never fight over conditions. The algorithm is client-go's: the holder
//! renews the Lease every few seconds; another replica takes over when the
//! record has not changed for a whole lease duration *by its own clock*
//! (comparing against the holder's timestamps would trust clock sync).
//! Every write carries the resourceVersion it read, so two replicas racing
//! for the Lease cannot both win: the API server refuses the second (409).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// Name of the Lease.
pub const LEASE_NAME: &str = "phoenix-control-plane";
/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews and the others look.
pub const RETRY: Duration = Duration::from_secs(2);

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or its holder stopped renewing: take it.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decides from the Lease `spec` as read, our name, and how long the record
/// has been unchanged by our clock.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Action {
    let Some(spec) = spec else {
        return Action::Create;
    };
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(LEASE_DURATION, Duration::from_secs);
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Action::Renew,
        None | Some("") => Action::TakeOver,
        Some(_) if unchanged_for >= duration => Action::TakeOver,
        Some(_) => Action::Follow,
    }
}

/// Runs the election as `me` in `namespace`, publishing whether we lead.
pub async fn run(
    client: kube::Client,
    namespace: String,
    me: String,
    leading: watch::Sender<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    // The record last read (holder and renew time), and since when it is so.
    let mut observed: Option<(Option<String>, Option<MicroTime>, Instant)> = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // A hung request must not keep us leading: each round is bounded,
        // and the lease is judged by the clock after it, not before.
        match tokio::time::timeout(RETRY, step(&api, &me, &mut observed, now)).await {
            Ok(Ok(true)) => last_renewal = Some(now),
            Ok(Ok(false)) => last_renewal = None,
            Ok(Err(error)) => tracing::warn!(%error, "cannot reach the leader Lease; retrying"),
            Err(_) => tracing::warn!("the leader Lease did not answer in time; retrying"),
        }
        // A leader that cannot renew steps down before anyone may take over.
        let lead = last_renewal.is_some_and(|t| t.elapsed() < LEASE_DURATION - RETRY);
        leading.send_if_modified(|l| {
            let changed = *l != lead;
            if changed {
                tracing::info!(leading = lead, lease = %format!("{namespace}/{LEASE_NAME}"), "leadership changed");
            }
            *l = lead;
            changed
        });
        tokio::time::sleep(RETRY).await;
    }
}

/// One round: `Ok(true)` when we hold the Lease after it.
async fn step(
    api: &Api<Lease>,
    me: &str,
    observed: &mut Option<(Option<String>, Option<MicroTime>, Instant)>,
    now: Instant,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(LEASE_NAME).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    let record = (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.clone()),
    );
    let since = match observed {
        Some((h, r, t)) if *h == record.0 && *r == record.1 => *t,
        _ => now,
    };
    *observed = Some((record.0, record.1, since));
    let stamp = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15);
    let outcome = match (decide(spec, me, now - since), current) {
        (Action::Follow, _) => return Ok(false),
        (Action::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_owned()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(stamp.clone()),
                    renew_time: Some(stamp),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (action, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if action == Action::TakeOver {
                spec.holder_identity = Some(me.to_owned());
                spec.acquire_time = Some(stamp.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(duration);
            spec.renew_time = Some(stamp);
            // `replace` sends the resourceVersion read above: a concurrent
            // writer makes this fail with 409 instead of both winning.
            api.replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
        }
        (_, None) => return Ok(false),
    };
    match outcome {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, "a", s(0)), Action::Create);
        assert_eq!(decide(Some(&held_by("a")), "a", s(100)), Action::Renew);
        assert_eq!(decide(Some(&held_by("b")), "a", s(3)), Action::Follow);
        assert_eq!(
            decide(Some(&held_by("b")), "a", s(15)),
            Action::TakeOver,
            "b stopped renewing"
        );
        assert_eq!(
            decide(Some(&held_by("")), "a", s(0)),
            Action::TakeOver,
            "released"
        );
    }
}
