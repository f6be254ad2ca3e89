//! The control plane's live state: the mesh in force, the bootstrap tokens
//! and where subscribed proxies are. Every change bumps one version and
//! wakes the subscribers, who each compute their own snapshot and send what
//! changed.

use std::sync::{Arc, Mutex, PoisonError};

use phoenix_api::snapshot::Snapshot;
use tokio::sync::watch;

use crate::index::{self, Registrations};
use crate::mesh::Mesh;
use crate::tokens::Tokens;

/// Shared live state.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    mesh: Arc<Mesh>,
    tokens: Arc<Tokens>,
    registrations: Registrations,
    /// Generation of each registration, so a stale subscription ending does
    /// not remove a newer one of the same workload.
    generations: std::collections::BTreeMap<String, u64>,
    next_generation: u64,
    version: u64,
}

/// Proof of a registration, given back to [`Hub::unregister`].
#[derive(Debug)]
pub struct Registration {
    workload: String,
    generation: u64,
}

impl Hub {
    /// A hub serving `mesh`. Versions start from the wall clock in
    /// milliseconds, so they keep increasing across control-plane restarts.
    pub fn new(mesh: Mesh, tokens: Tokens) -> Self {
        let version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            inner: Mutex::new(Inner {
                mesh: Arc::new(mesh),
                tokens: Arc::new(tokens),
                registrations: Registrations::new(),
                generations: Default::default(),
                next_generation: 0,
                version,
            }),
            changed: watch::channel(version).0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner);
        inner.version += 1;
        self.changed.send_replace(inner.version);
    }

    /// Replaces the mesh.
    pub fn set_mesh(&self, mesh: Mesh) {
        self.update(|i| i.mesh = Arc::new(mesh));
    }

    /// Replaces the tokens (no snapshot depends on them: no version bump).
    pub fn set_tokens(&self, tokens: Tokens) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tokens = Arc::new(tokens);
    }

    /// The mesh in force.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mesh
            .clone()
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tokens
            .clone()
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .version
    }

    /// Records where `workload`'s proxy accepts connections.
    pub fn register(&self, workload: &str, address: std::net::SocketAddr) -> Registration {
        let mut generation = 0;
        self.update(|i| {
            i.next_generation += 1;
            generation = i.next_generation;
            i.registrations.insert(workload.to_owned(), address);
            i.generations.insert(workload.to_owned(), generation);
        });
        Registration {
            workload: workload.to_owned(),
            generation,
        }
    }

    /// Forgets a registration unless a newer one replaced it.
    pub fn unregister(&self, registration: Registration) {
        let current = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generations
            .get(&registration.workload)
            == Some(&registration.generation);
        if current {
            self.update(|i| {
                i.registrations.remove(&registration.workload);
                i.generations.remove(&registration.workload);
            });
        }
    }

    /// The registrations (for the config dump).
    pub fn registrations(&self) -> Registrations {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .registrations
            .clone()
    }

    /// `workload`'s snapshot at the current version.
    pub fn snapshot_for(&self, workload: &str) -> Option<Snapshot> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        index::snapshot_for(&inner.mesh, &inner.registrations, workload, inner.version)
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
