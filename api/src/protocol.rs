//! What a service port speaks: the protocol the control plane resolves for
//! it and sends to proxies (wire version 6).
//!
//! Declared by the user (the mesh file's `protocol:`, a Kubernetes Service
//! port's `appProtocol`, a TrafficPolicy's `protocol`), else opaque for the
//! ports of well-known server-first or binary protocols
//! ([`DEFAULT_OPAQUE_PORTS`], Linkerd's list), else [`Protocol::Detect`]:
//! the proxy reads the client's first bytes ([`detect`](crate::detect)).
//!
//! Read tolerantly off the wire: a value this build does not know (a later
//! protocol) is opaque, which relays bytes as they come, the behaviour of
//! every proxy before protocols existed. User-written values are parsed
//! strictly ([`FromStr`]), so a typo is an error, never silently opaque.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ports whose traffic is opaque unless declared otherwise: SMTP (25, 587),
/// MySQL (3306), SQL Server's default broker (4444), PostgreSQL (5432),
/// Redis (6379), Elasticsearch transport (9300), memcached (11211). Several
/// are server-first: detection would have nothing to read.
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// A service port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Bytes, relayed as they come (no detection delay at all).
    Opaque,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge: h2c, gRPC.
    Http2,
    /// Decided per connection from the client's first bytes (the default).
    #[default]
    Detect,
}

impl Protocol {
    /// Every value, in the order the docs list them.
    pub const ALL: [Protocol; 4] = [Self::Opaque, Self::Http1, Self::Http2, Self::Detect];

    /// The name written in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opaque => "opaque",
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Detect => "detect",
        }
    }

    /// Whether this is the default (omitted on the wire).
    pub fn is_detect(&self) -> bool {
        *self == Self::Detect
    }

    /// The protocol of an undeclared port: opaque for
    /// [`DEFAULT_OPAQUE_PORTS`], else detected.
    pub fn default_for_port(port: u16) -> Self {
        if DEFAULT_OPAQUE_PORTS.contains(&port) {
            Self::Opaque
        } else {
            Self::Detect
        }
    }

    /// The protocol a Kubernetes Service port's `appProtocol` declares, if
    /// it declares one Phoenix acts on: `http` (HTTP/1.x), `kubernetes.io/h2c`
    /// and `grpc` (HTTP/2), `kubernetes.io/ws` and `kubernetes.io/wss`
    /// (HTTP/1.1 with an upgrade, and TLS inside, so opaque for wss), `tcp`
    /// (opaque), `https` and `tls` (the app's own TLS: opaque). Anything
    /// else declares nothing.
    pub fn from_app_protocol(app_protocol: &str) -> Option<Self> {
        match app_protocol.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" => Some(Self::Http1),
            "kubernetes.io/h2c" | "grpc" | "h2c" => Some(Self::Http2),
            "tcp" | "https" | "tls" | "kubernetes.io/wss" => Some(Self::Opaque),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name outside the known set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}`: use opaque, http1, http2 or detect")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        // A later protocol is relayed as bytes: never refused, never parsed.
        Ok(name.parse().unwrap_or(Self::Opaque))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_read_as_opaque() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Protocol>(&json).unwrap(), p);
        }
        assert_eq!(
            serde_json::from_str::<Protocol>("\"http3\"").unwrap(),
            Protocol::Opaque
        );
        let typo = "htpp1".parse::<Protocol>().unwrap_err();
        assert_eq!(
            typo.to_string(),
            "unknown protocol `htpp1`: use opaque, http1, http2 or detect"
        );
    }

    #[test]
    fn undeclared_ports_are_detected_except_the_default_opaque_ones() {
        assert_eq!(Protocol::default_for_port(5432), Protocol::Opaque);
        assert_eq!(Protocol::default_for_port(25), Protocol::Opaque);
        assert_eq!(Protocol::default_for_port(8080), Protocol::Detect);
    }

    #[test]
    fn app_protocols_map_to_protocols() {
        assert_eq!(Protocol::from_app_protocol("grpc"), Some(Protocol::Http2));
        assert_eq!(
            Protocol::from_app_protocol("kubernetes.io/h2c"),
            Some(Protocol::Http2)
        );
        assert_eq!(Protocol::from_app_protocol("HTTP"), Some(Protocol::Http1));
        assert_eq!(
            Protocol::from_app_protocol("kubernetes.io/ws"),
            Some(Protocol::Http1)
        );
        assert_eq!(Protocol::from_app_protocol("https"), Some(Protocol::Opaque));
        assert_eq!(Protocol::from_app_protocol("example.com/custom"), None);
    }
}
