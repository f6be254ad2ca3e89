//! Keeps the MutatingWebhookConfiguration's `caBundle` equal to the mesh's
//! trust bundle, so the API server trusts the webhook's certificate through
//! root rotations. The chart creates the configuration without a bundle (it
//! renders no keys); the leader fills it in and puts it back if edited.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PostParams;

/// Why the bundle could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    /// The configuration could not be read or written.
    #[error("cannot read or update MutatingWebhookConfiguration {name}")]
    Api {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// It does not exist (the chart or `phoenix install` creates it).
    #[error(
        "MutatingWebhookConfiguration {name} does not exist; install the chart (or `phoenix install`) to create it"
    )]
    Missing {
        /// Its name.
        name: String,
    },
}

/// Sets every webhook's `caBundle` in the configuration `name` to `bundle`;
/// `Ok(false)` when it already was. The write carries the version read, so
/// a concurrent edit makes it fail (and the next round retries).
pub async fn ensure_ca_bundle(
    client: kube::Client,
    name: &str,
    bundle: &str,
) -> Result<bool, WebhookConfigError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let error = |source| WebhookConfigError::Api {
        name: name.to_owned(),
        source,
    };
    let Some(mut config) = api.get_opt(name).await.map_err(error)? else {
        return Err(WebhookConfigError::Missing {
            name: name.to_owned(),
        });
    };
    let want = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&want) {
            webhook.client_config.ca_bundle = Some(want.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .map_err(error)?;
    }
    Ok(changed)
}
