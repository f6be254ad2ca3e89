//! The pure, incremental index: cluster records in, per-proxy snapshots and
//! deltas out.
//!
//! Shared resources (the mesh settings and one `upstream/<svc>.<ns>:<port>`
//! per Service port with meshed endpoints) are built once, whatever the
//! number of proxies, and stamped with the version that last changed them.
//! A change log (one entry per key, ordered by version) lets a proxy's delta
//! be computed from the keys changed since the version it last saw: an
//! unrelated change costs each proxy one log entry, never a rebuild of its
//! snapshot. Per-pod `inbound/...` resources (the Services a pod serves, its
//! target ports and allow-lists) are kept per pod and diffed only when one of
//! that pod's Services changed.
//!
//! Who receives what: every proxy is sent every Service with a meshed
//! endpoint, whatever its policy, as Linkerd and Istio do. Authorization is
//! enforced where it cannot be bypassed, by the serving pod's proxy on the
//! caller's verified identity (`Inbound::allow`). A client outside a
//! Service's audience must still know the Service: transparent interception
//! routes the app's connection by its original destination, and a ClusterIP
//! or pod IP the proxy does not know would leave as plain TCP (its first
//! bytes in clear). Known, it goes over mutual TLS and is refused there.
//! Services with no meshed endpoint are not sent at all (their traffic
//! passes through as it would without a mesh).
//!
//! No I/O, no clock: versions are given, so tests apply objects and compare.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use phoenix_api::ServiceName;
use phoenix_api::protocol::Protocol;
use phoenix_api::route::{Route, RouteKind, RouteRule};
use phoenix_api::snapshot::{Endpoint, Inbound, Resource, Snapshot, Upstream};

pub use crate::publish::Update;
use crate::publish::{Position, Publisher};

use super::policy::{Audience, MeshConfigError, MeshRecord, PolicyRecord};
use super::records::{NamespaceRecord, ObjectKey, PodRecord, ServiceRecord, SliceRecord};
use super::routes::{GrantRecord, RouteRecord, UNRESOLVED_BACKEND, service_key};
use crate::crd::conditions::{ACCEPTED, RESOLVED_REFS, Reason, Verdict};
use crate::crd::mesh_config::MeshConfigSpec;

/// The index.
#[derive(Debug)]
pub struct Index {
    trust_domain: String,
    mesh: MeshRecord,
    /// Every MeshConfig seen: its generation and the verdict on it.
    mesh_configs: BTreeMap<String, (Option<i64>, Result<(), MeshConfigError>)>,
    services: HashMap<ObjectKey, ServiceRecord>,
    slices: HashMap<ObjectKey, SliceRecord>,
    slices_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    pods: HashMap<ObjectKey, PodRecord>,
    pods_by_ip: HashMap<IpAddr, ObjectKey>,
    /// Services whose slices name a pod (by reference or, without one, by
    /// IP), so a pod change finds the Services it affects.
    services_by_pod: HashMap<ObjectKey, BTreeMap<ObjectKey, u32>>,
    services_by_ip: HashMap<IpAddr, BTreeMap<ObjectKey, u32>>,
    namespaces: HashMap<String, NamespaceRecord>,
    policies: HashMap<ObjectKey, PolicyRecord>,
    policies_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// HTTPRoutes and GRPCRoutes (few: looked through whole).
    routes: BTreeMap<(RouteKind, ObjectKey), RouteRecord>,
    grants: BTreeMap<ObjectKey, GrantRecord>,
    /// When the consumer routes of a namespace (or an upstream they
    /// change) last changed: that namespace's proxies get their own copy
    /// of each upstream their routes attach to.
    consumer_version: HashMap<String, u64>,

    /// The shared resources, their change log and the version.
    publisher: Publisher,
    keys_by_service: HashMap<ObjectKey, Vec<String>>,
    inbound: HashMap<ObjectKey, BTreeMap<String, Resource>>,
    inbound_version: HashMap<ObjectKey, u64>,
    /// The mesh roots proxies must trust (from the root schedule).
    roots: Option<crate::roots::TrustRoots>,
    pods_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    dirty: BTreeSet<ObjectKey>,
    mesh_dirty: bool,
}

/// Why a Service is sent even with no meshed endpoint (see
/// `Index::routed`).
#[derive(Debug)]
struct Routed {
    /// Ports valid producer routes attach to (`None`: every port).
    producer_ports: BTreeSet<Option<u16>>,
    /// Ports valid consumer routes attach to (`None`: every port).
    consumer_ports: BTreeSet<Option<u16>>,
    /// Whether a valid route sends to it.
    backend: bool,
}

/// One subscribed proxy, as the index sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    namespace: String,
    service_account: String,
    /// Where its proxy accepts QUIC: the pod IP, when it runs in one.
    ip: Option<IpAddr>,
    pod: Option<ObjectKey>,
    /// What it was sent, and how far in the log it has looked.
    position: Position,
}

impl Subscriber {
    /// A proxy of the workload `(namespace, service_account)` reached at `ip`.
    pub fn new(namespace: &str, service_account: &str, ip: Option<IpAddr>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            ip,
            pod: None,
            position: Position::default(),
        }
    }

    /// The pod it was matched to, if any.
    pub fn pod(&self) -> Option<&ObjectKey> {
        self.pod.as_ref()
    }

    /// The log version it has caught up to.
    pub fn seen(&self) -> u64 {
        self.position.seen()
    }

    /// Makes the next message a full snapshot.
    pub fn resync(&mut self) {
        self.position.resync();
    }
}

