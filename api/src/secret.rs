//! Secret text (bootstrap tokens, private keys) that must never reach a log.
//!
//! Messages and settings that hold one derive `Debug` like any other; the
//! secret inside prints as its length only, so `?request` in a log line or a
//! panic message cannot leak it. Serialized, it is the plain string (the
//! wire and the files need it).

use serde::{Deserialize, Serialize};

/// A string whose `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<redacted, {} bytes>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_serde_is_the_plain_string() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "Secret(<redacted, 13 bytes>)");
        assert_eq!(
            format!("{:?}", Some(&s)),
            "Some(Secret(<redacted, 13 bytes>))"
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2-token\"");
        let back: Secret = serde_json::from_str("\"hunter2-token\"").unwrap();
        assert_eq!(back.expose(), "hunter2-token");
    }
}
