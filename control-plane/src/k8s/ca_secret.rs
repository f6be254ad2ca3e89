//! The mesh root CA kept in a Kubernetes Secret.
//!
//! The control plane creates the Secret when it is absent, so neither the
//! chart nor `phoenix install` ever renders a key and upgrades keep the root.
//! Two replicas starting together both try to create it: the loser's create
//! fails with 409 and it loads the winner's. The key is never logged.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::ca::{Ca, CaError, RootOrigin};

/// Secret key of the root certificate (PEM).
pub const CERT_KEY: &str = "ca.crt";
/// Secret key of the root private key (PEM).
pub const KEY_KEY: &str = "ca.key";

/// Why the root cannot be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The Secret could not be read or created.
    #[error("cannot read or create Secret {namespace}/{name}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The Secret lacks `ca.crt` or `ca.key`.
    #[error(
        "Secret {namespace}/{name} lacks {missing}: restore it, or delete the Secret to generate a new root (every proxy then needs new certificates)"
    )]
    Incomplete {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The missing key.
        missing: &'static str,
    },
    /// The stored root is unusable, or a new one cannot be made.
    #[error("root in Secret {namespace}/{name}")]
    Ca {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: CaError,
    },
}

/// Loads the root from the Secret `namespace/name`, creating it for
/// `trust_domain` when absent.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<(Ca, RootOrigin), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_error = |source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let ca_error = |source| CaSecretError::Ca {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    if let Some(secret) = api.get_opt(name).await.map_err(api_error)? {
        return Ok((parse(&secret, namespace, name)?, RootOrigin::Loaded));
    }
    let ca = Ca::generate(trust_domain).map_err(ca_error)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "phoenix".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.to_owned(),
                ByteString(ca.root_pem().as_bytes().to_vec()),
            ),
            (KEY_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok((ca, RootOrigin::Generated)),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(api_error)?;
            Ok((parse(&secret, namespace, name)?, RootOrigin::Loaded))
        }
        Err(e) => Err(api_error(e)),
    }
}

fn parse(secret: &Secret, namespace: &str, name: &str) -> Result<Ca, CaSecretError> {
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or(CaSecretError::Incomplete {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                missing: key,
            })
    };
    Ca::from_pem(&field(CERT_KEY)?, &field(KEY_KEY)?).map_err(|source| CaSecretError::Ca {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}
