//! Workload identities: SPIFFE IDs of the form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Identities are compared as parsed values, never as raw strings, so that a
//! certificate naming `spiffe://td/ns/a/sa/b/` (trailing slash) or a different
//! case can never be mistaken for an allowed identity.

use std::fmt;
use std::str::FromStr;

/// A parsed, validated SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Lowercase trust domain, e.g. `phoenix.local`.
    trust_domain: String,
    /// Path without the leading slash, e.g. `ns/default/sa/web`.
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The ID does not start with `spiffe://`.
    #[error("a SPIFFE ID starts with `spiffe://`")]
    MissingScheme,
    /// The trust domain is empty or has characters outside `[a-z0-9.-_]`.
    #[error(
        "the trust domain must be non-empty and use only lowercase letters, digits, `.`, `-` and `_`"
    )]
    InvalidTrustDomain,
    /// The path is empty, has an empty segment, a `.`/`..` segment or a bad character.
    #[error(
        "the path must be non-empty segments of letters, digits, `.`, `-` and `_` (no empty, `.` or `..` segments)"
    )]
    InvalidPath,
    /// A namespace or service-account name is not a valid Kubernetes name.
    #[error(
        "namespace and service account must be DNS labels: lowercase letters, digits and `-`, 1 to 63 characters"
    )]
    InvalidName,
}

impl SpiffeId {
    /// The identity of a workload running as `service_account` in `namespace`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns_label(namespace) || !is_dns_label(service_account) {
            return Err(IdentityError::InvalidName);
        }
        Self::from_str(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain, e.g. `phoenix.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path without its leading slash.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `(namespace, service account)` when the path has the workload shape.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(IdentityError::MissingScheme)?;
        let (td, path) = rest.split_once('/').ok_or(IdentityError::InvalidPath)?;
        if td.is_empty()
            || td.len() > 255
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(IdentityError::InvalidTrustDomain);
        }
        if path.is_empty()
            || path.len() > 2048
            || !path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            })
        {
            return Err(IdentityError::InvalidPath);
        }
        Ok(Self {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}", self.trust_domain, self.path)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// RFC 1123 label, as Kubernetes requires for namespace and ServiceAccount names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_identity_round_trips() {
        let id = SpiffeId::workload("phoenix.local", "default", "web").unwrap();
        assert_eq!(id.to_string(), "spiffe://phoenix.local/ns/default/sa/web");
        assert_eq!(id.namespace_and_service_account(), Some(("default", "web")));
        assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "http://phoenix.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://phoenix.local",
            "spiffe://phoenix.local/",
            "spiffe://Phoenix.local/ns/a/sa/b",
            "spiffe://phoenix.local/ns//sa/b",
            "spiffe://phoenix.local/ns/a/sa/b/",
            "spiffe://phoenix.local/ns/../sa/b",
            "spiffe://phoenix.local/ns/a b/sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            SpiffeId::workload("td", "Default", "web"),
            Err(IdentityError::InvalidName)
        );
    }
}
