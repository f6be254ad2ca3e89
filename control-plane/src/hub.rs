//! The control plane's live state in file mode: the mesh in force, the
//! bootstrap tokens and where subscribed proxies are. Every change bumps one
//! version of the [`Publisher`] (the same publish side as Kubernetes mode)
//! and wakes the subscribers; each is sent the shared mesh settings from
//! the change log and its own resources diffed against what it holds.
//!
//! Registrations are saved to the state directory, so a restarted control
//! plane serves the endpoints it knew at once: otherwise the first proxy to
//! resubscribe would get a snapshot without the peers that have not yet
//! resubscribed, and new connections would fail until they had. Restored
//! entries that no proxy confirms within a grace period are dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::control::ErrorCode;
use phoenix_api::snapshot::Snapshot;
use phoenix_tls::handshake::TlsPolicy;
use tokio::sync::watch;

use crate::roots::TrustRoots;

use crate::index::{self, Registrations};
use crate::mesh::Mesh;
use crate::publish::{Position, Publisher};
use crate::source::{MeshSource, Refusal, SourceFuture, Subscription};
use crate::tokens::Tokens;

/// Shared live state.
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    /// Where registrations are saved (file mode: `<stateDir>/registrations.json`).
    persist: Option<PathBuf>,
    /// Set at shutdown: subscriptions ending then must not erase what is saved.
    closing: AtomicBool,
}

/// Generation of registrations restored from disk and not yet confirmed.
const RESTORED: u64 = 0;

#[derive(Debug)]
struct Inner {
    mesh: Arc<Mesh>,
    tokens: Arc<Tokens>,
    registrations: Registrations,
    /// Generation of each registration, so a stale subscription ending does
    /// not remove a newer one of the same workload.
    generations: std::collections::BTreeMap<String, u64>,
    next_generation: u64,
    /// Shared resources, change log and version.
    publisher: Publisher,
    /// The mesh roots proxies must trust (set by the root schedule).
    roots: Option<Arc<TrustRoots>>,
}

/// The mesh no longer has the workload a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the workload was removed from the mesh")]
pub struct UnknownWorkload;

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
        let mut publisher = Publisher::new(version);
        publisher.publish(index::mesh_settings(&mesh, None));
        let version = publisher.commit().unwrap_or(version);
        Self {
            inner: Mutex::new(Inner {
                mesh: Arc::new(mesh),
                tokens: Arc::new(tokens),
                registrations: Registrations::new(),
                generations: Default::default(),
                next_generation: RESTORED,
                publisher,
                roots: None,
            }),
            changed: watch::channel(version).0,
            persist: None,
            closing: AtomicBool::new(false),
        }
    }

    /// Saves registrations to `path` from now on, and restores those saved
    /// there for workloads the mesh still has. Returns how many were restored.
    pub fn persist_to(mut self, path: PathBuf) -> (Self, usize) {
        let saved: Registrations = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let mut restored = 0;
        {
            let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
            for (workload, address) in saved {
                if inner.mesh.workloads.contains_key(&workload) {
                    inner.registrations.insert(workload.clone(), address);
                    inner.generations.insert(workload, RESTORED);
                    restored += 1;
                }
            }
        }
        self.persist = Some(path);
        (self, restored)
    }

    /// Drops restored registrations that no proxy has confirmed.
    pub fn expire_restored(&self) {
        self.update(|i| {
            let stale: Vec<String> = i
                .generations
                .iter()
                .filter(|(_, g)| **g == RESTORED)
                .map(|(w, _)| w.clone())
                .collect();
            for w in stale {
                i.registrations.remove(&w);
                i.generations.remove(&w);
            }
        });
    }

    /// Stops saving changes (shutdown in progress).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn save(&self, registrations: &Registrations) {
        let Some(path) = &self.persist else { return };
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let write = serde_json::to_vec_pretty(registrations)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(tmp, path)
            });
        if let Err(error) = write {
            tracing::warn!(path = %path.display(), %error, "cannot save registrations");
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let before = inner.registrations.clone();
        f(&mut inner);
        let settings = index::mesh_settings(&inner.mesh, inner.roots.as_deref());
        inner.publisher.publish(settings);
        // Any workload's own view may have changed (a registration is an
        // endpoint of its callers): subscribers diff theirs on wake.
        inner.publisher.touch();
        let version = inner.publisher.commit().unwrap_or_default();
        if inner.registrations != before {
            self.save(&inner.registrations);
        }
        self.changed.send_replace(version);
    }

    /// Replaces the mesh.
    pub fn set_mesh(&self, mesh: Mesh) {
        self.update(|i| i.mesh = Arc::new(mesh));
    }

    /// Sets the mesh roots every proxy must trust; a new version when they change.
    pub fn set_roots(&self, roots: &TrustRoots) {
        let same = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .roots
            .as_deref()
            == Some(roots);
        if !same {
            let configured = self.mesh().auth_policy;
            if TrustRoots::effective(Some(roots), configured) != configured {
                tracing::warn!(
                    "authPolicy pq-only is not in force yet: a trusted root is ECDSA P-256; it applies once every root is ML-DSA (set identityAlgorithm: ml-dsa-65, run rotate-ca, and wait for the old root to retire)"
                );
            }
            self.update(|i| i.roots = Some(Arc::new(roots.clone())));
        }
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
            .publisher
            .version()
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
        if self.closing.load(Ordering::Acquire) {
            return;
        }
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
        index::snapshot_for(
            &inner.mesh,
            &inner.registrations,
            inner.roots.as_deref(),
            workload,
            inner.publisher.version(),
        )
    }

    /// The next message for `workload`'s proxy at `position`, as a frame
    /// for its wire version, and whether it is a delta; `Ok(None)` when its
    /// view has not changed, `Err` when the mesh no longer has the workload.
    pub fn next_frame(
        &self,
        workload: &str,
        position: &mut Position,
        wire_version: u32,
    ) -> Result<Option<(Vec<u8>, bool)>, UnknownWorkload> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !inner.mesh.workloads.contains_key(workload) {
            return Err(UnknownWorkload);
        }
        let own_changed = position.seen() < inner.publisher.version();
        Ok(inner.publisher.next_frame(
            position,
            &mut || {
                index::own_resources(&inner.mesh, &inner.registrations, workload)
                    .unwrap_or_default()
            },
            own_changed,
            wire_version,
        ))
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The file source: the mesh file's workloads, authenticated by their
/// bootstrap tokens.
impl MeshSource for Hub {
    fn tls_policy(&self) -> TlsPolicy {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        TlsPolicy {
            key_exchange: inner.mesh.key_exchange,
            cipher_suites: inner.mesh.cipher_suites.clone(),
            auth_policy: TrustRoots::effective(inner.roots.as_deref(), inner.mesh.auth_policy),
        }
    }

