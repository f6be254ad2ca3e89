//! Wire compatibility: what each control-protocol version added, in one
//! table, and how a message is shaped for a proxy that speaks an older one.
//!
//! The control plane is upgraded before the proxies, so it always serves the
//! versions of the proxies still running ([`MIN_WIRE_VERSION`] to
//! [`WIRE_VERSION`]). Proxies up to version 4 read snapshots strictly: a
//! field or resource kind they do not know fails the whole message, so the
//! control plane strips what came later, guided by [`CHANGES`]. From version
//! 5 on, proxies ignore fields and resource kinds they do not know, so a row
//! forgotten here costs an old proxy nothing it could have used. What a proxy
//! must understand to be safe is not additive and needs a new version with a
//! real downgrade (or a refusal), not a row.
//!
//! Shaping works on the JSON form, not on the types: the types only know the
//! newest shape, while a row here stays true for as long as its version is
//! served. [`frozen`] keeps each served version's types, read as those
//! proxies read them, for the tests that hold this table to account.

use std::sync::Arc;

use serde_json::Value;

use crate::control::Response;
use crate::frame::{Direction, FrameError, FrameWriter, encode_frame};
use crate::snapshot::Resource;

pub mod frozen;

/// The wire version this build speaks.
pub const WIRE_VERSION: u32 = 10;
/// The oldest wire version a control plane still serves.
pub const MIN_WIRE_VERSION: u32 = 1;

/// What one wire version added to the control protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addition {
    /// Deltas after the first snapshot; earlier proxies get a full snapshot
    /// on every change.
    Deltas,
    /// Readers ignore fields and resource kinds they do not know.
    TolerantReaders,
    /// An optional field of one resource kind. `path` goes from the resource
    /// to the field; `"*"` stands for every element of an array.
    Field {
        /// The resource's `kind` tag.
        kind: &'static str,
        /// Field names (camelCase, as on the wire) down to the field.
        path: &'static [&'static str],
    },
    /// A resource kind (its `kind` tag): older proxies are not sent it.
    Kind(&'static str),
    /// UDP services (`service` ending in `/udp`) on upstreams and inbound
    /// services. Not additive: a proxy from before them parses the name but
    /// would carry the service as TCP (listen on TCP, dial the app over
    /// TCP), so older proxies are not sent those resources at all.
    UdpServices,
}

/// One row of the table: an addition and the version that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The first wire version with the addition.
    pub version: u32,
    /// What was added.
    pub addition: Addition,
}

const fn change(version: u32, addition: Addition) -> Change {
    Change { version, addition }
}

const fn field(kind: &'static str, path: &'static [&'static str]) -> Addition {
    Addition::Field { kind, path }
}

/// Every change since version 1, oldest first. Adding a field or a kind to
/// the snapshot types means adding its row here, and its version's copy in
/// [`frozen`].
pub const CHANGES: &[Change] = &[
    change(2, Addition::Deltas),
    change(3, field("mesh", &["inboundMode"])),
    change(3, field("mesh", &["trustBundlePem"])),
    change(3, field("inbound", &["inboundMode"])),
    change(4, field("upstream", &["endpoints", "*", "otherIps"])),
    change(4, field("inbound", &["otherIps"])),
    change(5, Addition::TolerantReaders),
    change(6, field("upstream", &["protocol"])),
    change(6, field("inbound", &["protocol"])),
    change(7, field("upstream", &["requestTimeoutMs"])),
    change(7, field("upstream", &["retry"])),
    change(8, field("mesh", &["identityAlgorithm"])),
    change(8, field("mesh", &["authPolicy"])),
    change(9, field("upstream", &["routes"])),
    change(10, Addition::UdpServices),
];

/// How one resource reads at an older version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// As it is: nothing in it came later.
    Unchanged,
    /// With the later fields removed.
    Stripped,
    /// Its kind came later: the version is not sent it at all.
    Absent,
}

/// A table of changes, with the version it ends at: [`Compat::CURRENT`] in
/// production; tests extend it with a future version's rows.
#[derive(Clone, Copy, Debug)]
pub struct Compat<'a> {
    changes: &'a [Change],
    newest: u32,
}

impl Compat<'static> {
    /// This build's table.
    pub const CURRENT: Self = Compat {
        changes: CHANGES,
        newest: WIRE_VERSION,
    };
}

impl<'a> Compat<'a> {
    /// A table whose newest version is `newest`.
    pub const fn new(changes: &'a [Change], newest: u32) -> Self {
        Self { changes, newest }
    }

    /// The newest version of this table.
    pub fn newest(&self) -> u32 {
        self.newest
    }

