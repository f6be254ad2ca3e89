//! Sidecar injection: one pure function behind both the mutating admission
//! webhook and `phoenix inject`, so what a cluster does and what a user sees
//! offline never differ.
//!
//! The pod gets `phoenix-init` (programs its network namespace, then exits)
//! and `phoenix-proxy` as a native sidecar: an init container with
//! `restartPolicy: Always` and a startup probe on `/ready`, placed before
//! every other init container. The kubelet then starts the app only once the
//! proxy holds a certificate and config (no app starts before its proxy), and
//! a Job's pod completes when its app exits (sidecars are stopped, not
//! waited for). The proxy proves its identity with a projected ServiceAccount
//! token for the audience `phoenix`.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

/// Pod annotation and namespace label that ask for injection (`enabled`)
/// or refuse it (`disabled`, which wins).
pub const INJECT: &str = "phoenix.dev/inject";
/// Annotation set on injected pods (the Phoenix version that injected it).
pub const INJECTED: &str = "phoenix.dev/injected";
/// Label the control plane watches pods by.
pub const MESHED_LABEL: &str = "phoenix.dev/meshed";
/// The proxy's container name.
pub const PROXY_CONTAINER: &str = "phoenix-proxy";
/// The init container's name.
pub const INIT_CONTAINER: &str = "phoenix-init";
/// The projected token volume.
pub const TOKEN_VOLUME: &str = "phoenix-token";
/// Where the token is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/phoenix";
/// The ConfigMap every namespace holds the mesh roots in (written by the
/// control plane's leader), projected next to the token.
pub const TRUST_CONFIG_MAP: &str = "phoenix-trust-bundle";
/// Its key (and the file's name in [`TOKEN_DIR`]).
pub const TRUST_KEY: &str = "ca.crt";
/// A writable /run for the init container (legacy iptables takes its lock
/// file there; the root filesystem is read-only).
pub const INIT_RUN_VOLUME: &str = "phoenix-init-run";
/// Audience of the projected token (what TokenReview checks).
pub const TOKEN_AUDIENCE: &str = "phoenix";
/// UID the proxy runs as; init exempts its traffic from redirection.
pub const PROXY_UID: i64 = 2102;
/// The proxy's QUIC port (UDP).
pub const QUIC_PORT: u16 = 4143;
/// The proxy's admin port (probes, metrics).
pub const ADMIN_PORT: u16 = 4191;
/// Outbound redirect port.
pub const OUTBOUND_PORT: u16 = 4140;
/// Inbound redirect port.
pub const INBOUND_PORT: u16 = 4141;

/// Annotations that tune the injected proxy.
pub mod annotations {
    /// CPU request of the proxy (default `10m`).
    pub const CPU_REQUEST: &str = "phoenix.dev/proxy-cpu-request";
    /// Memory request of the proxy (default `20Mi`).
    pub const MEMORY_REQUEST: &str = "phoenix.dev/proxy-memory-request";
    /// CPU limit of the proxy (none by default).
    pub const CPU_LIMIT: &str = "phoenix.dev/proxy-cpu-limit";
    /// Memory limit of the proxy (none by default).
    pub const MEMORY_LIMIT: &str = "phoenix.dev/proxy-memory-limit";
    /// Inbound ports not redirected through the proxy, comma-separated.
    pub const SKIP_INBOUND_PORTS: &str = "phoenix.dev/skip-inbound-ports";
    /// Outbound ports not redirected through the proxy, comma-separated.
    pub const SKIP_OUTBOUND_PORTS: &str = "phoenix.dev/skip-outbound-ports";
    /// Worker threads of the proxy (`--threads`, default 1): raise it for
    /// a proxy that keeps a core busy serving several busy peers.
    pub const THREADS: &str = "phoenix.dev/proxy-threads";
    /// The largest path MTU the proxy probes for (`--max-path-mtu`,
    /// default 1500): 9001 on jumbo-frame networks.
    pub const MAX_PATH_MTU: &str = "phoenix.dev/proxy-max-path-mtu";
}

/// What the injected containers need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injector {
    /// The proxy image (also runs `init`).
    pub image: String,
    /// The control plane's QUIC address as proxies reach it (`host:port`).
    pub control_plane: String,
    /// The control plane's SPIFFE ID.
    pub control_plane_identity: String,
    /// The Phoenix version (the `phoenix.dev/injected` value).
    pub version: String,
}

