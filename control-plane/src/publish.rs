//! The publish side of the control plane, shared by both sources (the mesh
//! file and Kubernetes): resources every proxy is sent, a change log keyed
//! by version, each subscriber's position in it, and the next message for a
//! subscriber as a delta (or a full snapshot) encoded for its wire version.
//!
//! A source decides *what* the config is; this decides *how it reaches
//! proxies*. Shared resources (the mesh settings; in Kubernetes mode every
//! Service) are encoded once per wire shape, so a change sent to 5,000
//! proxies is serialized once and a full snapshot is concatenation. What is
//! particular to one proxy (its inbound services; in file mode, the
//! upstreams it calls through its own listeners) is the source's "own" view
//! of it, diffed against what that proxy was last sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use phoenix_api::compat::{Compat, Encodings};
use phoenix_api::frame::{Direction, FrameWriter};
use phoenix_api::snapshot::{Delta, Resource, Snapshot};

/// A resource every subscriber shares, with its encodings.
#[derive(Debug)]
struct Published {
    resource: Arc<Resource>,
    encodings: Encodings,
}

/// One upsert of a plan: a shared resource, or one of the proxy's own.
enum Item<'a> {
    Shared(&'a Published),
    // Boxed: a resource is large next to a reference.
    Own(Box<Resource>),
}

/// What a subscriber is sent next, before it is materialized or encoded.
struct Plan<'a> {
    /// `None`: a full snapshot; `Some(v)`: a delta from `v`.
    from: Option<u64>,
    upserts: Vec<(String, Item<'a>)>,
    removals: Vec<String>,
}

/// What a proxy is sent next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Everything (first message, or the proxy fell too far behind).
    Snapshot(Snapshot),
    /// What changed since the version it holds.
    Delta(Delta),
}

/// Where one subscriber stands: what it holds and how far it has looked.
#[derive(Debug, Clone, Default)]
pub struct Position {
    /// The version the proxy holds.
    sent: Option<u64>,
    /// How far in the log this subscriber has looked.
    seen: u64,
    /// Its own resources, as last sent.
    own: BTreeMap<String, Resource>,
}

impl Position {
    /// The log version it has caught up to.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Makes the next message a full snapshot.
    pub fn resync(&mut self) {
        self.sent = None;
    }
}

/// The shared resources, their change log and the version.
#[derive(Debug)]
pub struct Publisher {
    published: HashMap<String, Published>,
    /// `(version, key)` of the last change of each key; a key absent from
    /// `published` was removed at that version.
    log: BTreeSet<(u64, String)>,
    log_version: HashMap<String, u64>,
    version: u64,
    /// Log entries before this version may be gone: older subscribers get a
    /// full snapshot.
    oldest: u64,
    /// Something changed since the last commit.
    changed: bool,
}

impl Publisher {
    /// An empty publisher whose first commit gets version `start + 1`.
    pub fn new(start: u64) -> Self {
        Self {
            published: HashMap::new(),
            log: BTreeSet::new(),
            log_version: HashMap::new(),
            version: start,
            oldest: 0,
            changed: false,
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version the next commit gets: changes made now are logged at it.
    pub fn pending(&self) -> u64 {
        self.version + 1
    }

    /// Number of shared resources.
    pub fn len(&self) -> usize {
        self.published.len()
    }

    /// Whether there is no shared resource.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty()
    }

    /// The shared resource under `key`.
    pub fn get(&self, key: &str) -> Option<&Resource> {
        self.published.get(key).map(|p| &*p.resource)
    }

    /// Shares `resource` with every subscriber from the next version (no
    /// change if it is already shared as it is).
    pub fn publish(&mut self, resource: Resource) {
        let key = resource.key();
        if self.get(&key) == Some(&resource) {
            return;
        }
        let encodings = Encodings::new(&Compat::CURRENT, &resource).unwrap_or_else(|error| {
            tracing::error!(%error, %key, "cannot encode a config resource; proxies refuse the messages that carry it");
            Encodings::unreadable()
        });
        let resource = Arc::new(resource);
        self.published.insert(
            key.clone(),
            Published {
                resource,
                encodings,
            },
        );
        self.log_change(key);
    }

    /// Stops sharing `key` from the next version.
    pub fn unpublish(&mut self, key: &str) {
        if self.published.remove(key).is_some() {
            self.log_change(key.to_owned());
        }
    }

    /// Records a change to some subscriber's own view: the next commit makes
    /// a version. Returns that version.
    pub fn touch(&mut self) -> u64 {
        self.changed = true;
        self.pending()
    }

    fn log_change(&mut self, key: String) {
        let version = self.pending();
        if let Some(old) = self.log_version.insert(key.clone(), version) {
            self.log.remove(&(old, key.clone()));
        }
        self.log.insert((version, key));
        self.changed = true;
    }

    /// Makes the changes since the last commit a version; `None` when there
    /// were none.
    pub fn commit(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.changed) {
            self.version += 1;
            Some(self.version)
        } else {
            None
        }
    }

