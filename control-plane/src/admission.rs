//! The mutating admission webhook's request handling (AdmissionReview v1),
//! without the HTTP around it: bytes in, bytes out, never a panic.

use std::collections::BTreeMap;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::inject::{self, Decision, Injector};

/// Why a request is not an AdmissionReview (the HTTP layer answers 400).
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The body is not an AdmissionReview.
    #[error(
        "the body is not an admission.k8s.io/v1 AdmissionReview: {0}; the webhook expects what the API server sends"
    )]
    Malformed(#[source] serde_json::Error),
    /// The review carries no request.
    #[error("the AdmissionReview has no `request`")]
    NoRequest,
    /// The response cannot be encoded (never in practice).
    #[error("cannot encode the response")]
    Encode(#[source] serde_json::Error),
}

/// Answers one AdmissionReview: the injection patch for a pod that asks for
/// it (pod annotation or namespace label, looked up with `namespace_labels`),
/// else an unchanged admission. A pod whose Phoenix annotations are invalid
/// is refused with the reason, rather than started outside the mesh.
pub fn review(
    body: &[u8],
    injector: &Injector,
    namespace_labels: impl Fn(&str) -> BTreeMap<String, String>,
) -> Result<Vec<u8>, AdmissionError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(AdmissionError::Malformed)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| AdmissionError::NoRequest)?;
    let response = respond(&request, injector, namespace_labels);
    serde_json::to_vec(&response.into_review()).map_err(AdmissionError::Encode)
}

fn respond(
    request: &AdmissionRequest<DynamicObject>,
    injector: &Injector,
    namespace_labels: impl Fn(&str) -> BTreeMap<String, String>,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let Some(object) = &request.object else {
        return allowed;
    };
    if request.kind.kind != "Pod" {
        return allowed;
    }
    let pod = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(error) => return allowed.deny(format!("phoenix: cannot read the pod: {error}")),
    };
    let labels = request
        .namespace
        .as_deref()
        .map(&namespace_labels)
        .unwrap_or_default();
    match inject::decide(&inject::template_asks(&pod), &labels) {
        Decision::Skip(why) => {
            tracing::debug!(uid = %request.uid, why, "not injecting");
            allowed
        }
        Decision::Inject => match injector.patch(&pod, "") {
            Ok(patch) => match allowed.clone().with_patch(patch) {
                Ok(r) => r,
                Err(error) => allowed.deny(format!("phoenix: cannot encode the patch: {error}")),
            },
            Err(error) => {
                tracing::info!(uid = %request.uid, %error, "refusing a pod that cannot be injected");
                allowed.deny(format!("phoenix: {error}"))
            }
        },
    }
}
