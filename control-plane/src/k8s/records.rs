//! Kubernetes objects reduced to what the mesh needs.
//!
//! Records are small and owned, so the index holds 100,000 endpoints in tens
//! of megabytes rather than whole objects; each conversion is a pure function
//! of one object. Objects the mesh cannot use (a UDP port, an FQDN slice, a
//! pod without an IP) reduce to less, never to an error: the cluster is the
//! truth and the index serves what it can.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::{
    DEFAULT_POLICY_ANNOTATION, DEFAULT_QUIC_PORT, MESHED_LABEL, QUIC_PORT_ANNOTATION,
    SERVICE_NAME_LABEL,
};
use crate::crd::mesh_config::DefaultPolicy;

/// Namespace and name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of a namespaced object (`None` for a cluster-scoped one).
    pub fn of<K: kube::Resource>(obj: &K) -> Option<Self> {
        Some(Self::new(
            obj.meta().namespace.as_deref()?,
            obj.meta().name.as_deref()?,
        ))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service: its cluster addresses and TCP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// ClusterIPs (empty for a headless Service).
    pub cluster_ips: Vec<IpAddr>,
    /// TCP ports.
    pub ports: Vec<ServicePort>,
}

/// One TCP port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (`""` for the single unnamed port): EndpointSlices
    /// resolve the target port per name, so this is how they are matched.
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// What its `appProtocol` declares, when Phoenix acts on it.
    pub protocol: Option<phoenix_api::protocol::Protocol>,
}

/// An EndpointSlice: which Service, its resolved TCP ports, its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRecord {
    /// The Service it belongs to (same namespace).
    pub service: ObjectKey,
    /// Port name → target port number (resolved by Kubernetes per slice,
    /// which is what makes named target ports work).
    pub ports: Vec<(String, u16)>,
    /// The endpoints.
    pub endpoints: Vec<EndpointRecord>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    /// Its addresses (one pod: usually one, two when dual-stack).
    pub addresses: Vec<IpAddr>,
    /// Ready to receive new connections.
    pub ready: bool,
    /// Serving although terminating (used only when nothing is ready, as
    /// kube-proxy does).
    pub serving_terminating: bool,
    /// The pod behind it, when the slice names one.
    pub pod: Option<ObjectKey>,
}

/// A meshed pod: where its proxy accepts QUIC and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Its IPs.
    pub ips: Vec<IpAddr>,
    /// Its ServiceAccount (its identity).
    pub service_account: String,
    /// Its proxy's QUIC port.
    pub quic_port: u16,
}

/// A namespace's mesh settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// `phoenix.dev/default-policy`, when set to a known value.
    pub default_policy: Option<DefaultPolicy>,
    /// The annotation's value when it is not one (reported, then ignored).
    pub invalid_default_policy: Option<String>,
}

/// The Service's record; `None` for an ExternalName Service (no endpoints to mesh).
pub fn service(svc: &Service) -> Option<ServiceRecord> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .fold(Vec::new(), |mut ips, ip| {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            ips
        });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok()?,
                protocol: p
                    .app_protocol
                    .as_deref()
                    .and_then(phoenix_api::protocol::Protocol::from_app_protocol),
            })
        })
        .collect();
    Some(ServiceRecord { cluster_ips, ports })
}

/// The slice's record; `None` when it names no Service or holds FQDNs.
pub fn slice(slice: &EndpointSlice) -> Option<SliceRecord> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let namespace = slice.namespace()?;
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| {
            let c = e.conditions.as_ref();
            // The API says an unset `ready` means ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            EndpointRecord {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready,
                serving_terminating: serving && terminating,
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(ObjectKey::new(
                            r.namespace.as_deref().unwrap_or(&namespace),
                            r.name.as_deref()?,
                        ))
                    }),
            }
        })
        .collect();
    Some(SliceRecord {
        service: ObjectKey::new(&namespace, service),
        ports,
        endpoints,
    })
}

/// The pod's record; `None` unless it is meshed, has an IP and is not finished.
pub fn pod(pod: &Pod) -> Option<PodRecord> {
    if pod.labels().get(MESHED_LABEL).map(String::as_str) != Some("true") {
        return None;
    }
    let status = pod.status.as_ref()?;
    // A finished pod's IP may already belong to another pod.
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse::<IpAddr>().ok())
        // Concrete and distinct: proxies refuse a repeated or wildcard address.
        .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
        .fold(Vec::new(), |mut ips, ip| {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
            ips
        });
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    if ips.is_empty() {
        return None;
    }
    let quic_port = pod
        .annotations()
        .get(QUIC_PORT_ANNOTATION)
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_QUIC_PORT);
    Some(PodRecord {
        ips,
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        quic_port,
    })
}

/// The namespace's record.
pub fn namespace(ns: &Namespace) -> NamespaceRecord {
    let value = ns.annotations().get(DEFAULT_POLICY_ANNOTATION);
    let default_policy = value.and_then(|v| match v.as_str() {
        "allow-mesh" => Some(DefaultPolicy::AllowMesh),
        "allow-namespace" => Some(DefaultPolicy::AllowNamespace),
        "deny" => Some(DefaultPolicy::Deny),
        _ => None,
    });
    NamespaceRecord {
        default_policy,
        invalid_default_policy: value.filter(|_| default_policy.is_none()).cloned(),
    }
}
