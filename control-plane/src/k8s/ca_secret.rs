//! The mesh root CA kept in a Kubernetes Secret.
//!
//! The control plane creates the Secret when it is absent, so neither the
//! chart nor `phoenix install` ever renders a key and upgrades keep the root.
//! Two replicas starting together both try to create it: the loser's create
//! fails with 409 and it loads the winner's. The key is never logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::ResourceExt;
use kube::api::{ObjectMeta, PostParams};

use phoenix_api::tls_policy::IdentityAlgorithm;

use crate::ca::{Ca, CaError, RootOrigin};
use crate::roots::{RootsError, Schedule};

/// Secret key of the root certificate (PEM).
pub const CERT_KEY: &str = "ca.crt";
/// Secret key of the root private key (PEM).
pub const KEY_KEY: &str = "ca.key";
/// Secret key of the root schedule, present once a rotation was made; it
/// then says which roots exist (`ca.crt`/`ca.key` stay as the first root).
pub const ROOTS_KEY: &str = "roots.json";

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
    /// The stored schedule is unusable, or a rotation is refused.
    #[error("root schedule in Secret {namespace}/{name}")]
    Roots {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why (boxed: rare, and large).
        #[source]
        source: Box<RootsError>,
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

/// Loads the root from the Secret `namespace/name`, creating one of
/// `algorithm` for `trust_domain` when absent.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    algorithm: IdentityAlgorithm,
) -> Result<(Ca, RootOrigin), CaSecretError> {
    let (_, ca, origin) =
        load_or_create_secret(client, namespace, name, trust_domain, algorithm).await?;
    Ok((ca, origin))
}

/// What a control plane starts from: the Secret's root schedule, where the
/// root came from, and the resourceVersion read (for [`reload`]), from one
/// read (or the create that made it).
pub async fn start_schedule(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    algorithm: IdentityAlgorithm,
) -> Result<(Schedule, RootOrigin, Option<String>), CaSecretError> {
    let (secret, ca, origin) =
        load_or_create_secret(client, namespace, name, trust_domain, algorithm).await?;
    let schedule = schedule_of(&secret, Arc::new(ca), namespace, name)?;
    Ok((schedule, origin, secret.resource_version()))
}

async fn load_or_create_secret(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    algorithm: IdentityAlgorithm,
) -> Result<(Secret, Ca, RootOrigin), CaSecretError> {
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
        let ca = parse(&secret, namespace, name)?;
        return Ok((secret, ca, RootOrigin::Loaded));
    }
    let ca = Ca::generate_with(trust_domain, algorithm).map_err(ca_error)?;
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
        Ok(created) => Ok((created, ca, RootOrigin::Generated)),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await.map_err(api_error)?;
            let ca = parse(&secret, namespace, name)?;
            Ok((secret, ca, RootOrigin::Loaded))
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

/// The Secret's root schedule: `roots.json` when present, else its single
/// root `ca`.
pub fn schedule_of(
    secret: &Secret,
    ca: Arc<Ca>,
    namespace: &str,
    name: &str,
) -> Result<Schedule, CaSecretError> {
    match secret.data.as_ref().and_then(|d| d.get(ROOTS_KEY)) {
        Some(json) => Schedule::from_json(&json.0, &format!("{namespace}/{name} {ROOTS_KEY}"))
            .map_err(|source| CaSecretError::Roots {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            }),
        None => Ok(Schedule::single(ca)),
    }
}

/// Reads the Secret again: `Some` schedule when it changed since `seen` (its
/// resourceVersion), `None` when it did not.
pub async fn reload(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    seen: &mut Option<String>,
) -> Result<Option<Schedule>, CaSecretError> {
    let secret = api.get(name).await.map_err(|source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    if secret.resource_version().is_some() && secret.resource_version() == *seen {
        return Ok(None);
    }
    let ca = Arc::new(parse(&secret, namespace, name)?);
    let schedule = schedule_of(&secret, ca, namespace, name)?;
    *seen = secret.resource_version();
    Ok(Some(schedule))
}

/// Announces a new root in the Secret, signing `overlap` from now; refused
/// while another rotation is announced. The write is conditional on the
/// Secret not having changed since it was read, so two rotations at once
/// cannot both land.
pub async fn rotate(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    algorithm: IdentityAlgorithm,
    overlap: Duration,
    lifetime: Duration,
) -> Result<Schedule, CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_error = |source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    };
    let roots_error = |source| CaSecretError::Roots {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source: Box::new(source),
    };
    let mut secret = api.get(name).await.map_err(api_error)?;
    let ca = Arc::new(parse(&secret, namespace, name)?);
    let schedule = schedule_of(&secret, ca, namespace, name)?;
    let new = Ca::generate_with(trust_domain, algorithm)
        .map_err(|source| roots_error(RootsError::Generate(source)))?;
    let next = schedule
        .rotate(SystemTime::now(), overlap, lifetime, new)
        .map_err(roots_error)?;
    secret.data.get_or_insert_with(BTreeMap::new).insert(
        ROOTS_KEY.to_owned(),
        ByteString(next.to_json().map_err(roots_error)?),
    );
    // `replace` carries the resourceVersion read: a concurrent change fails with 409.
    api.replace(name, &PostParams::default(), &secret)
        .await
        .map_err(api_error)?;
    Ok(next)
}