    /// Whether a proxy speaking `version` may be served.
    pub fn serves(&self, version: u32) -> bool {
        (MIN_WIRE_VERSION..=self.newest).contains(&version)
    }

    /// Whether a proxy speaking `version` reads deltas.
    pub fn sends_deltas(&self, version: u32) -> bool {
        self.has(version, Addition::Deltas)
    }

    /// Whether a proxy speaking `version` ignores what it does not know.
    pub fn tolerant(&self, version: u32) -> bool {
        self.has(version, Addition::TolerantReaders)
    }

    fn has(&self, version: u32, addition: Addition) -> bool {
        self.changes
            .iter()
            .any(|c| c.addition == addition && c.version <= version)
    }

    /// Shapes one resource (its JSON form, `kind` tag included) for a proxy
    /// speaking `version`, in place.
    pub fn downgrade_resource(&self, resource: &mut Value, version: u32) -> Shape {
        let Some(kind) = resource.get("kind").and_then(Value::as_str) else {
            return Shape::Unchanged;
        };
        let later = self.changes.iter().filter(|c| c.version > version);
        let mut fields = Vec::new();
        for change in later {
            match change.addition {
                Addition::Kind(k) if k == kind => return Shape::Absent,
                Addition::UdpServices if is_udp_service(resource) => return Shape::Absent,
                Addition::Field { kind: k, path } if k == kind => fields.push(path),
                _ => {}
            }
        }
        let mut stripped = false;
        for path in fields {
            stripped |= remove_path(resource, path);
        }
        if stripped {
            Shape::Stripped
        } else {
            Shape::Unchanged
        }
    }

    /// Shapes a whole response (its JSON form) for `version`: every resource
    /// of a snapshot or delta is downgraded, and those whose kind came later
    /// are left out.
    pub fn downgrade_response(&self, response: &mut Value, version: u32) {
        let map = match response.get("type").and_then(Value::as_str) {
            Some("snapshot") => "resources",
            Some("delta") => "upserts",
            _ => return,
        };
        if let Some(Value::Object(resources)) = response.get_mut(map) {
            resources.retain(|_, r| self.downgrade_resource(r, version) != Shape::Absent);
        }
    }

    /// One resource's JSON for a proxy speaking `version`; `None` when that
    /// version is not sent its kind.
    pub fn encode_resource(
        &self,
        resource: &Resource,
        version: u32,
    ) -> Result<Option<String>, serde_json::Error> {
        if version >= self.newest {
            return serde_json::to_string(resource).map(Some);
        }
        let mut value = serde_json::to_value(resource)?;
        match self.downgrade_resource(&mut value, version) {
            Shape::Absent => Ok(None),
            Shape::Unchanged | Shape::Stripped => serde_json::to_string(&value).map(Some),
        }
    }

    /// `response` as a frame a proxy speaking `version` reads. The caller
    /// sends no delta to a version without [`Addition::Deltas`].
    pub fn encode_response(
        &self,
        response: &Response,
        version: u32,
    ) -> Result<Vec<u8>, FrameError> {
        if version >= self.newest {
            return encode_frame(response, Direction::Response);
        }
        let mut value = serde_json::to_value(response).map_err(FrameError::Json)?;
        self.downgrade_response(&mut value, version);
        let mut frame = FrameWriter::new(Direction::Response, 4096);
        serde_json::to_writer(&mut frame, &value).map_err(FrameError::Json)?;
        frame.finish()
    }
}

/// Whether `resource` is an upstream or inbound service of UDP.
fn is_udp_service(resource: &Value) -> bool {
    matches!(
        resource.get("kind").and_then(Value::as_str),
        Some("upstream" | "inbound")
    ) && resource
        .get("service")
        .and_then(Value::as_str)
        .is_some_and(|s| s.ends_with("/udp"))
}

/// Removes the field at `path` (with `"*"` for every array element);
/// whether anything was removed.
fn remove_path(value: &mut Value, path: &[&str]) -> bool {
    match (path, value) {
        ([], _) => false,
        (["*", rest @ ..], Value::Array(items)) => items
            .iter_mut()
            .fold(false, |removed, item| remove_path(item, rest) | removed),
        ([last], Value::Object(map)) => map.remove(*last).is_some(),
        ([first, rest @ ..], Value::Object(map)) => {
            map.get_mut(*first).is_some_and(|v| remove_path(v, rest))
        }
        _ => false,
    }
}

/// One resource encoded for every served version, each distinct shape
/// once: a change sent to thousands of proxies of mixed versions is
/// serialized once per shape, not once per proxy.
#[derive(Clone, Debug)]
pub struct Encodings {
    newest: u32,
    current: Arc<str>,
    /// Index `i` is version `newest - 1 - i`; `None` when that version is
    /// not sent this resource. Versions that read the same bytes share them.
    older: Vec<Option<Arc<str>>>,
}