/// Whether a pod is injected, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Inject.
    Inject,
    /// Leave the pod as it is.
    Skip(&'static str),
}

/// Why a pod cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A port list annotation does not parse.
    #[error(
        "annotation {annotation}: `{value}` is not a comma-separated list of ports (e.g. 3306,5432)"
    )]
    BadPorts {
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// A resource annotation is not a Kubernetes quantity.
    #[error("annotation {annotation}: `{value}` is not a quantity (e.g. 100m, 64Mi)")]
    BadQuantity {
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// A numeric annotation is not a whole number in its range.
    #[error("annotation {annotation}: `{value}` is not a whole number from {min} to {max}")]
    BadNumber {
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
        /// The smallest value allowed.
        min: u32,
        /// The largest value allowed.
        max: u32,
    },
    /// The object has no pod spec where one belongs.
    #[error("no pod spec at {path}")]
    NoPodSpec {
        /// The JSON pointer looked at.
        path: String,
    },
    /// A built container does not serialize (never in practice).
    #[error("cannot encode the injected containers")]
    Encode(#[source] serde_json::Error),
    /// The pod uses the node's network namespace.
    #[error(
        "the pod has hostNetwork: true, and its rules would redirect the whole node's TCP; annotate it phoenix.dev/inject: disabled"
    )]
    HostNetwork,
    /// An app container runs as the proxy's UID, whose traffic init exempts.
    #[error(
        "container {container} runs as UID {PROXY_UID}, the proxy's: its traffic would bypass the proxy (and leave in clear); run it as another user or annotate the pod phoenix.dev/inject: disabled"
    )]
    ProxyUid {
        /// The container.
        container: String,
    },
    /// A patch path is not a JSON pointer (never with the paths built here).
    #[error("invalid patch path {0}")]
    Path(String),
}

/// Whether a pod with `annotations` in a namespace with `namespace_labels`
/// is injected: `disabled` on either wins, then `enabled` on either.
pub fn decide(
    annotations: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Decision {
    let pod = annotations.get(INJECT).map(String::as_str);
    let ns = namespace_labels.get(INJECT).map(String::as_str);
    if annotations.contains_key(INJECTED) {
        return Decision::Skip("already injected");
    }
    match (pod, ns) {
        (Some("disabled"), _) => Decision::Skip("the pod's phoenix.dev/inject is disabled"),
        (_, Some("disabled")) => Decision::Skip("the namespace's phoenix.dev/inject is disabled"),
        (Some("enabled"), _) | (_, Some("enabled")) => Decision::Inject,
        _ => Decision::Skip("neither the pod nor its namespace asks for injection"),
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod template's annotations (`template` is a Pod or a pod template).
pub fn template_annotations(template: &Value) -> BTreeMap<String, String> {
    string_map(template.pointer("/metadata/annotations"))
}

/// What the pod asks, for [`decide`]: its annotations, with the
/// `phoenix.dev/inject` label taken as the annotation (the label is what
/// webhook selectors can see, so it is the form that fails closed); a
/// `disabled` on either wins.
pub fn template_asks(template: &Value) -> BTreeMap<String, String> {
    let mut asks = template_annotations(template);
    let label = string_map(template.pointer("/metadata/labels")).remove(INJECT);
    if let Some(label) = label
        && (label == "disabled" || !asks.contains_key(INJECT))
    {
        asks.insert(INJECT.to_owned(), label);
    }
    asks
}

fn ports(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
) -> Result<Vec<u16>, InjectError> {
    let Some(value) = annotations.get(annotation) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
        .collect::<Option<Vec<u16>>>()
        .ok_or_else(|| InjectError::BadPorts {
            annotation,
            value: value.clone(),
        })
}

fn quantity(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
    default: Option<&str>,
) -> Result<Option<Quantity>, InjectError> {
    let Some(value) = annotations.get(annotation).map(String::as_str).or(default) else {
        return Ok(None);
    };
    // Digits, an optional fraction, an optional suffix the API knows.
    let (number, suffix) = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((value, ""), |i| value.split_at(i));
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number.is_empty() || number.parse::<f64>().is_err() || !suffixes.contains(&suffix) {
        return Err(InjectError::BadQuantity {
            annotation,
            value: value.to_owned(),
        });
    }
    Ok(Some(Quantity(value.to_owned())))
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The app ports the kubelet probes: the `httpGet`, `tcpSocket` and `grpc`
/// ports of every container's liveness, readiness and startup probes (named
/// ports resolved in their container), sorted, without the proxy's admin
/// port. Only these are open in clear to the node in strict mode.
pub fn probe_ports(spec: &Value) -> Vec<u16> {
    let mut out = std::collections::BTreeSet::new();
    let containers = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|list| spec.get(list).and_then(Value::as_array))
        .flatten();
    for container in containers {
        let named = |name: &str| {
            container
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort"))
                .and_then(Value::as_u64)
        };
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                let port = match container.pointer(&format!("/{probe}/{handler}/port")) {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.parse().ok().or_else(|| named(s)),
                    _ => None,
                };
                if let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) {
                    out.insert(port);
                }
            }
        }
    }
    out.remove(&ADMIN_PORT);
    out.into_iter().collect()
}