    /// Forgets removals older than `version` (every subscriber has seen
    /// them); a subscriber behind that gets a full snapshot instead.
    pub fn compact(&mut self, version: u64) {
        let stale: Vec<(u64, String)> = self
            .log
            .range(..(version, String::new()))
            .filter(|(_, key)| !self.published.contains_key(key))
            .cloned()
            .collect();
        for entry in stale {
            self.log_version.remove(&entry.1);
            self.log.remove(&entry);
        }
        self.oldest = self.oldest.max(version);
    }

    /// Plans the next message for `position`. `own` gives the subscriber's
    /// own resources now; it is asked for on a full snapshot, or when
    /// `own_changed` says they may differ from what was sent.
    fn plan(
        &self,
        position: &mut Position,
        own: &mut dyn FnMut() -> BTreeMap<String, Resource>,
        own_changed: bool,
    ) -> Option<Plan<'_>> {
        let Some(sent) = position.sent.filter(|_| position.seen >= self.oldest) else {
            position.own = own();
            // An own resource stands in for the shared one of its key.
            let mut upserts: Vec<(String, Item<'_>)> = self
                .published
                .iter()
                .filter(|(k, _)| !position.own.contains_key(*k))
                .map(|(k, p)| (k.clone(), Item::Shared(p)))
                .collect();
            upserts.extend(
                position
                    .own
                    .iter()
                    .map(|(k, r)| (k.clone(), Item::Own(Box::new(r.clone())))),
            );
            position.seen = self.version;
            position.sent = Some(self.version);
            return Some(Plan {
                from: None,
                upserts,
                removals: vec![],
            });
        };
        if position.seen == self.version && !own_changed {
            return None;
        }
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let previous = if own_changed {
            Some(std::mem::replace(&mut position.own, own()))
        } else {
            None
        };
        // Shared changes, except under keys the subscriber has its own
        // resource for (that one stands in for the shared one).
        for (_, key) in self.log.range((position.seen + 1, String::new())..) {
            if position.own.contains_key(key) {
                continue;
            }
            match self.published.get(key) {
                Some(p) => upserts.push((key.clone(), Item::Shared(p))),
                _ => removals.push(key.clone()),
            }
        }
        if let Some(previous) = previous {
            for (key, resource) in &position.own {
                if previous.get(key) != Some(resource) {
                    upserts.push((key.clone(), Item::Own(Box::new(resource.clone()))));
                }
            }
            for key in previous.keys().filter(|k| !position.own.contains_key(*k)) {
                // An own resource gone: the shared one of its key (if any)
                // takes its place again, unless the log already sent it.
                match self.published.get(key) {
                    Some(p) => {
                        if !upserts.iter().any(|(k, _)| k == key) {
                            upserts.push((key.clone(), Item::Shared(p)));
                        }
                    }
                    None => {
                        if !removals.contains(key) {
                            removals.push(key.clone());
                        }
                    }
                }
            }
        }
        position.seen = self.version;
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        position.sent = Some(self.version);
        Some(Plan {
            from: Some(sent),
            upserts,
            removals,
        })
    }