impl Encodings {
    /// Encodes `resource` for every version `compat` serves.
    pub fn new(compat: &Compat<'_>, resource: &Resource) -> Result<Self, serde_json::Error> {
        let mut value = serde_json::to_value(resource)?;
        let current: Arc<str> = serde_json::to_string(&value)?.into();
        let mut older = Vec::new();
        let mut last = Some(current.clone());
        // Each version down strips from the shape of the one above it: the
        // rows of a version are removed once, and unchanged shapes share.
        for version in (MIN_WIRE_VERSION..compat.newest).rev() {
            last = match (last, compat.downgrade_resource(&mut value, version)) {
                (None, _) | (_, Shape::Absent) => None,
                (Some(same), Shape::Unchanged) => Some(same),
                (Some(_), Shape::Stripped) => Some(serde_json::to_string(&value)?.into()),
            };
            older.push(last.clone());
        }
        Ok(Self {
            newest: compat.newest,
            current,
            older,
        })
    }

    /// `null` for every version: what to send when a resource cannot be
    /// encoded, so the proxy refuses the message instead of running half a
    /// config.
    pub fn unreadable() -> Self {
        let null: Arc<str> = Arc::from("null");
        let older = (MIN_WIRE_VERSION..WIRE_VERSION)
            .map(|_| Some(null.clone()))
            .collect();
        Self {
            newest: WIRE_VERSION,
            current: null,
            older,
        }
    }

    /// The bytes for a proxy speaking `version`; `None` when it is not sent
    /// this resource.
    pub fn get(&self, version: u32) -> Option<&str> {
        if version >= self.newest {
            return Some(&self.current);
        }
        let index = usize::try_from(self.newest - 1 - version).ok()?;
        self.older.get(index)?.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ordered_and_ends_at_this_version() {
        assert!(CHANGES.windows(2).all(|w| w[0].version <= w[1].version));
        assert_eq!(CHANGES.last().map(|c| c.version), Some(WIRE_VERSION));
        for version in MIN_WIRE_VERSION + 1..=WIRE_VERSION {
            assert!(
                CHANGES.iter().any(|c| c.version == version),
                "version {version} added nothing"
            );
        }
    }

    #[test]
    fn a_path_through_an_array_strips_every_element() {
        let mut v = serde_json::json!({
            "kind": "upstream",
            "endpoints": [{"address": "a", "otherIps": ["::1"]}, {"address": "b"}],
        });
        assert_eq!(
            Compat::CURRENT.downgrade_resource(&mut v, 3),
            Shape::Stripped
        );
        assert_eq!(
            v,
            serde_json::json!({"kind": "upstream", "endpoints": [{"address": "a"}, {"address": "b"}]})
        );
        assert_eq!(
            Compat::CURRENT.downgrade_resource(&mut v, 3),
            Shape::Unchanged
        );
    }

    #[test]
    fn a_later_kind_is_absent_from_older_versions_only() {
        let rows = [change(6, Addition::Kind("route"))];
        let compat = Compat::new(&rows, 6);
        let mut route = serde_json::json!({"kind": "route"});
        assert_eq!(compat.downgrade_resource(&mut route, 5), Shape::Absent);
        assert_eq!(compat.downgrade_resource(&mut route, 6), Shape::Unchanged);
    }

    #[test]
    fn udp_services_are_absent_below_version_10_and_tcp_ones_stay() {
        let c = Compat::CURRENT;
        for kind in ["upstream", "inbound"] {
            let udp = serde_json::json!({"kind": kind, "service": "dns:53/udp"});
            assert_eq!(c.downgrade_resource(&mut udp.clone(), 9), Shape::Absent);
            assert_eq!(c.downgrade_resource(&mut udp.clone(), 10), Shape::Unchanged);
            let tcp = serde_json::json!({"kind": kind, "service": "dns:53"});
            assert_eq!(c.downgrade_resource(&mut tcp.clone(), 9), Shape::Unchanged);
        }
    }

    #[test]
    fn deltas_and_tolerance_start_where_the_table_says() {
        let c = Compat::CURRENT;
        assert!(!c.sends_deltas(1) && c.sends_deltas(2) && c.sends_deltas(WIRE_VERSION));
        assert!(!c.tolerant(4) && c.tolerant(5));
        assert!(
            !c.serves(0) && c.serves(1) && c.serves(WIRE_VERSION) && !c.serves(WIRE_VERSION + 1)
        );
    }
}