/// Refuses a pod whose app would run as the proxy's UID: init exempts that
/// UID's traffic from redirection, so it would leave unmeshed.
fn check_uids(spec: &Value) -> Result<(), InjectError> {
    let uid = |v: Option<&Value>| v.and_then(|sc| sc.get("runAsUser")).and_then(Value::as_i64);
    let pod_uid = uid(spec.get("securityContext"));
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .filter_map(|list| spec.get(list).and_then(Value::as_array))
        .flatten();
    for container in containers {
        if uid(container.get("securityContext")).or(pod_uid) == Some(PROXY_UID) {
            return Err(InjectError::ProxyUid {
                container: container
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("(unnamed)")
                    .to_owned(),
            });
        }
    }
    Ok(())
}

/// The `RuntimeDefault` seccomp profile (Pod Security `restricted` asks for it).
fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    })
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The annotation's value as a number in `min..=max`, if it is set.
fn number(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
    min: u32,
    max: u32,
) -> Result<Option<u32>, InjectError> {
    let Some(value) = annotations.get(annotation) else {
        return Ok(None);
    };
    match value.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(InjectError::BadNumber {
            annotation,
            value: value.clone(),
            min,
            max,
        }),
    }
}

impl Injector {
    /// The proxy container (a native sidecar); `probe_ports` are the app's
    /// (see [`probe_ports`]).
    pub fn proxy(
        &self,
        annotations: &BTreeMap<String, String>,
        probe_ports: &[u16],
    ) -> Result<Container, InjectError> {
        use self::annotations as a;
        let env = |name: &str, value: &str| EnvVar {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            value_from: None,
        };
        let mut requests = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for (limit, key, annotation, default) in [
            (false, "cpu", a::CPU_REQUEST, Some("10m")),
            (false, "memory", a::MEMORY_REQUEST, Some("20Mi")),
            (true, "cpu", a::CPU_LIMIT, None),
            (true, "memory", a::MEMORY_LIMIT, None),
        ] {
            if let Some(q) = quantity(annotations, annotation, default)? {
                let map = if limit { &mut limits } else { &mut requests };
                map.insert(key.to_owned(), q);
            }
        }
        let probe = |path: &str, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            ..Probe::default()
        };
        Ok(Container {
            name: PROXY_CONTAINER.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            // A native sidecar: started before the app, stopped after it.
            restart_policy: Some("Always".to_owned()),
            env: Some({
                let mut vars = vec![
                    env("PHOENIX_CONTROL_PLANE", &self.control_plane),
                    env(
                        "PHOENIX_CONTROL_PLANE_IDENTITY",
                        &self.control_plane_identity,
                    ),
                    // The roots in force, from the namespace's ConfigMap
                    // (current at every container start, unlike a copy).
                    env("PHOENIX_TRUST_ANCHOR", &format!("{TOKEN_DIR}/{TRUST_KEY}")),
                    env("PHOENIX_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
                    // `[::]`: both families (IPv6-primary and dual-stack
                    // pods); the proxy falls back to IPv4 where the kernel
                    // has no IPv6. Init redirects IPv6 too when the pod has it.
                    env("PHOENIX_INBOUND", &format!("[::]:{QUIC_PORT}")),
                    env("PHOENIX_ADMIN", &format!("[::]:{ADMIN_PORT}")),
                    env(
                        "PHOENIX_OUTBOUND_REDIRECT",
                        &format!("[::]:{OUTBOUND_PORT}"),
                    ),
                    env("PHOENIX_INBOUND_REDIRECT", &format!("[::]:{INBOUND_PORT}")),
                    // JSON lines for the cluster's log collectors (and no
                    // escape codes in `kubectl logs`).
                    env("PHOENIX_LOG_FORMAT", "json"),
                ];
                // Its own addresses: where meshed clients may reach ports
                // no Service lists (metrics scrapes of the app and proxy).
                vars.push(field_env("PHOENIX_POD_IPS", "status.podIPs"));
                if !probe_ports.is_empty() {
                    // The kubelet probes from the node's addresses: its plain
                    // TCP to the probed ports (and no other) passes even in
                    // strict mode.
                    vars.push(field_env("PHOENIX_PROBE_SOURCES", "status.hostIPs"));
                    vars.push(env("PHOENIX_PROBE_PORTS", &join(probe_ports)));
                }
                for (annotation, var, min, max) in [
                    (a::THREADS, "PHOENIX_THREADS", 1, 64),
                    (a::MAX_PATH_MTU, "PHOENIX_MAX_PATH_MTU", 1280, 9001),
                ] {
                    if let Some(n) = number(annotations, annotation, min, max)? {
                        vars.push(env(var, &n.to_string()));
                    }
                }
                vars
            }),
            ports: Some(vec![
                ContainerPort {
                    name: Some("phoenix-quic".to_owned()),
                    container_port: i32::from(QUIC_PORT),
                    protocol: Some("UDP".to_owned()),
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("phoenix-admin".to_owned()),
                    container_port: i32::from(ADMIN_PORT),
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                },
            ]),
            // Up to five minutes to get a certificate and config; the app
            // starts only after this succeeds.
            startup_probe: Some(probe("/ready", 1, 300)),
            readiness_probe: Some(probe("/ready", 10, 3)),
            liveness_probe: Some(probe("/live", 10, 3)),
            resources: Some(ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..ResourceRequirements::default()
            }),
            security_context: Some(SecurityContext {
                run_as_user: Some(PROXY_UID),
                run_as_group: Some(PROXY_UID),
                run_as_non_root: Some(true),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                seccomp_profile: runtime_default_seccomp(),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: TOKEN_VOLUME.to_owned(),
                mount_path: TOKEN_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        })
    }

    /// The init container that programs the pod's network namespace.
    pub fn init(&self, annotations: &BTreeMap<String, String>) -> Result<Container, InjectError> {
        // Init never redirects the admin port (`--admin-port`, 4191).
        let skip_in = ports(annotations, annotations::SKIP_INBOUND_PORTS)?;
        let skip_out = ports(annotations, annotations::SKIP_OUTBOUND_PORTS)?;
        let mut args = vec![
            "init".to_owned(),
            "--proxy-uid".to_owned(),
            PROXY_UID.to_string(),
            "--outbound-port".to_owned(),
            OUTBOUND_PORT.to_string(),
            "--inbound-port".to_owned(),
            INBOUND_PORT.to_string(),
            "--admin-port".to_owned(),
            ADMIN_PORT.to_string(),
        ];
        if !skip_in.is_empty() {
            args.push("--skip-inbound-ports".to_owned());
            args.push(join(&skip_in));
        }
        if !skip_out.is_empty() {
            args.push("--skip-outbound-ports".to_owned());
            args.push(join(&skip_out));
        }
        Ok(Container {
            name: INIT_CONTAINER.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            args: Some(args),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_owned(), Quantity("10m".to_owned())),
                    ("memory".to_owned(), Quantity("10Mi".to_owned())),
                ])),
                ..ResourceRequirements::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: INIT_RUN_VOLUME.to_owned(),
                mount_path: "/run".to_owned(),
                ..VolumeMount::default()
            }]),
            security_context: Some(SecurityContext {
                // iptables needs NET_ADMIN (and NET_RAW) and root in the
                // pod's network namespace; nothing else.
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                    drop: Some(vec!["ALL".to_owned()]),
                }),
                seccomp_profile: runtime_default_seccomp(),
                ..SecurityContext::default()
            }),
            ..Container::default()
        })
    }

    /// The init container's writable /run (memory-backed, a few bytes).
    pub fn init_run_volume() -> Volume {
        Volume {
            name: INIT_RUN_VOLUME.to_owned(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                size_limit: Some(Quantity("1Mi".to_owned())),
            }),
            ..Volume::default()
        }
    }

    /// The proxy's credentials volume: the projected ServiceAccount token,
    /// and the namespace's trust bundle (the roots in force when the
    /// container starts; the ConfigMap must exist, so a pod waits for the
    /// control plane to write it rather than start without roots).
    pub fn token_volume() -> Volume {
        Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(TOKEN_AUDIENCE.to_owned()),
                            expiration_seconds: Some(3600),
                            path: "token".to_owned(),
                        }),
                        ..VolumeProjection::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: TRUST_CONFIG_MAP.to_owned(),
                            items: Some(vec![KeyToPath {
                                key: TRUST_KEY.to_owned(),
                                path: TRUST_KEY.to_owned(),
                                mode: None,
                            }]),
                            optional: Some(false),
                        }),
                        ..VolumeProjection::default()
                    },
                ]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        }
    }

    /// The JSON patch injecting the pod template at `base` in `object` (`""`
    /// for a Pod, `/spec/template` for a Deployment). Empty when the pod
    /// already has a proxy: injecting twice changes nothing.
    pub fn patch(&self, object: &Value, base: &str) -> Result<Patch, InjectError> {
        let template = object.pointer(base).ok_or_else(|| InjectError::NoPodSpec {
            path: base.to_owned(),
        })?;
        let spec = template
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| InjectError::NoPodSpec {
                path: format!("{base}/spec"),
            })?;
        let has = |list: &str, name: &str| {
            spec.get(list)
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|c| c["name"] == name))
        };
        if has("initContainers", PROXY_CONTAINER) || has("containers", PROXY_CONTAINER) {
            return Ok(Patch(Vec::new()));
        }
        // A host-network pod shares the node's network namespace: init
        // would redirect the whole node's TCP (the kubelet's included).
        if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
            return Err(InjectError::HostNetwork);
        }
        check_uids(spec)?;
        let annotations = template_annotations(template);
        let proxy = serde_json::to_value(self.proxy(&annotations, &probe_ports(spec))?)
            .map_err(InjectError::Encode)?;
        let init = serde_json::to_value(self.init(&annotations)?).map_err(InjectError::Encode)?;
        let volume = serde_json::to_value(Self::token_volume()).map_err(InjectError::Encode)?;
        let run_volume =
            serde_json::to_value(Self::init_run_volume()).map_err(InjectError::Encode)?;
        let mut ops = Vec::new();
        let mut bad_path = None;
        let mut add = |path: String, value: Value| match PointerBuf::parse(&path) {
            Ok(path) => ops.push(PatchOperation::Add(AddOperation { path, value })),
            Err(_) => bad_path = Some(path),
        };
        let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
        match template.get("metadata").filter(|m| m.is_object()) {
            None => add(
                format!("{base}/metadata"),
                json!({"labels": {MESHED_LABEL: "true"}, "annotations": {INJECTED: self.version}}),
            ),
            Some(meta) => {
                for (field, key, value) in [
                    ("labels", MESHED_LABEL, "true"),
                    ("annotations", INJECTED, self.version.as_str()),
                ] {
                    if meta.get(field).is_some_and(Value::is_object) {
                        add(
                            format!("{base}/metadata/{field}/{}", escape(key)),
                            json!(value),
                        );
                    } else {
                        add(format!("{base}/metadata/{field}"), json!({key: value}));
                    }
                }
            }
        }
        if spec.get("initContainers").is_some_and(Value::is_array) {
            // Inserted at 0 twice: init first, then the proxy, then the rest.
            add(format!("{base}/spec/initContainers/0"), proxy);
            add(format!("{base}/spec/initContainers/0"), init);
        } else {
            add(format!("{base}/spec/initContainers"), json!([init, proxy]));
        }
        if spec.get("volumes").is_some_and(Value::is_array) {
            add(format!("{base}/spec/volumes/-"), volume);
            add(format!("{base}/spec/volumes/-"), run_volume);
        } else {
            add(format!("{base}/spec/volumes"), json!([volume, run_volume]));
        }
        if let Some(path) = bad_path {
            return Err(InjectError::Path(path));
        }
        Ok(Patch(ops))
    }
}