    /// The next message for `position`, or `None` when its view has not
    /// changed (see [`Publisher::next_frame`] for `own`).
    pub fn update(
        &self,
        position: &mut Position,
        own: &mut dyn FnMut() -> BTreeMap<String, Resource>,
        own_changed: bool,
    ) -> Option<Update> {
        let plan = self.plan(position, own, own_changed)?;
        let owned = |item: Item<'_>| match item {
            Item::Shared(p) => (*p.resource).clone(),
            Item::Own(r) => *r,
        };
        let upserts: BTreeMap<String, Resource> = plan
            .upserts
            .into_iter()
            .map(|(k, item)| (k, owned(item)))
            .collect();
        Some(match plan.from {
            None => Update::Snapshot(Snapshot {
                version: self.version,
                resources: upserts,
            }),
            Some(from) => Update::Delta(Delta {
                from_version: from,
                version: self.version,
                upserts,
                removals: plan.removals,
            }),
        })
    }

    /// The next message for `position` as a control frame for a proxy
    /// speaking `wire_version`, and whether it is a delta; `None` when its
    /// view has not changed. `own` gives the subscriber's own resources now,
    /// asked for on a full snapshot or when `own_changed`. Shared resources
    /// are copied from their one encoding for that version's shape.
    pub fn next_frame(
        &self,
        position: &mut Position,
        own: &mut dyn FnMut() -> BTreeMap<String, Resource>,
        own_changed: bool,
        wire_version: u32,
    ) -> Option<(Vec<u8>, bool)> {
        let mut plan = self.plan(position, own, own_changed)?;
        if plan.from.is_some() && !Compat::CURRENT.sends_deltas(wire_version) {
            // Version 1 reads full snapshots only.
            position.resync();
            plan = self.plan(position, own, true)?;
        }
        let mut out = FrameWriter::new(Direction::Response, 64 + plan.upserts.len() * 512);
        let version = self.version;
        match plan.from {
            None => out.extend_from_slice(
                format!(r#"{{"type":"snapshot","version":{version},"resources":{{"#).as_bytes(),
            ),
            Some(from) => out.extend_from_slice(
                format!(
                    r#"{{"type":"delta","fromVersion":{from},"version":{version},"upserts":{{"#
                )
                .as_bytes(),
            ),
        }
        let mut first = true;
        for (key, item) in &plan.upserts {
            // `None`: a kind this proxy's version is not sent.
            let own;
            let json = match item {
                Item::Shared(p) => p.encodings.get(wire_version),
                Item::Own(r) => {
                    own = encode_for(r, wire_version);
                    own.as_deref()
                }
            };
            let Some(json) = json else { continue };
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            push_json_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(json.as_bytes());
        }
        out.push(b'}');
        if plan.from.is_some() {
            out.extend_from_slice(br#","removals":["#);
            for (i, key) in plan.removals.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_string(&mut out, key);
            }
            out.push(b']');
        }
        out.push(b'}');
        match out.finish() {
            Ok(frame) => Some((frame, plan.from.is_some())),
            Err(error) => {
                // Over the proxy's limit: sending it would only be refused.
                tracing::error!(%error, "a proxy's config does not fit in one control frame; narrow what it may reach (TrafficPolicy allow-lists, defaultPolicy)");
                None
            }
        }
    }
}

/// A resource's JSON for a proxy speaking `wire_version`; `None` when that
/// version is not sent its kind. These types always serialize; should one
/// ever fail, `null` makes the proxy refuse the message rather than run
/// half a config.
fn encode_for(resource: &Resource, wire_version: u32) -> Option<String> {
    Compat::CURRENT
        .encode_resource(resource, wire_version)
        .unwrap_or_else(|_| Some("null".to_owned()))
}