    fn certificate_lifetime(&self) -> Duration {
        self.mesh().certificate_lifetime
    }

    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> SourceFuture<'a, Result<(SpiffeId, Duration), Refusal>> {
        let tokens = self.tokens();
        let mesh = self.mesh();
        let found = match tokens.workload(token).and_then(|w| mesh.workloads.get(w)) {
            Some(w) => Ok((w.identity.clone(), mesh.certificate_lifetime)),
            None => Err(Refusal {
                label: "invalid_token",
                code: ErrorCode::InvalidToken,
                message: "the bootstrap token is unknown; start the proxy through `phoenix up` or pass the token written for its workload".into(),
            }),
        };
        Box::pin(std::future::ready(found))
    }

    fn subscribe(
        &self,
        client: &SpiffeId,
        inbound: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Box<dyn Subscription + '_>, Refusal> {
        let Some(workload) = self
            .mesh()
            .workload_by_identity(client)
            .map(|w| w.name.clone())
        else {
            return Err(Refusal {
                label: "unknown_workload",
                code: ErrorCode::UnknownWorkload,
                message: format!("no workload has identity {client}"),
            });
        };
        // A proxy behind NAT or on 0.0.0.0 reports an unspecified address;
        // use the address its connection comes from instead.
        let inbound = if inbound.ip().is_unspecified() {
            SocketAddr::new(remote.ip().to_canonical(), inbound.port())
        } else {
            inbound
        };
        let registration = Some(self.register(&workload, inbound));
        Ok(Box::new(FileSubscription {
            hub: self,
            workload,
            registration,
            position: Position::default(),
        }))
    }

    fn set_roots(&self, roots: &TrustRoots) {
        Hub::set_roots(self, roots);
    }
}

/// A subscribed proxy of a mesh-file workload: registered (its services
/// have it as an endpoint) for as long as it is subscribed.
struct FileSubscription<'a> {
    hub: &'a Hub,
    workload: String,
    registration: Option<Registration>,
    position: Position,
}

impl Subscription for FileSubscription<'_> {
    fn changes(&self) -> watch::Receiver<u64> {
        self.hub.subscribe()
    }

    fn next_frame(&mut self, wire_version: u32) -> Result<Option<(Vec<u8>, bool)>, Refusal> {
        self.hub
            .next_frame(&self.workload, &mut self.position, wire_version)
            .map_err(|UnknownWorkload| Refusal {
                label: "unknown_workload",
                code: ErrorCode::UnknownWorkload,
                message: format!("workload {} was removed", self.workload),
            })
    }
}

impl Drop for FileSubscription<'_> {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            self.hub.unregister(registration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mesh() -> Mesh {
        Mesh::parse(
            "trustDomain: td\nworkloads:\n  - name: a\n  - name: b\n",
            Path::new("mesh.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn registrations_survive_a_restart_until_the_grace_period_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registrations.json");
        let (hub, restored) = Hub::new(mesh(), Tokens::default()).persist_to(path.clone());
        assert_eq!(restored, 0);
        let a = hub.register("a", "127.0.0.1:1001".parse().unwrap());
        let _b = hub.register("b", "127.0.0.1:1002".parse().unwrap());
        hub.unregister(a);
        // Shutdown: ending subscriptions must not erase what is saved.
        hub.close();
        drop(hub);

        let (hub, restored) = Hub::new(mesh(), Tokens::default()).persist_to(path);
        assert_eq!(restored, 1, "b was registered at shutdown, a had left");
        assert!(hub.registrations().contains_key("b"));
        // b confirms, a never comes back: nothing restored stays unconfirmed.
        let b = hub.register("b", "127.0.0.1:1003".parse().unwrap());
        hub.expire_restored();
        assert_eq!(hub.registrations()["b"], "127.0.0.1:1003".parse().unwrap());
        hub.unregister(b);
        assert!(hub.registrations().is_empty());
    }
}