/// Where the pod template of a `kind` lives (`None`: not a workload).
pub fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn disabled_wins_then_enabled_on_either() {
        let on = map(&[(INJECT, "enabled")]);
        let off = map(&[(INJECT, "disabled")]);
        let none = map(&[]);
        assert_eq!(decide(&on, &none), Decision::Inject);
        assert_eq!(decide(&none, &on), Decision::Inject);
        assert!(matches!(decide(&off, &on), Decision::Skip(_)));
        assert!(matches!(decide(&on, &off), Decision::Skip(_)));
        assert!(matches!(decide(&none, &none), Decision::Skip(_)));
        let done = map(&[(INJECT, "enabled"), (INJECTED, "0.1.0")]);
        assert_eq!(decide(&done, &on), Decision::Skip("already injected"));
        // The pod's label counts as the annotation; disabled wins there too.
        let pod = |labels: Value, annotations: Value| {
            template_asks(
                &serde_json::json!({"metadata": {"labels": labels, "annotations": annotations}}),
            )
        };
        let asks = pod(
            serde_json::json!({INJECT: "enabled"}),
            serde_json::json!({}),
        );
        assert_eq!(decide(&asks, &none), Decision::Inject);
        let asks = pod(
            serde_json::json!({INJECT: "disabled"}),
            serde_json::json!({INJECT: "enabled"}),
        );
        assert!(matches!(decide(&asks, &on), Decision::Skip(_)));
        let asks = pod(
            serde_json::json!({INJECT: "enabled"}),
            serde_json::json!({INJECT: "disabled"}),
        );
        assert!(matches!(decide(&asks, &on), Decision::Skip(_)));
    }

    #[test]
    fn bad_annotations_name_the_annotation_and_the_fix() {
        let i = Injector {
            image: "img".into(),
            control_plane: "cp:4180".into(),
            control_plane_identity: "spiffe://td/ns/p/sa/cp".into(),
            version: "0.1.0".into(),
        };
        let e = i
            .init(&map(&[(annotations::SKIP_OUTBOUND_PORTS, "3306,mysql")]))
            .unwrap_err();
        assert!(
            e.to_string().contains("phoenix.dev/skip-outbound-ports"),
            "{e}"
        );
        let e = i
            .proxy(&map(&[(annotations::MEMORY_LIMIT, "lots")]), &[])
            .unwrap_err();
        assert!(e.to_string().contains("not a quantity"), "{e}");
        let c = i
            .proxy(
                &map(&[
                    (annotations::MEMORY_LIMIT, "128Mi"),
                    (annotations::CPU_REQUEST, "0.5"),
                ]),
                &[],
            )
            .unwrap();
        let r = c.resources.unwrap();
        assert_eq!(r.limits.unwrap()["memory"], Quantity("128Mi".into()));
        assert_eq!(r.requests.unwrap()["cpu"], Quantity("0.5".into()));
    }

    #[test]
    fn thread_and_path_mtu_annotations_reach_the_proxy_or_are_refused_by_name() {
        let i = Injector {
            image: "img".into(),
            control_plane: "cp:4180".into(),
            control_plane_identity: "spiffe://td/ns/p/sa/cp".into(),
            version: "0.1.0".into(),
        };
        let var = |c: &Container, name: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        let plain = i.proxy(&map(&[]), &[]).unwrap();
        assert_eq!(var(&plain, "PHOENIX_THREADS"), None, "the proxy's default");
        let tuned = i
            .proxy(
                &map(&[
                    (annotations::THREADS, "4"),
                    (annotations::MAX_PATH_MTU, "9001"),
                ]),
                &[],
            )
            .unwrap();
        assert_eq!(var(&tuned, "PHOENIX_THREADS").as_deref(), Some("4"));
        assert_eq!(var(&tuned, "PHOENIX_MAX_PATH_MTU").as_deref(), Some("9001"));
        for (annotation, bad) in [
            (annotations::THREADS, "0"),
            (annotations::THREADS, "two"),
            (annotations::MAX_PATH_MTU, "65536"),
        ] {
            let e = i.proxy(&map(&[(annotation, bad)]), &[]).unwrap_err();
            let text = e.to_string();
            assert!(
                text.contains(annotation) && text.contains("whole number from"),
                "{text}"
            );
        }
    }
}
