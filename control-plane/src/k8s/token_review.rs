//! Proxy identity from projected ServiceAccount tokens, checked with the
//! TokenReview API.
//!
//! The injector mounts a token with audience `phoenix` (short-lived, bound
//! to the pod); the proxy sends it with its CSR; the API server says whose it
//! is. Only a ServiceAccount token for our audience is accepted, and the
//! certificate names exactly that ServiceAccount.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Api;
use kube::api::PostParams;

/// The audience projected tokens are minted for.
pub const AUDIENCE: &str = "phoenix";

/// Why a token does not prove an identity.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not authenticate it (expired, revoked, another
    /// audience on a server that checks it, or garbage).
    #[error("the token was not accepted by the Kubernetes API server: {api_message}")]
    Rejected {
        /// The API server's reason, as it gave it.
        api_message: String,
    },
    /// It is valid but was not minted for Phoenix.
    #[error(
        "the token is not for audience `{AUDIENCE}`: mount a projected ServiceAccount token with audience {AUDIENCE} (the injector does)"
    )]
    WrongAudience,
    /// It belongs to a user, not a ServiceAccount.
    #[error(
        "the token belongs to {username}, not a ServiceAccount; proxies authenticate as their pod's ServiceAccount"
    )]
    NotServiceAccount {
        /// Who it belongs to.
        username: String,
    },
    /// The TokenReview call failed.
    #[error("cannot reach the TokenReview API")]
    Api(#[source] kube::Error),
}

impl ReviewError {
    /// The `result` label of `control_certificates_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReviewError::Rejected { .. } => "invalid_token",
            ReviewError::WrongAudience => "wrong_audience",
            ReviewError::NotServiceAccount { .. } => "not_service_account",
            ReviewError::Api(_) => "review_unavailable",
        }
    }
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// The pod the token is bound to, when it is.
    pub pod: Option<String>,
}

/// Checks tokens with the API server.
#[derive(Clone)]
pub struct Reviewer {
    api: Api<TokenReview>,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer").finish_non_exhaustive()
    }
}

impl Reviewer {
    /// A reviewer using `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }

    /// Whose `token` is, asking the API server for our audience.
    pub async fn review(&self, token: &str) -> Result<Reviewed, ReviewError> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(ReviewError::Api)?;
        verdict(answer.status.as_ref())
    }
}

/// The identity a TokenReview status proves, if any.
pub fn verdict(status: Option<&TokenReviewStatus>) -> Result<Reviewed, ReviewError> {
    let rejected = |m: Option<&String>| ReviewError::Rejected {
        api_message: m.cloned().unwrap_or_else(|| "not authenticated".into()),
    };
    let Some(status) = status else {
        return Err(rejected(None));
    };
    if status.authenticated != Some(true) {
        return Err(rejected(status.error.as_ref()));
    }
    // An API server that ignores audiences echoes none: refuse rather than
    // accept a token that may have been minted for someone else.
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(ReviewError::WrongAudience);
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.clone()).unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(ReviewError::NotServiceAccount { username });
    };
    let pod = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
        .and_then(|v| v.first().cloned());
    Ok(Reviewed {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> TokenReviewStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_service_account_token_for_phoenix_names_its_account() {
        let s = status(json!({
            "authenticated": true,
            "audiences": ["phoenix"],
            "user": {"username": "system:serviceaccount:shop:web",
                     "extra": {"authentication.kubernetes.io/pod-name": ["web-7d9f"]}},
        }));
        let r = verdict(Some(&s)).unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.service_account.as_str()),
            ("shop", "web")
        );
        assert_eq!(r.pod.as_deref(), Some("web-7d9f"));
    }

    #[test]
    fn expired_foreign_and_user_tokens_are_refused_with_their_reason() {
        let expired = status(json!({"authenticated": false, "error": "token has expired"}));
        let e = verdict(Some(&expired)).unwrap_err();
        assert_eq!(e.metric_label(), "invalid_token");
        assert!(e.to_string().contains("token has expired"), "{e}");

        let other_audience = status(json!({
            "authenticated": true, "audiences": ["https://kubernetes.default.svc"],
            "user": {"username": "system:serviceaccount:shop:web"},
        }));
        assert_eq!(
            verdict(Some(&other_audience)).unwrap_err().metric_label(),
            "wrong_audience"
        );

        let user = status(json!({
            "authenticated": true, "audiences": ["phoenix"],
            "user": {"username": "alice@example.com"},
        }));
        let e = verdict(Some(&user)).unwrap_err();
        assert_eq!(e.metric_label(), "not_service_account");
        assert!(e.to_string().contains("alice@example.com"));
        assert!(verdict(None).is_err());
    }
}
