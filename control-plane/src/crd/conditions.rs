//! Status conditions the control plane writes on Phoenix resources.
//!
//! The vocabulary is Gateway API's: `Accepted` (the spec is understood and in
//! force) and `ResolvedRefs` (every reference points at something that
//! exists), each with a reason a user can act on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the resource is valid and in force.
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every reference resolves.
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// Why a condition has its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// In force.
    Accepted,
    /// The spec cannot be used (the message says which field and why).
    Invalid,
    /// A MeshConfig not named `default` is ignored.
    NotDefault,
    /// Every reference resolves.
    ResolvedRefs,
    /// The target Service does not exist (yet).
    ServiceNotFound,
    /// An older policy already targets the same Service (or an older
    /// route of the other kind attaches to it).
    Conflicted,
    /// A route's parent Service (or its port) does not exist.
    NoMatchingParent,
    /// A route uses a field or value Phoenix does not carry out.
    UnsupportedValue,
    /// A route's backend is in another namespace and no ReferenceGrant
    /// there allows it.
    RefNotPermitted,
    /// A route's backend Service (or its port) does not exist.
    BackendNotFound,
}

impl Reason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Invalid => "Invalid",
            Reason::NotDefault => "NotDefault",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::ServiceNotFound => "ServiceNotFound",
            Reason::Conflicted => "Conflicted",
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::BackendNotFound => "BackendNotFound",
        }
    }
}

/// One condition to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type.
    pub type_: &'static str,
    /// True or False.
    pub ok: bool,
    /// Why.
    pub reason: Reason,
    /// For humans: what is wrong and how to fix it.
    pub message: String,
}

/// Merges `verdicts` into `existing`, keeping `lastTransitionTime` of a
/// condition whose status did not change (so watchers see real transitions).
pub fn merge(
    existing: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let status = if v.ok { "True" } else { "False" };
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: v.type_.to_owned(),
                status: status.to_owned(),
                reason: v.reason.as_str().to_owned(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let ok = Verdict {
            type_: ACCEPTED,
            ok: true,
            reason: Reason::Accepted,
            message: "in force".into(),
        };
        let first = merge(&[], std::slice::from_ref(&ok), Some(1), time(100));
        assert_eq!(first[0].last_transition_time, time(100));
        let again = merge(&first, std::slice::from_ref(&ok), Some(2), time(200));
        assert_eq!(again[0].last_transition_time, time(100), "status unchanged");
        assert_eq!(again[0].observed_generation, Some(2));
        let bad = Verdict {
            ok: false,
            reason: Reason::Invalid,
            ..ok
        };
        let flipped = merge(&again, &[bad], Some(3), time(300));
        assert_eq!(flipped[0].status, "False");
        assert_eq!(flipped[0].last_transition_time, time(300));
    }
}
