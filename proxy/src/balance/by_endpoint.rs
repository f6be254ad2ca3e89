//! State kept per endpoint address and shared by every connection and
//! request of the proxy (failure backoff, failure accrual, latency).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

/// `T` per endpoint address, behind one lock: each use holds it for a map
/// lookup or two, never across an await.
#[derive(Debug)]
pub struct ByEndpoint<T>(Mutex<HashMap<SocketAddr, T>>);

impl<T> Default for ByEndpoint<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> ByEndpoint<T> {
    /// Runs `f` on the map. A panic elsewhere while it was held leaves
    /// plain numbers behind, so a poisoned lock is used as it is.
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<SocketAddr, T>) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forgets endpoints `keep` rejects (pods that went away).
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.with(|map| map.retain(|addr, _| keep(*addr)));
    }
}
