//! The live Kubernetes state: the index behind a lock, a version channel
//! that wakes subscriptions, and the watch health.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::health::WatchHealth;

use super::index::{Index, Subscriber};
use super::policy::MeshRecord;

/// Shared state of the Kubernetes source.
#[derive(Debug)]
pub struct Live {
    index: Mutex<Index>,
    changed: watch::Sender<u64>,
    /// Bumped on every applied change, published or not: status verdicts
    /// can change without any proxy's view changing (an invalid MeshConfig,
    /// a policy naming a missing Service).
    touched: watch::Sender<u64>,
    /// Watch health (readiness and staleness).
    pub health: WatchHealth,
    /// Log position of each subscription, so the change log can be compacted.
    positions: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
}

/// A subscribed proxy's place in the index.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    sub: Subscriber,
}

impl Live {
    /// Live state over `index`, with health for `kinds`.
    pub fn new(index: Index, kinds: &[&'static str]) -> Self {
        let version = index.version();
        Self {
            index: Mutex::new(index),
            changed: watch::channel(version).0,
            touched: watch::channel(0).0,
            health: WatchHealth::new(kinds),
            positions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies changes without publishing them (a relist in progress).
    pub fn stage(&self, f: impl FnOnce(&mut Index)) {
        f(&mut self.lock());
    }

    /// Applies changes and publishes them to subscribers.
    pub fn apply(&self, f: impl FnOnce(&mut Index)) {
        let mut index = self.lock();
        f(&mut index);
        let committed = index.commit();
        drop(index);
        if let Some(version) = committed {
            self.changed.send_replace(version);
        }
        self.touched.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on every applied change, even one no proxy sees (status writing).
    pub fn touches(&self) -> watch::Receiver<u64> {
        self.touched.subscribe()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.lock().version()
    }

    /// The mesh settings in force.
    pub fn mesh(&self) -> MeshRecord {
        self.lock().mesh().clone()
    }

    /// Reads the index (status writing, the config dump).
    pub fn read<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.lock())
    }

    /// Wakes on every published change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A new subscription of workload `(namespace, service_account)` at `ip`.
    pub fn subscribe(
        &self,
        namespace: &str,
        service_account: &str,
        ip: Option<IpAddr>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, 0);
        Subscription {
            id,
            sub: Subscriber::new(namespace, service_account, ip),
        }
    }

    /// The next message for `subscription` as an encoded control frame: a
    /// delta (wire version 2), or a full snapshot when the view changed
    /// (version 1, or the first message). The flag says which.
    pub fn next_frame(
        &self,
        subscription: &mut Subscription,
        wire_version: u32,
    ) -> Option<(Vec<u8>, bool)> {
        let index = self.lock();
        let (frame, delta) = index.update_frame_for(&mut subscription.sub, wire_version)?;
        drop(index);
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(subscription.id, subscription.sub.seen());
        Some((frame, delta))
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, subscription: Subscription) {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&subscription.id);
    }

    /// Drops removals every subscription has seen.
    pub fn compact(&self) {
        let oldest = {
            let positions = self
                .positions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            positions.values().min().copied()
        };
        let mut index = self.lock();
        let upto = oldest.unwrap_or(index.version());
        index.compact(upto);
    }
}