impl Index {
    /// An empty index for `trust_domain`, whose first change gets version `start + 1`.
    pub fn new(trust_domain: &str, start: u64) -> Self {
        let mut index = Self {
            trust_domain: trust_domain.to_owned(),
            mesh: MeshRecord::defaults(trust_domain),
            mesh_configs: BTreeMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            pods: HashMap::new(),
            pods_by_ip: HashMap::new(),
            services_by_pod: HashMap::new(),
            services_by_ip: HashMap::new(),
            namespaces: HashMap::new(),
            policies: HashMap::new(),
            policies_by_service: HashMap::new(),
            routes: BTreeMap::new(),
            grants: BTreeMap::new(),
            consumer_version: HashMap::new(),
            publisher: Publisher::new(start),
            keys_by_service: HashMap::new(),
            inbound: HashMap::new(),
            inbound_version: HashMap::new(),
            roots: None,
            pods_by_service: HashMap::new(),
            dirty: BTreeSet::new(),
            mesh_dirty: true,
        };
        index.commit();
        index
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.publisher.version()
    }

    /// The mesh settings in force.
    pub fn mesh(&self) -> &MeshRecord {
        &self.mesh
    }

    /// Whether the Service `key` is known.
    pub fn has_service(&self, key: &ObjectKey) -> bool {
        self.services.contains_key(key)
    }

    /// Number of shared resources (mesh + upstreams).
    pub fn published_len(&self) -> usize {
        self.publisher.len()
    }

    /// Sets or deletes a Service.
    pub fn apply_service(&mut self, key: ObjectKey, record: Option<ServiceRecord>) {
        let old = match record {
            Some(r) => self.services.insert(key.clone(), r),
            None => self.services.remove(&key),
        };
        if old.as_ref() != self.services.get(&key) {
            self.dirty.insert(key);
        }
    }

    /// Sets or deletes an EndpointSlice.
    pub fn apply_slice(&mut self, key: ObjectKey, record: Option<SliceRecord>) {
        if self.slices.get(&key) == record.as_ref() {
            return;
        }
        if let Some(old) = self.slices.remove(&key) {
            self.forget_refs(&old);
            if let Some(set) = self.slices_by_service.get_mut(&old.service) {
                set.remove(&key);
                if set.is_empty() {
                    self.slices_by_service.remove(&old.service);
                }
            }
            self.dirty.insert(old.service);
        }
        if let Some(new) = record {
            self.remember_refs(&new);
            self.slices_by_service
                .entry(new.service.clone())
                .or_default()
                .insert(key.clone());
            self.dirty.insert(new.service.clone());
            self.slices.insert(key, new);
        }
    }

    /// Sets or deletes a meshed pod (`None` also for a pod that stopped being meshed).
    pub fn apply_pod(&mut self, key: ObjectKey, record: Option<PodRecord>) {
        if self.pods.get(&key) == record.as_ref() {
            return;
        }
        let old = self.pods.remove(&key);
        for ip in old.iter().flat_map(|p| &p.ips) {
            if self.pods_by_ip.get(ip) == Some(&key) {
                self.pods_by_ip.remove(ip);
            }
        }
        if let Some(new) = &record {
            for ip in &new.ips {
                self.pods_by_ip.insert(*ip, key.clone());
            }
        }
        let ips: Vec<IpAddr> = old
            .iter()
            .chain(record.iter())
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        if let Some(new) = record {
            self.pods.insert(key.clone(), new);
        }
        let mut affected: BTreeSet<ObjectKey> = self
            .services_by_pod
            .get(&key)
            .into_iter()
            .flat_map(|m| m.keys().cloned())
            .collect();
        for ip in ips {
            affected.extend(
                self.services_by_ip
                    .get(&ip)
                    .into_iter()
                    .flat_map(|m| m.keys().cloned()),
            );
        }
        // The pod's own inbound view changes with it even if no Service does.
        let version = self.publisher.touch();
        self.inbound_version.insert(key, version);
        self.dirty.extend(affected);
    }

    /// Sets or deletes a Namespace.
    pub fn apply_namespace(&mut self, name: &str, record: Option<NamespaceRecord>) {
        let old = match record {
            Some(r) => self.namespaces.insert(name.to_owned(), r),
            None => self.namespaces.remove(name),
        };
        if old.as_ref().and_then(|n| n.default_policy)
            != self.namespaces.get(name).and_then(|n| n.default_policy)
        {
            let in_namespace = self
                .services
                .keys()
                .filter(|k| k.namespace == name)
                .cloned();
            self.dirty.extend(in_namespace.collect::<Vec<_>>());
        }
    }

    /// Every namespace seen (where the trust-bundle ConfigMap belongs).
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    /// Sets or deletes a TrafficPolicy.
    pub fn apply_policy(&mut self, key: ObjectKey, record: Option<PolicyRecord>) {
        if self.policies.get(&key) == record.as_ref() {
            return;
        }
        if let Some(old) = self.policies.remove(&key) {
            if let Some(set) = self.policies_by_service.get_mut(&old.target) {
                set.remove(&key);
                if set.is_empty() {
                    self.policies_by_service.remove(&old.target);
                }
            }
            self.dirty.insert(old.target);
        }
        if let Some(new) = record {
            self.policies_by_service
                .entry(new.target.clone())
                .or_default()
                .insert(key.clone());
            self.dirty.insert(new.target.clone());
            self.policies.insert(key, new);
        }
    }

