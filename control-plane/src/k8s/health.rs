//! How current the control plane's picture of the cluster is.
//!
//! Each watched kind reports whether it has listed once (synced) and since
//! when it has been failing. Readiness needs every kind synced once and then
//! stays: with the API server gone the control plane keeps serving what it
//! knows (a failing readiness probe would take it out of its Service and cut
//! proxies off from what they need), and reports the staleness instead, in
//! `/ready`'s body and in `kubernetes_watch_stale_seconds`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Health of every watched kind.
#[derive(Debug, Default)]
pub struct WatchHealth {
    kinds: Mutex<BTreeMap<&'static str, KindHealth>>,
}

#[derive(Debug, Default, Clone)]
struct KindHealth {
    synced: bool,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl WatchHealth {
    /// Health for `kinds`, none synced yet.
    pub fn new(kinds: &[&'static str]) -> Self {
        Self {
            kinds: Mutex::new(kinds.iter().map(|k| (*k, KindHealth::default())).collect()),
        }
    }

    fn with<R>(&self, kind: &'static str, f: impl FnOnce(&mut KindHealth) -> R) -> R {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        f(kinds.entry(kind).or_default())
    }

    /// `kind` listed everything (initially or after a relist).
    pub fn synced(&self, kind: &'static str) {
        self.with(kind, |h| h.synced = true);
    }

    /// Whether `kind` has listed once.
    pub fn is_synced(&self, kind: &'static str) -> bool {
        self.with(kind, |h| h.synced)
    }

    /// `kind`'s watch delivered an event: it works.
    pub fn ok(&self, kind: &'static str) {
        self.with(kind, |h| {
            h.failing_since = None;
            h.last_error = None;
        });
    }

    /// `kind`'s watch failed (it retries with backoff).
    pub fn failed(&self, kind: &'static str, error: &dyn std::fmt::Display, now: Instant) {
        self.with(kind, |h| {
            h.failing_since.get_or_insert(now);
            h.last_error = Some(error.to_string());
        });
    }

    /// How long each kind has been failing (zero when healthy).
    pub fn staleness(&self, now: Instant) -> Vec<(&'static str, Duration)> {
        let kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter()
            .map(|(k, h)| (*k, h.failing_since.map_or(Duration::ZERO, |t| now - t)))
            .collect()
    }

    /// Kinds that have not listed yet: not ready while any has not.
    pub fn unsynced(&self) -> Vec<String> {
        let kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter()
            .filter(|(_, h)| !h.synced)
            .map(|(k, h)| match &h.last_error {
                Some(e) => format!("{k}: not listed yet ({e})"),
                None => format!("{k}: not listed yet"),
            })
            .collect()
    }

    /// Warnings for `/ready`'s body: kinds failing, for how long, why.
    pub fn warnings(&self, now: Instant) -> Vec<String> {
        let kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter()
            .filter_map(|(k, h)| {
                let since = h.failing_since?;
                Some(format!(
                    "{k} watch failing for {}s ({}); serving what was known",
                    (now - since).as_secs(),
                    h.last_error.as_deref().unwrap_or("unknown error")
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_synced_then_stale_but_still_serving() {
        let h = WatchHealth::new(&["Service", "Pod"]);
        let t0 = Instant::now();
        assert_eq!(h.unsynced().len(), 2);
        h.synced("Service");
        h.synced("Pod");
        assert!(h.unsynced().is_empty());
        h.failed("Pod", &"connection refused", t0);
        h.failed("Pod", &"connection refused", t0 + Duration::from_secs(3));
        let later = t0 + Duration::from_secs(10);
        assert!(h.unsynced().is_empty(), "a synced kind stays synced");
        let stale: BTreeMap<_, _> = h.staleness(later).into_iter().collect();
        assert_eq!(
            stale["Pod"],
            Duration::from_secs(10),
            "from the first failure"
        );
        assert_eq!(stale["Service"], Duration::ZERO);
        assert_eq!(
            h.warnings(later),
            vec!["Pod watch failing for 10s (connection refused); serving what was known"]
        );
        h.ok("Pod");
        assert!(h.warnings(later).is_empty());
    }
}
