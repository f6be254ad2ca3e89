//! A service's retry policy as people write it (mesh file `retry:`,
//! TrafficPolicy `spec.retry`), and its checked wire form.
//!
//! Both sources share this one type so the two modes cannot drift: the
//! same YAML means the same retries in a mesh file and in a cluster.

use phoenix_api::snapshot::RetryPolicy;
use serde::{Deserialize, Serialize};

/// Retries of one request when the policy does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Retries may add this share of the requests (Linkerd's default budget).
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// ...plus this many per second.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;

/// Which failed requests of a service are tried again. Only idempotent
/// requests (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are, unless
/// `nonIdempotent` says otherwise or the call is gRPC and its status is
/// listed in `grpcStatusCodes`; a request is retried only when its whole
/// body (at most 64 KiB) had been sent, so it can be sent again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// HTTP statuses that are retried, e.g. `[502, 503, 504]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 16)))]
    pub status_codes: Vec<u16>,
    /// gRPC statuses that are retried, by name, e.g. `[UNAVAILABLE]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kubernetes", schemars(length(max = 17)))]
    pub grpc_status_codes: Vec<String>,
    /// Retries of one request, at most (1 to 10; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Retry non-idempotent requests (POST, PATCH) too. Only for services
    /// that can take a request twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_idempotent: bool,
    /// How much extra load retries may add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

/// A retry budget: retries add at most `percent` of the service's
/// requests, plus `minPerSecond`, so a failing service is never hammered.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "kubernetes", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetSpec {
    /// Percent of requests (0 to 100; default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Retries per second always allowed (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

/// What is wrong with a retry policy, naming the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    /// A status outside 100–599.
    #[error("statusCodes: {0} is not an HTTP status; use 100 to 599, e.g. 503")]
    Status(u16),
    /// A gRPC status name that is not one.
    #[error(
        "grpcStatusCodes: `{0}` is not a gRPC status; use a name such as UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED"
    )]
    GrpcStatus(String),
    /// Zero or too many retries.
    #[error("maxRetries: {0} is out of range; use 1 to 10")]
    MaxRetries(u32),
    /// A budget over 100%.
    #[error("budget.percent: {0} is over 100")]
    BudgetPercent(u32),
    /// A policy that retries nothing.
    #[error("list statusCodes or grpcStatusCodes to retry (e.g. statusCodes: [503])")]
    Nothing,
}

/// gRPC's status names, by number.
const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl RetrySpec {
    /// The checked wire form.
    pub fn to_wire(&self) -> Result<RetryPolicy, RetryError> {
        let Self {
            status_codes,
            grpc_status_codes,
            max_retries,
            non_idempotent,
            budget,
        } = self;
        if let Some(&code) = status_codes.iter().find(|c| !(100..600).contains(*c)) {
            return Err(RetryError::Status(code));
        }
        let grpc = grpc_status_codes
            .iter()
            .map(|name| {
                GRPC_NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(name))
                    .and_then(|i| u8::try_from(i).ok())
                    .ok_or_else(|| RetryError::GrpcStatus(name.clone()))
            })
            .collect::<Result<Vec<u8>, _>>()?;
        if status_codes.is_empty() && grpc.is_empty() {
            return Err(RetryError::Nothing);
        }
        let max_retries = max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if !(1..=10).contains(&max_retries) {
            return Err(RetryError::MaxRetries(max_retries));
        }
        let BudgetSpec {
            percent,
            min_per_second,
        } = budget.clone().unwrap_or_default();
        let percent = percent.unwrap_or(DEFAULT_BUDGET_PERCENT);
        if percent > 100 {
            return Err(RetryError::BudgetPercent(percent));
        }
        Ok(RetryPolicy {
            status_codes: status_codes.clone(),
            grpc_status_codes: grpc,
            max_retries,
            non_idempotent: *non_idempotent,
            budget_percent: percent,
            budget_min_per_second: min_per_second.unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names_resolve() {
        let spec = RetrySpec {
            status_codes: vec![503],
            grpc_status_codes: vec!["UNAVAILABLE".into(), "resource_exhausted".into()],
            ..RetrySpec::default()
        };
        let wire = spec.to_wire().unwrap();
        assert_eq!(wire.grpc_status_codes, vec![14, 8]);
        assert_eq!(wire.max_retries, DEFAULT_MAX_RETRIES);
        assert_eq!(wire.budget_percent, 20);
        assert_eq!(wire.budget_min_per_second, 10);
        assert!(!wire.non_idempotent);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let cases = [
            (
                RetrySpec {
                    status_codes: vec![999],
                    ..RetrySpec::default()
                },
                RetryError::Status(999),
            ),
            (
                RetrySpec {
                    grpc_status_codes: vec!["SOMETIMES".into()],
                    ..RetrySpec::default()
                },
                RetryError::GrpcStatus("SOMETIMES".into()),
            ),
            (
                RetrySpec {
                    status_codes: vec![503],
                    max_retries: Some(0),
                    ..RetrySpec::default()
                },
                RetryError::MaxRetries(0),
            ),
            (
                RetrySpec {
                    status_codes: vec![503],
                    budget: Some(BudgetSpec {
                        percent: Some(150),
                        min_per_second: None,
                    }),
                    ..RetrySpec::default()
                },
                RetryError::BudgetPercent(150),
            ),
            (RetrySpec::default(), RetryError::Nothing),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.to_wire(), Err(want));
        }
    }
}
