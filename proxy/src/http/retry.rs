//! When a failed request is sent again, and how many retries a service
//! may take.
//!
//! Retries are bounded three ways, so they can never become a retry storm:
//! per request ([`RetryConfig::max_retries`]), by what is safe (idempotent
//! methods, or a policy that marks the service's calls retryable, and only
//! a body that could be kept whole for a replay), and per service by a
//! budget (Linkerd's shape: retries add at most a share of the requests,
//! plus a few per second), shared by every connection of this proxy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Method, StatusCode};
use phoenix_api::ServiceName;
pub use tower::retry::budget::{Budget, TpsBudget};

use crate::config::RetryConfig;

/// How long one request's deposit counts toward the budget.
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// Whether a request may be retried under `policy` at all.
pub fn retryable(policy: &RetryConfig, method: &Method, grpc: bool) -> bool {
    policy.non_idempotent || idempotent(method) || (grpc && !policy.grpc_status_codes.is_empty())
}

/// RFC 9110 §9.2.2's idempotent methods.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a response with `status` (and, for gRPC, the status in its
/// head: a Trailers-Only response) asks for a retry under `policy`.
pub fn wants_retry(policy: &RetryConfig, status: StatusCode, grpc_status: Option<&str>) -> bool {
    if policy.status_codes.contains(&status) {
        return true;
    }
    grpc_status
        .and_then(|g| g.parse::<u8>().ok())
        .is_some_and(|g| policy.grpc_status_codes.contains(&g))
}

/// One retry budget per service, kept across config changes (a new policy
/// with other numbers starts a new budget).
#[derive(Debug, Default)]
pub struct Budgets {
    budgets: Mutex<HashMap<ServiceName, Kept>>,
}

/// A service's budget and the numbers it was made with.
#[derive(Debug)]
struct Kept {
    percent: u32,
    min_per_second: u32,
    budget: Arc<TpsBudget>,
}

impl Budgets {
    /// The budget of `service` under `policy`.
    pub fn get(&self, service: &ServiceName, policy: &RetryConfig) -> Arc<TpsBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        let (percent, min_per_second) = (policy.budget_percent, policy.budget_min_per_second);
        match budgets.get(service) {
            Some(kept) if (kept.percent, kept.min_per_second) == (percent, min_per_second) => {
                kept.budget.clone()
            }
            _ => {
                let budget = Arc::new(TpsBudget::new(
                    BUDGET_TTL,
                    min_per_second,
                    percent as f32 / 100.0,
                ));
                budgets.insert(
                    service.clone(),
                    Kept {
                        percent,
                        min_per_second,
                        budget: budget.clone(),
                    },
                );
                budget
            }
        }
    }

    /// Forgets the budgets of services no longer configured.
    pub fn retain(&self, keep: impl Fn(&ServiceName) -> bool) {
        self.budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|service, _| keep(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            status_codes: vec![StatusCode::SERVICE_UNAVAILABLE],
            grpc_status_codes: vec![14],
            max_retries: 2,
            non_idempotent: false,
            budget_percent: 20,
            budget_min_per_second: 0,
        }
    }

    #[test]
    fn only_safe_requests_are_retryable() {
        let p = policy();
        assert!(retryable(&p, &Method::GET, false));
        assert!(retryable(&p, &Method::PUT, false));
        assert!(
            !retryable(&p, &Method::POST, false),
            "POST is not idempotent"
        );
        assert!(
            retryable(&p, &Method::POST, true),
            "a gRPC call with statuses listed"
        );
        let plain = RetryConfig {
            grpc_status_codes: vec![],
            ..policy()
        };
        assert!(!retryable(&plain, &Method::POST, true));
        let any = RetryConfig {
            non_idempotent: true,
            ..plain
        };
        assert!(retryable(&any, &Method::PATCH, false));
    }

    #[test]
    fn listed_statuses_ask_for_a_retry() {
        let p = policy();
        assert!(wants_retry(&p, StatusCode::SERVICE_UNAVAILABLE, None));
        assert!(!wants_retry(&p, StatusCode::INTERNAL_SERVER_ERROR, None));
        assert!(wants_retry(&p, StatusCode::OK, Some("14")));
        assert!(!wants_retry(&p, StatusCode::OK, Some("5")));
        assert!(!wants_retry(&p, StatusCode::OK, Some("other")));
    }

    /// With no per-second allowance, retries stay within 20% of requests.
    #[test]
    fn the_budget_allows_a_share_of_the_requests() {
        let budgets = Budgets::default();
        let service: ServiceName = "web".parse().unwrap();
        let budget = budgets.get(&service, &policy());
        for _ in 0..100 {
            budget.deposit();
        }
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert!(
            (18..=21).contains(&allowed),
            "{allowed} retries for 100 requests"
        );
        assert!(
            Arc::ptr_eq(&budget, &budgets.get(&service, &policy())),
            "one budget per service"
        );
    }
}
