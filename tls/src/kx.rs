//! Which key-exchange group a handshake negotiated.
//!
//! quinn exposes neither the rustls connection nor the negotiated group, and
//! rustls wants `&'static` group references in its provider. So each group is
//! wrapped in a recorder that writes the group it completed with into a slot;
//! a [`KxLease`] hands one connection exclusive use of a set of such recorders
//! for the length of its handshake, then returns them to a pool. Recorders
//! are leaked once and reused, so memory is bounded by the largest number of
//! concurrent handshakes ever seen, not by the number of handshakes.

use std::sync::{Mutex, PoisonError};

use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{NamedGroup, ProtocolVersion, SupportedProtocolVersion};

use crate::provider;

/// Where one handshake's recorders write the negotiated group.
#[derive(Debug, Default)]
struct Slot {
    negotiated: Mutex<Option<NamedGroup>>,
}

impl Slot {
    fn record(&self, group: NamedGroup) {
        *self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(group);
    }
}

/// A set of recording wrappers over every group Phoenix may offer.
#[derive(Debug)]
struct Recorders {
    slot: &'static Slot,
    /// Same order as [`provider::kx_groups`] with `PqPreferred` (a superset).
    groups: Vec<&'static dyn SupportedKxGroup>,
}

static POOL: Mutex<Vec<&'static Recorders>> = Mutex::new(Vec::new());

/// Exclusive use of one set of recorders for one handshake.
#[derive(Debug)]
pub struct KxLease {
    recorders: &'static Recorders,
}

impl KxLease {
    /// Takes recorders from the pool, or makes (and leaks) a new set.
    pub fn acquire() -> Self {
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let recorders = pooled.unwrap_or_else(|| {
            let slot: &'static Slot = Box::leak(Box::default());
            let groups = provider::kx_groups(phoenix_api::tls_policy::KeyExchange::PqPreferred)
                .iter()
                .map(|inner| {
                    let g: &'static dyn SupportedKxGroup = Box::leak(Box::new(RecordingGroup {
                        inner: *inner,
                        slot,
                    }));
                    g
                })
                .collect();
            Box::leak(Box::new(Recorders { slot, groups }))
        });
        *recorders
            .slot
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Self { recorders }
    }

    /// The recording equivalents of `wanted`, in the same order.
    pub fn wrap(
        &self,
        wanted: &[&'static dyn SupportedKxGroup],
    ) -> Vec<&'static dyn SupportedKxGroup> {
        wanted
            .iter()
            .filter_map(|w| {
                self.recorders
                    .groups
                    .iter()
                    .find(|g| g.name() == w.name())
                    .copied()
            })
            .collect()
    }

    /// The group the handshake completed with, once it has.
    pub fn negotiated(&self) -> Option<NamedGroup> {
        *self
            .recorders
            .slot
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for KxLease {
    fn drop(&mut self) {
        POOL.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.recorders);
    }
}

/// IANA name of a group, as used in the `kx_group` metric label.
pub fn group_name(group: NamedGroup) -> &'static str {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "secp256r1",
        NamedGroup::secp384r1 => "secp384r1",
        NamedGroup::MLKEM768 => "MLKEM768",
        _ => "other",
    }
}

#[derive(Debug)]
struct RecordingGroup {
    inner: &'static dyn SupportedKxGroup,
    slot: &'static Slot,
}

impl SupportedKxGroup for RecordingGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(RecordingExchange {
            inner: self.inner.start()?,
            slot: self.slot,
        }))
    }

    // The server's path: the default implementation would call `start` and
    // `complete`, which breaks ML-KEM (the server encapsulates, it does not
    // generate a key share), so forward to the inner group's own.
    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<CompletedKeyExchange, rustls::Error> {
        let done = self.inner.start_and_complete(peer_pub_key)?;
        self.slot.record(done.group);
        Ok(done)
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

struct RecordingExchange {
    inner: Box<dyn ActiveKeyExchange>,
    slot: &'static Slot,
}

impl ActiveKeyExchange for RecordingExchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let group = self.inner.group();
        let secret = self.inner.complete(peer_pub_key)?;
        self.slot.record(group);
        Ok(secret)
    }

    fn complete_for_tls_version(
        self: Box<Self>,
        peer_pub_key: &[u8],
        tls_version: &SupportedProtocolVersion,
    ) -> Result<SharedSecret, rustls::Error> {
        let group = self.inner.group();
        let secret = self
            .inner
            .complete_for_tls_version(peer_pub_key, tls_version)?;
        self.slot.record(group);
        Ok(secret)
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        self.inner.hybrid_component()
    }

    // The client offered X25519MLKEM768 and the server chose its X25519
    // component: record the classical group actually used.
    fn complete_hybrid_component(
        self: Box<Self>,
        peer_pub_key: &[u8],
    ) -> Result<SharedSecret, rustls::Error> {
        let group = self.inner.hybrid_component().map(|(g, _)| g);
        let secret = self.inner.complete_hybrid_component(peer_pub_key)?;
        if let Some(group) = group {
            self.slot.record(group);
        }
        Ok(secret)
    }

    fn pub_key(&self) -> &[u8] {
        self.inner.pub_key()
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn group(&self) -> NamedGroup {
        self.inner.group()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease pool's one invariant: leases held at the same time never
    /// share a slot, so one handshake cannot report another's group; a
    /// returned lease's slot is reused, cleared.
    #[test]
    fn concurrent_leases_never_share_a_slot() {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..200 {
                        let held: Vec<KxLease> = (0..4).map(|_| KxLease::acquire()).collect();
                        for (i, a) in held.iter().enumerate() {
                            assert_eq!(a.negotiated(), None, "a reused slot starts cleared");
                            for b in &held[i + 1..] {
                                assert!(!std::ptr::eq(a.recorders.slot, b.recorders.slot));
                            }
                        }
                        // Each records into its own slot only.
                        held[0].recorders.slot.record(NamedGroup::X25519);
                        assert_eq!(held[1].negotiated(), None);
                        assert_eq!(held[0].negotiated(), Some(NamedGroup::X25519));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_wrapped_group_records_into_its_lease() {
        let lease = KxLease::acquire();
        let wanted = provider::kx_groups(phoenix_api::tls_policy::KeyExchange::PqOnly);
        let wrapped = lease.wrap(wanted);
        assert_eq!(
            wrapped.iter().map(|g| g.name()).collect::<Vec<_>>(),
            wanted.iter().map(|g| g.name()).collect::<Vec<_>>()
        );
    }
}