    /// Sets or deletes a MeshConfig. Only `default` is used; an invalid one
    /// is refused and the settings in force stay (its status says why).
    pub fn apply_mesh_config(
        &mut self,
        name: &str,
        spec: Option<&MeshConfigSpec>,
        generation: Option<i64>,
    ) {
        let Some(spec) = spec else {
            self.mesh_configs.remove(name);
            if name == super::policy::MESH_CONFIG_NAME {
                self.set_mesh(MeshRecord::defaults(&self.trust_domain.clone()));
            }
            return;
        };
        match MeshRecord::validate(name, spec, &self.trust_domain) {
            Ok(record) => {
                self.mesh_configs
                    .insert(name.to_owned(), (generation, Ok(())));
                self.set_mesh(record);
            }
            Err(error) => {
                self.mesh_configs
                    .insert(name.to_owned(), (generation, Err(error)));
            }
        }
    }

    /// The mesh roots set last.
    pub fn roots(&self) -> Option<&crate::roots::TrustRoots> {
        self.roots.as_ref()
    }

    /// Sets the mesh roots every proxy must trust (sent with the mesh settings).
    pub fn set_roots(&mut self, roots: &crate::roots::TrustRoots) {
        if self.roots.as_ref() != Some(roots) {
            self.roots = Some(roots.clone());
            self.mesh_dirty = true;
        }
    }

    fn set_mesh(&mut self, record: MeshRecord) {
        if self.mesh != record {
            let audiences_change = self.mesh.default_policy != record.default_policy;
            self.mesh = record;
            self.mesh_dirty = true;
            if audiences_change {
                self.dirty
                    .extend(self.services.keys().cloned().collect::<Vec<_>>());
            }
        }
    }