fn push_json_string(out: &mut FrameWriter, s: &str) {
    // Keys are resource keys: serde_json escapes them as any string.
    match serde_json::to_string(s) {
        Ok(quoted) => out.extend_from_slice(quoted.as_bytes()),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_api::control::{Response, decode_body};
    use phoenix_api::snapshot::{Endpoint, Upstream};

    fn upstream(service: &str, port: u16) -> Resource {
        Resource::Upstream(Upstream {
            service: service.parse().unwrap(),
            listen: None,
            addresses: vec![],
            connect_timeout_ms: None,
            idle_timeout_ms: None,
            endpoints: vec![Endpoint {
                address: ([127, 0, 0, 1], port).into(),
                identity: "spiffe://td/ns/default/sa/db".into(),
                other_ips: vec![],
            }],
            protocol: Default::default(),
            request_timeout_ms: None,
            retry: None,
            routes: Vec::new(),
        })
    }

    fn read(frame: &[u8]) -> Response {
        decode_body(&frame[4..]).unwrap()
    }

    #[test]
    fn a_subscriber_gets_a_snapshot_then_only_what_changed() {
        let mut p = Publisher::new(10);
        p.publish(upstream("a", 1));
        p.publish(upstream("b", 2));
        assert_eq!(p.commit(), Some(11));
        let mut pos = Position::default();
        let mut own = || BTreeMap::new();
        let (frame, delta) = p.next_frame(&mut pos, &mut own, false, 5).unwrap();
        assert!(!delta);
        let Response::Snapshot(s) = read(&frame) else {
            panic!()
        };
        assert_eq!((s.version, s.resources.len()), (11, 2));
        assert!(
            p.next_frame(&mut pos, &mut own, false, 5).is_none(),
            "nothing new"
        );

        p.publish(upstream("a", 1));
        assert_eq!(p.commit(), None, "publishing what is there is no change");
        p.publish(upstream("a", 3));
        p.unpublish("upstream/b");
        assert_eq!(p.commit(), Some(12));
        let (frame, delta) = p.next_frame(&mut pos, &mut own, false, 5).unwrap();
        assert!(delta);
        let Response::Delta(d) = read(&frame) else {
            panic!()
        };
        assert_eq!(d.from_version, 11);
        assert_eq!(d.upserts.keys().collect::<Vec<_>>(), vec!["upstream/a"]);
        assert_eq!(d.removals, vec!["upstream/b".to_owned()]);
        // The typed path agrees with the encoded one.
        let mut typed = Position::default();
        let Some(Update::Snapshot(s)) = p.update(&mut typed, &mut own, false) else {
            panic!()
        };
        assert_eq!(s.resources.len(), 1);
    }

    #[test]
    fn own_resources_are_diffed_against_what_was_sent() {
        let mut p = Publisher::new(0);
        p.touch();
        p.commit();
        let mut pos = Position::default();
        let mut mine = BTreeMap::from([("upstream/x".to_owned(), upstream("x", 1))]);
        let (frame, _) = p
            .next_frame(&mut pos, &mut || mine.clone(), false, 5)
            .unwrap();
        assert!(matches!(read(&frame), Response::Snapshot(s) if s.resources.len() == 1));
        mine.insert("upstream/y".into(), upstream("y", 2));
        mine.remove("upstream/x");
        p.touch();
        p.commit();
        let (frame, _) = p
            .next_frame(&mut pos, &mut || mine.clone(), true, 5)
            .unwrap();
        let Response::Delta(d) = read(&frame) else {
            panic!()
        };
        assert_eq!(d.upserts.keys().collect::<Vec<_>>(), vec!["upstream/y"]);
        assert_eq!(d.removals, vec!["upstream/x".to_owned()]);
    }

    /// What a consumer route does to one namespace's proxies: their own
    /// copy of a shared upstream stands in for it, shared changes to that
    /// key stop reaching them, and the shared one comes back when the
    /// own copy goes.
    #[test]
    fn an_own_resource_stands_in_for_the_shared_one_of_its_key() {
        let mut p = Publisher::new(0);
        p.publish(upstream("a", 1));
        p.publish(upstream("b", 2));
        p.commit();
        let mut pos = Position::default();
        let mut mine = BTreeMap::from([("upstream/a".to_owned(), upstream("a", 9))]);
        let Some(Update::Snapshot(s)) = p.update(&mut pos, &mut || mine.clone(), false) else {
            panic!("a snapshot first")
        };
        assert_eq!(s.resources.len(), 2, "one resource per key");
        assert_eq!(s.resources["upstream/a"], upstream("a", 9), "its own copy");
        // A shared change under the key is not sent over the own copy.
        p.publish(upstream("a", 3));
        p.commit();
        assert_eq!(p.update(&mut pos, &mut || mine.clone(), false), None);
        // The own copy goes: the shared one (as it is now) takes its place.
        mine.clear();
        p.touch();
        p.commit();
        let Some(Update::Delta(d)) = p.update(&mut pos, &mut || mine.clone(), true) else {
            panic!("a delta")
        };
        assert_eq!(d.upserts.len(), 1);
        assert_eq!(d.upserts["upstream/a"], upstream("a", 3));
        assert!(d.removals.is_empty(), "{:?}", d.removals);
        // An own copy of a key nobody shares is removed outright.
        mine.insert("upstream/z".into(), upstream("z", 4));
        p.touch();
        p.commit();
        p.update(&mut pos, &mut || mine.clone(), true).unwrap();
        mine.clear();
        p.touch();
        p.commit();
        let Some(Update::Delta(d)) = p.update(&mut pos, &mut || mine.clone(), true) else {
            panic!("a delta")
        };
        assert!(d.upserts.is_empty());
        assert_eq!(d.removals, vec!["upstream/z".to_owned()]);
    }

    #[test]
    fn version_one_gets_a_full_snapshot_instead_of_a_delta() {
        let mut p = Publisher::new(0);
        p.publish(upstream("a", 1));
        p.commit();
        let mut pos = Position::default();
        let mut own = || BTreeMap::new();
        p.next_frame(&mut pos, &mut own, false, 1).unwrap();
        p.publish(upstream("b", 2));
        p.commit();
        let (frame, delta) = p.next_frame(&mut pos, &mut own, false, 1).unwrap();
        assert!(!delta);
        assert!(matches!(read(&frame), Response::Snapshot(s) if s.resources.len() == 2));
    }

    #[test]
    fn a_subscriber_behind_compacted_history_gets_a_full_snapshot() {
        let mut p = Publisher::new(0);
        p.publish(upstream("a", 1));
        p.commit();
        let mut pos = Position::default();
        let mut own = || BTreeMap::new();
        p.next_frame(&mut pos, &mut own, false, 5).unwrap();
        p.unpublish("upstream/a");
        let v = p.commit().unwrap();
        p.compact(v + 1);
        let (_, delta) = p.next_frame(&mut pos, &mut own, false, 5).unwrap();
        assert!(!delta, "the removal is forgotten: a snapshot, not a delta");
    }
}