    /// Rebuilds what the applied changes touched; returns the new version,
    /// or `None` when no proxy's view changed.
    pub fn commit(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.mesh_dirty) {
            let mut settings = self.mesh.settings.clone();
            settings.trust_bundle_pem = self.roots.as_ref().map(|r| r.bundle.clone());
            settings.identity_algorithm =
                self.roots.as_ref().map(|r| r.signing).unwrap_or_default();
            settings.auth_policy =
                crate::roots::TrustRoots::effective(self.roots.as_ref(), settings.auth_policy);
            self.publisher.publish(Resource::Mesh(settings));
        }
        for service in std::mem::take(&mut self.dirty) {
            self.rebuild(&service);
        }
        self.publisher.commit()
    }

    /// Where `sub`'s own resources (its pod's inbound services) stand:
    /// the pod it matches now, and whether they may differ from those sent.
    fn own_view(&self, sub: &Subscriber) -> (Option<ObjectKey>, bool) {
        let pod = self.resolve_pod(sub);
        let changed = pod != sub.pod
            || pod
                .as_ref()
                .and_then(|p| self.inbound_version.get(p))
                .is_some_and(|v| *v > sub.position.seen())
            || self
                .consumer_version
                .get(&sub.namespace)
                .is_some_and(|v| *v > sub.position.seen());
        (pod, changed)
    }

    /// The next message for `sub`, or `None` when its view has not changed.
    pub fn update(&self, sub: &mut Subscriber) -> Option<Update> {
        let (pod, own_changed) = self.own_view(sub);
        let update = self.publisher.update(
            &mut sub.position,
            &mut || self.own_of(pod.as_ref(), &sub.namespace),
            own_changed,
        );
        sub.pod = pod;
        update
    }

    /// The next message for `sub` as a control frame (what [`update`]
    /// returns, encoded), and whether it is a delta. Shared resources are
    /// copied from their one encoding.
    ///
    /// [`update`]: Index::update
    pub fn update_frame(&self, sub: &mut Subscriber) -> Option<(Vec<u8>, bool)> {
        self.update_frame_for(sub, phoenix_api::control::WIRE_VERSION)
    }

    /// [`update_frame`] for a proxy speaking `wire_version`: shaped for
    /// it, and a full snapshot instead of a delta for version 1.
    ///
    /// [`update_frame`]: Index::update_frame
    pub fn update_frame_for(
        &self,
        sub: &mut Subscriber,
        wire_version: u32,
    ) -> Option<(Vec<u8>, bool)> {
        let (pod, own_changed) = self.own_view(sub);
        let frame = self.publisher.next_frame(
            &mut sub.position,
            &mut || self.own_of(pod.as_ref(), &sub.namespace),
            own_changed,
            wire_version,
        );
        sub.pod = pod;
        frame
    }

    /// The whole view of `sub` at the current version.
    pub fn snapshot(&self, sub: &mut Subscriber) -> Snapshot {
        sub.resync();
        match self.update(sub) {
            Some(Update::Snapshot(s)) => s,
            // A plan without a held version is always a snapshot.
            _ => Snapshot {
                version: self.version(),
                resources: BTreeMap::new(),
            },
        }
    }

    /// Forgets removals older than `version` (every subscriber has seen
    /// them); a subscriber behind that gets a full snapshot instead.
    pub fn compact(&mut self, version: u64) {
        self.publisher.compact(version);
    }

    /// The conditions to write on the route `id`, per parent Service it
    /// names (its `status.parents[]` under Phoenix's controller name).
    pub fn route_verdicts(
        &self,
        id: &(RouteKind, ObjectKey),
    ) -> Option<Vec<(super::routes::Parent, Vec<Verdict>)>> {
        let route = self.routes.get(id)?;
        let (kind, key) = id;
        let verdict = |type_, ok, reason, message: String| Verdict {
            type_,
            ok,
            reason,
            message,
        };
        let resolved = match &route.rules {
            Err(_) => verdict(
                RESOLVED_REFS,
                false,
                Reason::UnsupportedValue,
                "the spec is not accepted (see Accepted), so its references were not resolved"
                    .into(),
            ),
            Ok(rules) => self.resolve_backends(*kind, &key.namespace, rules),
        };
        let verdicts = route
            .parents
            .iter()
            .map(|parent| {
                let accepted = match &route.rules {
                    Err(error) => verdict(
                        ACCEPTED,
                        false,
                        Reason::UnsupportedValue,
                        format!("{error}; the route applies nowhere until this is fixed"),
                    ),
                    Ok(_) => self.accept_parent(*kind, key, parent),
                };
                (parent.clone(), vec![accepted, resolved.clone()])
            })
            .collect();
        Some(verdicts)
    }

    /// `Accepted` for one parent of a valid route.
    fn accept_parent(
        &self,
        kind: RouteKind,
        key: &ObjectKey,
        parent: &super::routes::Parent,
    ) -> Verdict {
        let service = &parent.service;
        let refuse = |reason, message| Verdict {
            type_: ACCEPTED,
            ok: false,
            reason,
            message,
        };
        let Some(record) = self.services.get(service) else {
            return refuse(
                Reason::NoMatchingParent,
                format!(
                    "Service {} does not exist in namespace {}; the route applies once it does",
                    service.name, service.namespace
                ),
            );
        };
        if let Some(port) = parent.port
            && !record.ports.iter().any(|p| p.port == port)
        {
            return refuse(
                Reason::NoMatchingParent,
                format!("Service {} has no port {port}", service.name),
            );
        }
        // One kind per Service port: a GRPCRoute of the same namespace on
        // a port takes it from an HTTPRoute (as `routes_for` does), port
        // by real port of the Service.
        let mut lost = Vec::new();
        let mut kept = Vec::new();
        let covered = record
            .ports
            .iter()
            .map(|p| p.port)
            .filter(|p| parent.port.is_none_or(|q| q == *p));
        for port in covered {
            let taken = kind == RouteKind::Http
                && self.routes.iter().any(|((k, other), r)| {
                    *k == RouteKind::Grpc
                        && other.namespace == key.namespace
                        && r.rules.is_ok()
                        && r.parents
                            .iter()
                            .any(|p| &p.service == service && p.port.is_none_or(|q| q == port))
                });
            if taken {
                lost.push(port)
            } else {
                kept.push(port)
            }
        }
        let ports = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if kept.is_empty() && !lost.is_empty() {
            return refuse(
                Reason::Conflicted,
                format!(
                    "a GRPCRoute in namespace {} attaches to Service {} on port {} too, and a GRPCRoute takes precedence over an HTTPRoute (GEP-1426)",
                    key.namespace,
                    service.name,
                    ports(&lost)
                ),
            );
        }
        let partly = if lost.is_empty() {
            String::new()
        } else {
            format!(
                "; not on port {} (a GRPCRoute takes precedence there, GEP-1426)",
                ports(&lost)
            )
        };
        let who = if key.namespace == service.namespace {
            "every client (a producer route)".to_owned()
        } else {
            format!("clients in namespace {} (a consumer route)", key.namespace)
        };
        Verdict {
            type_: ACCEPTED,
            ok: true,
            reason: Reason::Accepted,
            message: format!("in force for {who}{partly}"),
        }
    }

    /// `ResolvedRefs` for a valid route's backends.
    fn resolve_backends(&self, kind: RouteKind, namespace: &str, rules: &[RouteRule]) -> Verdict {
        for backend in rules.iter().flat_map(|r| r.backends.iter()) {
            let Some(target) = service_key(&backend.service) else {
                continue;
            };
            if target.namespace != namespace && !self.grant_allows(kind, namespace, &target) {
                return Verdict {
                    type_: RESOLVED_REFS,
                    ok: false,
                    reason: Reason::RefNotPermitted,
                    message: format!(
                        "backendRef {} is in namespace {}: a ReferenceGrant there must allow {} from namespace {namespace}; its share of the requests gets 500",
                        target.name,
                        target.namespace,
                        kind.as_str()
                    ),
                };
            }
            let port = backend.service.port();
            let found = self
                .services
                .get(&target)
                .is_some_and(|s| s.ports.iter().any(|p| Some(p.port) == port));
            if !found {
                return Verdict {
                    type_: RESOLVED_REFS,
                    ok: false,
                    reason: Reason::BackendNotFound,
                    message: format!(
                        "backendRef {}: no Service {} with port {} in namespace {}; its share of the requests gets 500",
                        backend.service,
                        target.name,
                        port.unwrap_or_default(),
                        target.namespace
                    ),
                };
            }
        }
        Verdict {
            type_: RESOLVED_REFS,
            ok: true,
            reason: Reason::ResolvedRefs,
            message: "every backendRef resolves".into(),
        }
    }

    /// The conditions to write on the TrafficPolicy `key`.
    pub fn policy_verdicts(&self, key: &ObjectKey) -> Option<Vec<Verdict>> {
        let policy = self.policies.get(key)?;
        let accepted = match (&policy.invalid, self.winning_policy(&policy.target)) {
            (Some(error), _) => Verdict {
                type_: ACCEPTED,
                ok: false,
                reason: Reason::Invalid,
                message: error.to_string(),
            },
            (None, Some((winner, _))) if winner != key => Verdict {
                type_: ACCEPTED,
                ok: false,
                reason: Reason::Conflicted,
                message: format!(
                    "TrafficPolicy {} is older and already targets Service {}; merge the two",
                    winner.name, policy.target.name
                ),
            },
            _ => Verdict {
                type_: ACCEPTED,
                ok: true,
                reason: Reason::Accepted,
                message: "in force".into(),
            },
        };
        let resolved = if self.services.contains_key(&policy.target) {
            Verdict {
                type_: RESOLVED_REFS,
                ok: true,
                reason: Reason::ResolvedRefs,
                message: format!("Service {} found", policy.target.name),
            }
        } else {
            Verdict {
                type_: RESOLVED_REFS,
                ok: false,
                reason: Reason::ServiceNotFound,
                message: format!(
                    "Service {} does not exist in namespace {}; the policy applies once it does",
                    policy.target.name, policy.target.namespace
                ),
            }
        };
        Some(vec![accepted, resolved])
    }

    /// The conditions to write on the MeshConfig `name`.
    pub fn mesh_config_verdicts(&self, name: &str) -> Option<Vec<Verdict>> {
        let verdict = match &self.mesh_configs.get(name)?.1 {
            Ok(()) => Verdict {
                type_: ACCEPTED,
                ok: true,
                reason: Reason::Accepted,
                message: "in force".into(),
            },
            Err(MeshConfigError::NotDefault) => Verdict {
                type_: ACCEPTED,
                ok: false,
                reason: Reason::NotDefault,
                message: MeshConfigError::NotDefault.to_string(),
            },
            Err(error) => Verdict {
                type_: ACCEPTED,
                ok: false,
                reason: Reason::Invalid,
                message: format!("{error}; the previous settings stay in force"),
            },
        };
        Some(vec![verdict])
    }

    /// Every TrafficPolicy with its generation (for status writing).
    pub fn policies(&self) -> impl Iterator<Item = (&ObjectKey, Option<i64>)> {
        self.policies.iter().map(|(k, p)| (k, p.generation))
    }

    /// Every MeshConfig with its generation (for status writing).
    pub fn mesh_configs(&self) -> impl Iterator<Item = (&String, Option<i64>)> {
        self.mesh_configs.iter().map(|(k, (g, _))| (k, *g))
    }

    /// The pod `sub` runs in: the meshed pod with its IP, if that pod runs
    /// as the subscriber's own identity (an address alone proves nothing).
    fn resolve_pod(&self, sub: &Subscriber) -> Option<ObjectKey> {
        let key = self.pods_by_ip.get(&sub.ip?)?;
        let pod = self.pods.get(key)?;
        (key.namespace == sub.namespace && pod.service_account == sub.service_account)
            .then(|| key.clone())
    }

    /// What is particular to a proxy: its pod's inbound services, and its
    /// namespace's copies of the upstreams its consumer routes attach to.
    fn own_of(&self, pod: Option<&ObjectKey>, namespace: &str) -> BTreeMap<String, Resource> {
        let mut own = pod
            .and_then(|p| self.inbound.get(p))
            .cloned()
            .unwrap_or_default();
        own.extend(self.consumer_of(namespace));
        own
    }

    /// Sets or deletes an HTTPRoute or GRPCRoute.
    pub fn apply_route(&mut self, kind: RouteKind, key: ObjectKey, record: Option<RouteRecord>) {
        let id = (kind, key);
        if self.routes.get(&id) == record.as_ref() {
            return;
        }
        let old = match record {
            Some(r) => self.routes.insert(id.clone(), r),
            None => self.routes.remove(&id),
        };
        let touched: Vec<ObjectKey> = old
            .iter()
            .chain(self.routes.get(&id))
            .flat_map(|r| {
                r.parents
                    .iter()
                    .map(|p| p.service.clone())
                    .chain(r.backends())
            })
            .collect();
        self.dirty.extend(touched);
        let version = self.publisher.touch();
        self.consumer_version.insert(id.1.namespace, version);
    }

    /// Sets or deletes a ReferenceGrant.
    pub fn apply_grant(&mut self, key: ObjectKey, record: Option<GrantRecord>) {
        if self.grants.get(&key) == record.as_ref() {
            return;
        }
        match record {
            Some(r) => self.grants.insert(key, r),
            None => self.grants.remove(&key),
        };
        // Grants are few and change rarely: every route is looked at again.
        let parents: Vec<ObjectKey> = self
            .routes
            .values()
            .flat_map(|r| r.parents.iter().map(|p| p.service.clone()))
            .collect();
        self.dirty.extend(parents);
        let version = self.publisher.touch();
        let namespaces: Vec<String> = self
            .routes
            .keys()
            .map(|(_, k)| k.namespace.clone())
            .collect();
        for ns in namespaces {
            self.consumer_version.insert(ns, version);
        }
    }

    /// Every route with its kind and generation (for status writing).
    pub fn routes(&self) -> impl Iterator<Item = (&(RouteKind, ObjectKey), &RouteRecord)> {
        self.routes.iter()
    }

    /// Why `service` is sent even with no meshed endpoint: the ports valid
    /// producer and consumer routes attach to, and whether a valid route
    /// sends to it. Only a producer route makes every client catch its
    /// address; a consumer route's parent is caught in that namespace's
    /// copies alone, and a refused route changes nothing, so the others'
    /// traffic to a Service without meshed endpoints keeps passing through
    /// as it did.
    fn routed(&self, service: &ObjectKey) -> Routed {
        let valid = || self.routes.iter().filter(|(_, r)| r.rules.is_ok());
        let ports = |producer: bool| {
            valid()
                .filter(|((_, key), _)| (key.namespace == service.namespace) == producer)
                .flat_map(|(_, r)| r.parents.iter())
                .filter(|p| &p.service == service)
                .map(|p| p.port)
                .collect()
        };
        Routed {
            producer_ports: ports(true),
            consumer_ports: ports(false),
            backend: valid().any(|(_, r)| r.backends().any(|b| &b == service)),
        }
    }

    /// The routes a client in `client_ns` follows to port `port` of
    /// `service`, oldest first, by GAMMA's rules: the routes in its own
    /// namespace (consumer routes) when it has any for the service, else
    /// those in the service's namespace (producer routes). A route in any
    /// other namespace applies to no one there. One kind per port:
    /// GRPCRoutes before HTTPRoutes (GEP-1426; the HTTPRoutes' status says
    /// so).
    fn routes_for(&self, service: &ObjectKey, port: u16, client_ns: &str) -> Vec<Route> {
        let attached: Vec<(&(RouteKind, ObjectKey), &RouteRecord, &Vec<RouteRule>)> = self
            .routes
            .iter()
            .filter_map(|(id, r)| Some((id, r, r.rules.as_ref().ok()?)))
            .filter(|(_, r, _)| {
                r.parents
                    .iter()
                    .any(|p| &p.service == service && p.port.is_none_or(|q| q == port))
            })
            .collect();
        let consumer = client_ns != service.namespace
            && attached.iter().any(|(id, ..)| id.1.namespace == client_ns);
        let namespace = if consumer {
            client_ns
        } else {
            service.namespace.as_str()
        };
        let mut chosen: Vec<_> = attached
            .into_iter()
            .filter(|(id, ..)| id.1.namespace == namespace)
            .collect();
        // The spec's tie-break: older first, then by namespace and name.
        chosen.sort_by(|a, b| {
            (a.1.created, &a.0.1.namespace, &a.0.1.name).cmp(&(
                b.1.created,
                &b.0.1.namespace,
                &b.0.1.name,
            ))
        });
        // One kind per Service port, GRPCRoute before HTTPRoute (GEP-1426,
        // as Linkerd does); the HTTPRoutes' status says `Conflicted`.
        let kind = if chosen.iter().any(|(id, ..)| id.0 == RouteKind::Grpc) {
            RouteKind::Grpc
        } else {
            RouteKind::Http
        };
        chosen
            .into_iter()
            .filter(|(id, ..)| id.0 == kind)
            .map(|((kind, key), _, rules)| Route {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                kind: *kind,
                rules: self.granted(*kind, &key.namespace, rules),
            })
            .collect()
    }

    /// `rules` with every backend in another namespace that no
    /// ReferenceGrant there lets a `kind` route in `namespace` reach
    /// replaced by one no proxy knows (its share gets 500).
    fn granted(&self, kind: RouteKind, namespace: &str, rules: &[RouteRule]) -> Vec<RouteRule> {
        let mut rules = rules.to_vec();
        for backend in rules.iter_mut().flat_map(|r| r.backends.iter_mut()) {
            let Some(target) = service_key(&backend.service) else {
                continue;
            };
            if target.namespace != namespace && !self.grant_allows(kind, namespace, &target) {
                match ServiceName::new(UNRESOLVED_BACKEND, None) {
                    Ok(unresolved) => backend.service = unresolved,
                    // Cannot happen (a constant name); should it, the
                    // backend takes no request rather than one not allowed.
                    Err(_) => backend.weight = 0,
                }
            }
        }
        rules
    }

    /// Whether a ReferenceGrant in `target`'s namespace lets a `kind`
    /// route in `namespace` send to it.
    pub fn grant_allows(&self, kind: RouteKind, namespace: &str, target: &ObjectKey) -> bool {
        self.grants
            .iter()
            .filter(|(k, _)| k.namespace == target.namespace)
            .any(|(_, g)| g.allows(kind, namespace, &target.name))
    }

    /// The upstreams `namespace`'s consumer routes change, as its proxies
    /// get them: the shared upstream with the consumer routes in place of
    /// the producer routes.
    fn consumer_of(&self, namespace: &str) -> BTreeMap<String, Resource> {
        let services: BTreeSet<&ObjectKey> = self
            .routes
            .iter()
            .filter(|((_, key), r)| key.namespace == namespace && r.rules.is_ok())
            .flat_map(|(_, r)| r.parents.iter().map(|p| &p.service))
            .filter(|s| s.namespace != namespace)
            .collect();
        let mut own = BTreeMap::new();
        for service in services {
            for key in self.keys_by_service.get(service).into_iter().flatten() {
                let Some(Resource::Upstream(shared)) = self.publisher.get(key) else {
                    continue;
                };
                let Some(port) = shared.service.port() else {
                    continue;
                };
                let mut upstream = shared.clone();
                upstream.routes = self.routes_for(service, port, namespace);
                // A parent sent without its address (no meshed endpoint, no
                // producer route) is caught by its ClusterIP here, where
                // routes apply to it.
                if upstream.addresses.is_empty()
                    && !upstream.routes.is_empty()
                    && let Some(record) = self.services.get(service)
                {
                    upstream.addresses = record
                        .cluster_ips
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, port))
                        .collect();
                }
                own.insert(key.clone(), Resource::Upstream(upstream));
            }
        }
        own
    }

    fn winning_policy(&self, service: &ObjectKey) -> Option<(&ObjectKey, &PolicyRecord)> {
        self.policies_by_service
            .get(service)?
            .iter()
            .filter_map(|k| Some((k, self.policies.get(k)?)))
            .filter(|(_, p)| p.invalid.is_none())
            .min_by(|a, b| a.1.age.cmp(&b.1.age))
    }

    fn audience(&self, service: &ObjectKey) -> Audience {
        if let Some(audience) = self
            .winning_policy(service)
            .and_then(|(_, p)| p.audience.clone())
        {
            return audience;
        }
        let default = self
            .namespaces
            .get(&service.namespace)
            .and_then(|n| n.default_policy)
            .unwrap_or(self.mesh.default_policy);
        Audience::from_default(default, &service.namespace)
    }

    /// The meshed pod behind an endpoint address.
    fn meshed_pod(
        &self,
        by_ref: Option<&ObjectKey>,
        ip: IpAddr,
    ) -> Option<(&ObjectKey, &PodRecord)> {
        let key = match by_ref {
            Some(k) => k,
            None => self.pods_by_ip.get(&ip)?,
        };
        let (key, pod) = self.pods.get_key_value(key)?;
        // A slice naming a pod at an address it no longer has is stale.
        pod.ips.contains(&ip).then_some((key, pod))
    }

    /// Rebuilds the upstreams of `service` and the inbound entries of its pods.
    fn rebuild(&mut self, service: &ObjectKey) {
        let consumers = self.consumers_of(service);
        let shared_before = if consumers.is_empty() {
            Vec::new()
        } else {
            self.shared_upstreams(service)
        };
        let audience = self.audience(service);
        let policy = self.winning_policy(service).map(|(_, p)| p);
        let millis = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
        let connect_timeout_ms = millis(policy.and_then(|p| p.connect_timeout));
        let idle_timeout_ms = millis(policy.and_then(|p| p.idle_timeout));
        let request_timeout_ms = millis(policy.and_then(|p| p.request_timeout));
        let retry = policy.and_then(|p| p.retry.clone());
        let allow = audience.allow_list(&self.trust_domain);
        let td = self.trust_domain.clone();
        let routed = self.routed(service);
        let mut upstreams = Vec::new();
        let mut pod_inbound: BTreeMap<ObjectKey, Vec<Resource>> = BTreeMap::new();
        if let Some(record) = self.services.get(service) {
            let slices: Vec<&SliceRecord> = self
                .slices_by_service
                .get(service)
                .into_iter()
                .flatten()
                .filter_map(|k| self.slices.get(k))
                .collect();
            for port in &record.ports {
                // The one grammar of service names (phoenix_api::service):
                // what the tunnel header carries. The API server's own
                // validation of names makes a refusal impossible for a real
                // Service; one that slips through is left out, loudly.
                let name = match ServiceName::kubernetes(
                    &service.name,
                    &service.namespace,
                    port.port,
                ) {
                    Ok(name) => name,
                    Err(error) => {
                        tracing::warn!(service = %service.name, namespace = %service.namespace, port = port.port, %error, "Service port left out of the mesh: its name is not a mesh service name");
                        continue;
                    }
                };
                // One endpoint per pod: a dual-stack Service has a slice per
                // family, and the pod's proxy is reached (and serves) on its
                // primary IP's family; another family is used only when the
                // Service has no slice in the primary one. The pod's other
                // addresses go along, so a connection dialled to any of
                // them is known to be this pod's.
                // The TrafficPolicy's, else the port's appProtocol, else the
                // port's default (opaque for the default opaque ports).
                let protocol = policy
                    .and_then(|p| p.protocol)
                    .or(port.protocol)
                    .unwrap_or_else(|| Protocol::default_for_port(port.port));
                let mut chosen: BTreeMap<&ObjectKey, (IpAddr, u16, bool, bool, &PodRecord)> =
                    BTreeMap::new();
                for slice in &slices {
                    let Some(&(_, target_port)) = slice.ports.iter().find(|(n, _)| *n == port.name)
                    else {
                        continue;
                    };
                    for endpoint in &slice.endpoints {
                        for ip in &endpoint.addresses {
                            let Some((pod_key, pod)) = self.meshed_pod(endpoint.pod.as_ref(), *ip)
                            else {
                                continue;
                            };
                            let primary = pod.ips.first() == Some(ip);
                            let seen_primary = chosen
                                .get(pod_key)
                                .is_some_and(|(c, ..)| pod.ips.first() == Some(c));
                            if !seen_primary && (primary || !chosen.contains_key(pod_key)) {
                                chosen.insert(
                                    pod_key,
                                    (
                                        *ip,
                                        target_port,
                                        endpoint.ready,
                                        endpoint.serving_terminating,
                                        pod,
                                    ),
                                );
                            }
                        }
                    }
                }
                let mut ready = BTreeSet::new();
                let mut terminating = BTreeSet::new();
                for (pod_key, (ip, target_port, is_ready, is_terminating, pod)) in chosen {
                    let other_ips: Vec<IpAddr> =
                        pod.ips.iter().copied().filter(|o| *o != ip).collect();
                    pod_inbound
                        .entry(pod_key.clone())
                        .or_default()
                        .push(Resource::Inbound(Inbound {
                            service: name.clone(),
                            target: SocketAddr::new(ip, target_port),
                            other_ips: other_ips.clone(),
                            allow: allow.clone(),
                            inbound_mode: policy.and_then(|p| p.inbound_mode),
                            protocol,
                        }));
                    let e = Endpoint {
                        address: SocketAddr::new(ip, pod.quic_port),
                        identity: format!(
                            "spiffe://{td}/ns/{}/sa/{}",
                            pod_key.namespace, pod.service_account
                        ),
                        other_ips,
                    };
                    if is_ready {
                        ready.insert(e);
                    } else if is_terminating {
                        terminating.insert(e);
                    }
                }
                let endpoints = if ready.is_empty() { terminating } else { ready };
                // A Service with no meshed endpoint is not sent, unless a
                // route needs it: a parent is caught by its ClusterIP and
                // routed; a backend alone is reached only by routes (not by
                // its address, whose traffic stays as it is), and its share
                // of the requests gets 503, as the spec asks.
                let mut addresses: Vec<SocketAddr> = record
                    .cluster_ips
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port.port))
                    .collect();
                if endpoints.is_empty() {
                    let on = |ports: &BTreeSet<Option<u16>>| {
                        ports.contains(&None) || ports.contains(&Some(port.port))
                    };
                    // A consumer parent is sent without its address: only
                    // its namespace's copies catch it (`consumer_of`).
                    match (
                        on(&routed.producer_ports),
                        routed.backend || on(&routed.consumer_ports),
                    ) {
                        (true, _) => {}
                        (false, true) => addresses.clear(),
                        (false, false) => continue,
                    }
                }
                let routes = self.routes_for(service, port.port, &service.namespace);
                upstreams.push(Resource::Upstream(Upstream {
                    service: name,
                    listen: None,
                    addresses,
                    endpoints: endpoints.into_iter().collect(),
                    connect_timeout_ms,
                    idle_timeout_ms,
                    protocol,
                    request_timeout_ms,
                    retry: retry.clone(),
                    routes,
                }));
            }
        }
        let new_keys: Vec<String> = upstreams.iter().map(Resource::key).collect();
        for old in self.keys_by_service.remove(service).unwrap_or_default() {
            if !new_keys.contains(&old) {
                self.publisher.unpublish(&old);
            }
        }
        for resource in upstreams {
            self.publisher.publish(resource);
        }
        if !new_keys.is_empty() {
            self.keys_by_service.insert(service.clone(), new_keys);
        }

        // Inbound: the pods that served this Service before or serve it now.
        let prefix = format!("inbound/{}.{}:", service.name, service.namespace);
        let before = self.pods_by_service.remove(service).unwrap_or_default();
        let now: BTreeSet<ObjectKey> = pod_inbound.keys().cloned().collect();
        for pod in before.union(&now) {
            let entries = self.inbound.entry(pod.clone()).or_default();
            let old: BTreeMap<String, Resource> = entries
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let new: BTreeMap<String, Resource> = pod_inbound
                .get(pod)
                .into_iter()
                .flatten()
                .map(|r| (r.key(), r.clone()))
                .collect();
            if old != new {
                entries.retain(|k, _| !k.starts_with(&prefix));
                entries.extend(new);
                if entries.is_empty() {
                    self.inbound.remove(pod);
                }
                let version = self.publisher.touch();
                self.inbound_version.insert(pod.clone(), version);
            }
        }
        if !now.is_empty() {
            self.pods_by_service.insert(service.clone(), now);
        }
        // Namespaces whose consumer routes attach here hold copies of
        // these upstreams: theirs change with them (and only then).
        if !consumers.is_empty() && self.shared_upstreams(service) != shared_before {
            let version = self.publisher.touch();
            for ns in consumers {
                self.consumer_version.insert(ns, version);
            }
        }
    }

    /// The namespaces whose consumer routes attach to `service`.
    fn consumers_of(&self, service: &ObjectKey) -> BTreeSet<String> {
        self.routes
            .iter()
            .filter(|((_, key), r)| {
                key.namespace != service.namespace
                    && r.parents.iter().any(|p| &p.service == service)
            })
            .map(|((_, key), _)| key.namespace.clone())
            .collect()
    }

    /// The shared upstreams of `service`, as published now.
    fn shared_upstreams(&self, service: &ObjectKey) -> Vec<(String, Option<Resource>)> {
        self.keys_by_service
            .get(service)
            .into_iter()
            .flatten()
            .map(|k| (k.clone(), self.publisher.get(k).cloned()))
            .collect()
    }

    fn remember_refs(&mut self, slice: &SliceRecord) {
        for e in &slice.endpoints {
            match &e.pod {
                Some(pod) => {
                    *self
                        .services_by_pod
                        .entry(pod.clone())
                        .or_default()
                        .entry(slice.service.clone())
                        .or_default() += 1
                }
                None => {
                    for ip in &e.addresses {
                        *self
                            .services_by_ip
                            .entry(*ip)
                            .or_default()
                            .entry(slice.service.clone())
                            .or_default() += 1;
                    }
                }
            }
        }
    }

    fn forget_refs(&mut self, slice: &SliceRecord) {
        fn dec<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, BTreeMap<ObjectKey, u32>>,
            key: &K,
            service: &ObjectKey,
        ) {
            if let Some(m) = map.get_mut(key) {
                if let Some(n) = m.get_mut(service) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(service);
                    }
                }
                if m.is_empty() {
                    map.remove(key);
                }
            }
        }
        for e in &slice.endpoints {
            match &e.pod {
                Some(pod) => dec(&mut self.services_by_pod, pod, &slice.service),
                None => {
                    for ip in &e.addresses {
                        dec(&mut self.services_by_ip, ip, &slice.service);
                    }
                }
            }
        }
    }
}
