//! HTTPRoute, GRPCRoute and ReferenceGrant objects reduced to what the
//! index needs to build GAMMA route tables.
//!
//! A route's `spec` is checked by the very code that checks the mesh file's
//! `routes:` ([`spec_rules`]): the typed object is read again in the mesh
//! file's strict shape (its JSON is YAML), so the two modes accept and
//! refuse exactly the same fields, and what Phoenix does not carry out is
//! named, never silently dropped. Only the references differ: here a
//! backend is a Service by namespace, name and port, and a parent is one of
//! the route's `parentRefs` of kind Service (a `parentRef` to a Gateway
//! belongs to some other controller and is left alone).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use phoenix_api::ServiceName;
use phoenix_api::route::{RouteKind, RouteRule};
use serde::Serialize;

use super::records::ObjectKey;
use crate::mesh::routes::{RefFile, RouteProblem, SpecFile, spec_rules};

/// The Gateway API's group: routes are granted by it in ReferenceGrants.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// What stands in for a backend a route may not reach (no ReferenceGrant
/// allows it): three DNS labels, which no Kubernetes Service name
/// (`<name>.<namespace>`) has, so no proxy ever knows it and its share of
/// the requests gets 500, as the spec asks of an invalid backend.
pub const UNRESOLVED_BACKEND: &str = "unresolved.phoenix.invalid";

/// A route or grant as its watch receives it: the metadata and the raw
/// `spec`, read into the generated types per object. One object those
/// types cannot read (a value of a newer Gateway API release) is then
/// that object's refusal, said in its status, instead of a list the
/// watcher cannot decode, which would hold every route (and readiness)
/// back.
#[derive(Debug, serde::Deserialize)]
pub struct Raw<K> {
    /// The object's metadata.
    pub metadata: ObjectMeta,
    /// Its `spec`, as sent.
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(skip)]
    kind: std::marker::PhantomData<fn() -> K>,
}

// By hand: a derive would ask `K: Clone`, which the marker does not need.
impl<K> Clone for Raw<K> {
    fn clone(&self) -> Self {
        Self {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            kind: std::marker::PhantomData,
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> kube::Resource for Raw<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K> Raw<K> {
    /// The route record of this object, for a route kind whose spec type
    /// is `S`.
    pub fn route<S: serde::de::DeserializeOwned + Serialize>(
        &self,
        kind: RouteKind,
        namespace: &str,
    ) -> RouteRecord {
        // The generated types say whether it is a v1.5.1 spec; the check
        // itself reads the spec as sent, so a field the types lack (one
        // of a newer release) is refused by name, never dropped unseen.
        match serde_json::from_value::<S>(self.spec.clone()) {
            Ok(_) => RouteRecord::new(kind, namespace, &self.metadata, &self.spec),
            Err(error) => {
                RouteRecord::unreadable(kind, namespace, &self.metadata, &self.spec, error)
            }
        }
    }
}

/// A route, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: RouteKind,
    /// `metadata.generation`, for status.
    pub generation: Option<i64>,
    /// `creationTimestamp` in seconds: older routes win ties.
    pub created: i64,
    /// The Services it attaches to, in `parentRefs` order.
    pub parents: Vec<Parent>,
    /// Its rules in wire form, or what is wrong with the spec (then it
    /// applies nowhere, and its status says why).
    pub rules: Result<Vec<RouteRule>, RouteError>,
}

/// One `parentRefs` entry of kind Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// Its position in `parentRefs`.
    pub index: usize,
    /// The Service.
    pub service: ObjectKey,
    /// The port, when the route attaches to one port only.
    pub port: Option<u16>,
    /// Whether `namespace` was written (status repeats the ref as written).
    pub namespace_written: bool,
}

/// The controller name Phoenix writes route status under.
pub const CONTROLLER_NAME: &str = "phoenix.dev/mesh";

impl Parent {
    /// The `parentRef` as the route wrote it, for `status.parents[]`.
    pub fn parent_ref(&self) -> serde_json::Value {
        let mut r = serde_json::json!({"group": "", "kind": "Service", "name": self.service.name});
        if self.namespace_written {
            r["namespace"] = self.service.namespace.clone().into();
        }
        if let Some(port) = self.port {
            r["port"] = port.into();
        }
        r
    }
}

/// Why a route's spec was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// A field Phoenix refuses (the mesh file's rules), under `spec`.
    #[error("{field}: {problem}")]
    Field {
        /// Where, e.g. `spec.rules[0].filters[1]`.
        field: String,
        /// What.
        problem: RouteProblem,
    },
    /// A field the mesh file's shape does not have (e.g. an experimental
    /// one Phoenix does not carry).
    #[error("{0}")]
    Shape(Arc<serde_saphyr::Error>),
    /// A spec the Gateway API v1.5.1 types cannot read (a value of a newer
    /// release, say).
    #[error("not a Gateway API v1.5.1 spec: {0}")]
    Typed(Arc<serde_json::Error>),
}

impl PartialEq for RouteError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Field { field, problem },
                Self::Field {
                    field: f,
                    problem: p,
                },
            ) => field == f && problem == p,
            // The decoder's errors have no equality: the same message is
            // the same refusal.
            (Self::Shape(a), Self::Shape(b)) => a.to_string() == b.to_string(),
            (Self::Typed(a), Self::Typed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for RouteError {}

impl RouteRecord {
    /// The record of a route of `kind` in `namespace`, from its metadata
    /// and its typed `spec`.
    pub fn new(kind: RouteKind, namespace: &str, meta: &ObjectMeta, spec: &impl Serialize) -> Self {
        let created = meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        let (parents, rules) = match read(spec) {
            Ok(spec) => (parents(namespace, &spec), rules(kind, namespace, &spec)),
            // Still said in status, on the parents it names.
            Err(error) => (
                lenient_parents(namespace, &serde_json::to_value(spec).unwrap_or_default()),
                Err(error),
            ),
        };
        let rules = rules.and_then(|rules| with_annotated_retry(kind, meta, rules));
        Self {
            kind,
            generation: meta.generation,
            created,
            parents,
            rules,
        }
    }

    /// The record of a route whose `spec` (as JSON) the generated types
    /// cannot read: refused, and said so on each parent Service it names.
    pub fn unreadable(
        kind: RouteKind,
        namespace: &str,
        meta: &ObjectMeta,
        spec: &serde_json::Value,
        error: serde_json::Error,
    ) -> Self {
        Self {
            kind,
            generation: meta.generation,
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
            parents: lenient_parents(namespace, spec),
            rules: Err(RouteError::Typed(Arc::new(error))),
        }
    }

    /// The Services its rules send to (parsed back from their names).
    pub fn backends(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.rules
            .iter()
            .flatten()
            .flat_map(|r| r.backends.iter())
            .filter_map(|b| service_key(&b.service))
    }
}

/// Annotation (Linkerd's style, for the standard channel, which has no
/// `retry` field): the statuses retried, `5xx`, `gateway-error` (502, 503,
/// 504) or a list such as `502,503`.
pub const RETRY_HTTP_ANNOTATION: &str = "retry.phoenix.dev/http";
/// Annotation: retries at most (1 to 10; default 1, as Linkerd's).
pub const RETRY_LIMIT_ANNOTATION: &str = "retry.phoenix.dev/limit";
/// Annotation: the time each attempt may take (as `backendRequest`).
pub const RETRY_TIMEOUT_ANNOTATION: &str = "retry.phoenix.dev/timeout";

/// `rules` with the retry the route's annotations ask for, on every rule
/// that has no `retry` of its own (the field wins where both are given).
fn with_annotated_retry(
    kind: RouteKind,
    meta: &ObjectMeta,
    mut rules: Vec<RouteRule>,
) -> Result<Vec<RouteRule>, RouteError> {
    let annotations = meta.annotations.as_ref();
    let get = |name: &str| annotations.and_then(|a| a.get(name)).map(|v| v.trim());
    let field = |name: &str| format!("metadata.annotations[{name}]");
    let bad = |name: &str, problem| RouteError::Field {
        field: field(name),
        problem,
    };
    let Some(http) = get(RETRY_HTTP_ANNOTATION) else {
        for name in [RETRY_LIMIT_ANNOTATION, RETRY_TIMEOUT_ANNOTATION] {
            if get(name).is_some() {
                return Err(bad(
                    name,
                    RouteProblem::Retry(
                        "set retry.phoenix.dev/http too (e.g. 5xx): it says what is retried",
                    ),
                ));
            }
        }
        return Ok(rules);
    };
    if kind == RouteKind::Grpc {
        return Err(bad(
            RETRY_HTTP_ANNOTATION,
            RouteProblem::WrongKind("a retry", "GRPCRoute"),
        ));
    }
    let codes = retry_codes(http).ok_or_else(|| {
        bad(
            RETRY_HTTP_ANNOTATION,
            RouteProblem::Retry("use 5xx, gateway-error or 5xx statuses such as 502,503"),
        )
    })?;
    let limit = match get(RETRY_LIMIT_ANNOTATION) {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| bad(RETRY_LIMIT_ANNOTATION, RouteProblem::Retry("use 1 to 10")))?,
    };
    let timeout_ms = match get(RETRY_TIMEOUT_ANNOTATION) {
        None => None,
        Some(v) => Some(
            phoenix_api::duration::parse(v)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| {
                    bad(
                        RETRY_TIMEOUT_ANNOTATION,
                        RouteProblem::Duration(e.to_string()),
                    )
                })?,
        )
        .filter(|ms| *ms > 0),
    };
    for rule in rules.iter_mut().filter(|r| r.retry.is_none()) {
        rule.retry = Some(phoenix_api::snapshot::RetryPolicy {
            status_codes: codes.clone(),
            grpc_status_codes: Vec::new(),
            max_retries: limit,
            non_idempotent: false,
            budget_percent: crate::retry::DEFAULT_BUDGET_PERCENT,
            budget_min_per_second: crate::retry::DEFAULT_BUDGET_MIN_PER_SECOND,
        });
        if rule.backend_request_timeout_ms.is_none() {
            rule.backend_request_timeout_ms = timeout_ms;
        }
    }
    Ok(rules)
}

/// `5xx`, `gateway-error` or a comma-separated list of 5xx statuses.
fn retry_codes(text: &str) -> Option<Vec<u16>> {
    match text {
        "5xx" => Some((500..600).collect()),
        "gateway-error" => Some(vec![502, 503, 504]),
        list => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (500..600).contains(c))
            })
            .collect::<Option<Vec<u16>>>()
            .filter(|codes| !codes.is_empty()),
    }
}

/// The spec in the mesh file's shape.
fn read(spec: &impl Serialize) -> Result<SpecFile, RouteError> {
    // The typed spec always serializes; its JSON is a YAML document.
    let json = serde_json::to_string(spec).unwrap_or_default();
    serde_saphyr::from_str::<SpecFile>(&json).map_err(|e| RouteError::Shape(Arc::new(e)))
}

/// The Service parents of a spec read no further: each `parentRefs`
/// entry with a name, whatever else it holds (a field of a newer release
/// must not hide the parent its refusal is reported on).
fn lenient_parents(namespace: &str, spec: &serde_json::Value) -> Vec<Parent> {
    spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, r)| {
            r["group"].as_str().unwrap_or("").is_empty()
                && r["kind"].as_str().unwrap_or("Service") == "Service"
        })
        .filter_map(|(index, r)| {
            let name = r["name"].as_str()?;
            let written = r["namespace"].as_str();
            Some(Parent {
                index,
                service: ObjectKey::new(written.unwrap_or(namespace), name),
                port: r["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                namespace_written: written.is_some(),
            })
        })
        .collect()
}

fn parents(namespace: &str, spec: &SpecFile) -> Vec<Parent> {
    spec.parent_refs
        .iter()
        .enumerate()
        .filter(|(_, r)| is_service(&r.value))
        .map(|(index, r)| Parent {
            index,
            service: ObjectKey::new(
                r.value.namespace.as_deref().unwrap_or(namespace),
                &r.value.name,
            ),
            port: r.value.port,
            namespace_written: r.value.namespace.is_some(),
        })
        .collect()
}

fn rules(kind: RouteKind, namespace: &str, spec: &SpecFile) -> Result<Vec<RouteRule>, RouteError> {
    if let Some((index, _)) = spec
        .parent_refs
        .iter()
        .enumerate()
        .find(|(_, r)| is_service(&r.value) && r.value.section_name.is_some())
    {
        return Err(RouteError::Field {
            field: format!("spec.parentRefs[{index}].sectionName"),
            problem: RouteProblem::Unsupported("sectionName on a Service parent (use port)"),
        });
    }
    let backend = |r: &RefFile| backend(namespace, r);
    spec_rules(kind, spec.hostnames.as_ref(), &spec.rules, &backend)
        .map_err(|(_, field, problem)| RouteError::Field { field, problem })
}

/// A reference to a core Service (group `""`, kind `Service`, the
/// defaults of `backendRefs`).
fn is_service(r: &RefFile) -> bool {
    r.group.as_deref().unwrap_or("").is_empty()
        && r.kind.as_deref().unwrap_or("Service") == "Service"
}

/// A `backendRefs` entry → the mesh name of the Service port it names.
fn backend(namespace: &str, r: &RefFile) -> Result<ServiceName, RouteProblem> {
    if !is_service(r) {
        return Err(RouteProblem::RefKind);
    }
    if r.section_name.is_some() {
        return Err(RouteProblem::SectionName);
    }
    let port = r.port.ok_or(RouteProblem::BackendPort)?;
    let ns = r.namespace.as_deref().unwrap_or(namespace);
    ServiceName::kubernetes(&r.name, ns, port)
        .map_err(|_| RouteProblem::Unserved(format!("{}.{ns}:{port}", r.name)))
}

/// The Service a backend's mesh name (`<name>.<namespace>:<port>`) names.
pub fn service_key(service: &ServiceName) -> Option<ObjectKey> {
    let (name, namespace) = service.host().split_once('.')?;
    (!namespace.contains('.')).then(|| ObjectKey::new(namespace, name))
}

/// A ReferenceGrant: which routes elsewhere may send to Services here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// `(group, kind, namespace)` of each `from`.
    pub from: Vec<(String, String, String)>,
    /// `(group, kind, name)` of each `to` (no name: every one of the kind).
    pub to: Vec<(String, String, Option<String>)>,
}

impl GrantRecord {
    /// Whether a `kind` route in `namespace` may send to the Service
    /// `service` of this grant's namespace.
    pub fn allows(&self, kind: RouteKind, namespace: &str, service: &str) -> bool {
        self.from
            .iter()
            .any(|(g, k, ns)| g == GATEWAY_GROUP && k == kind.as_str() && ns == namespace)
            && self.to.iter().any(|(g, k, name)| {
                g.is_empty() && k == "Service" && name.as_deref().is_none_or(|n| n == service)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(spec: serde_json::Value) -> RouteRecord {
        RouteRecord::new(RouteKind::Http, "shop", &ObjectMeta::default(), &spec)
    }

    #[test]
    fn a_spec_is_checked_as_the_mesh_file_checks_it() {
        let r = record(json!({
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "web", "port": 80},
                {"group": GATEWAY_GROUP, "kind": "Gateway", "name": "edge"},
                {"group": "", "kind": "Service", "name": "web", "namespace": "team"},
            ],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "backendRefs": [
                    {"group": "", "kind": "Service", "name": "web-v2", "port": 80, "weight": 10},
                    {"name": "web", "namespace": "team", "port": 8080, "weight": 90},
                ],
            }],
        }));
        let parents: Vec<_> = r
            .parents
            .iter()
            .map(|p| (p.index, p.service.to_string(), p.port))
            .collect();
        assert_eq!(
            parents,
            vec![
                (0, "shop/web".into(), Some(80)),
                (2, "team/web".into(), None)
            ],
            "the Gateway parent is another controller's"
        );
        let rules = r.rules.as_ref().unwrap();
        let backends: Vec<_> = rules[0]
            .backends
            .iter()
            .map(|b| (b.service.as_str(), b.weight))
            .collect();
        assert_eq!(
            backends,
            vec![("web-v2.shop:80", 10), ("web.team:8080", 90)]
        );
        assert_eq!(
            r.backends().map(|k| k.to_string()).collect::<Vec<_>>(),
            vec!["shop/web-v2", "team/web"]
        );
    }

    #[test]
    fn what_phoenix_does_not_carry_out_is_named() {
        let cases = [
            (
                json!({"parentRefs": [{"name": "web"}], "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}]}]}),
                "spec.rules[0].filters[0]: the URLRewrite filter is not supported",
            ),
            (
                json!({"parentRefs": [{"name": "web"}], "rules": [{"backendRefs": [{"name": "web"}]}]}),
                "spec.rules[0].backendRefs[0]: a backendRef to a Service needs its port",
            ),
            (
                json!({"parentRefs": [{"name": "web", "sectionName": "http"}]}),
                "spec.parentRefs[0].sectionName: sectionName on a Service parent",
            ),
            (
                json!({"parentRefs": [{"name": "web"}], "hostnames": ["web.example"]}),
                "spec.hostnames: hostnames do not apply",
            ),
            (
                json!({"parentRefs": [{"name": "web"}], "rules": [{"externalAuth": {}}]}),
                "externalAuth",
            ),
        ];
        for (spec, want) in cases {
            let r = record(spec.clone());
            // Refused, and still said so on its parent (in status).
            assert_eq!(r.parents.len(), 1, "{spec}");
            let error = r.rules.expect_err(&spec.to_string()).to_string();
            assert!(error.contains(want), "{spec}: {error}");
        }
    }

    #[test]
    fn retry_annotations_fill_in_for_the_standard_channel() {
        let meta = |pairs: &[(&str, &str)]| ObjectMeta {
            annotations: Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let spec = json!({"parentRefs": [{"name": "web"}], "rules": [
            {"backendRefs": [{"name": "web", "port": 80}]},
            {"matches": [{"path": {"value": "/own"}}], "retry": {"codes": [503], "attempts": 3}},
        ]});
        let r = RouteRecord::new(
            RouteKind::Http,
            "shop",
            &meta(&[
                (RETRY_HTTP_ANNOTATION, "gateway-error"),
                (RETRY_LIMIT_ANNOTATION, "2"),
                (RETRY_TIMEOUT_ANNOTATION, "300ms"),
            ]),
            &spec,
        );
        let rules = r.rules.unwrap();
        let retry = rules[0].retry.as_ref().unwrap();
        assert_eq!(
            (retry.status_codes.as_slice(), retry.max_retries),
            (&[502, 503, 504][..], 2)
        );
        assert_eq!(rules[0].backend_request_timeout_ms, Some(300));
        let own = rules[1].retry.as_ref().unwrap();
        assert_eq!(
            (own.status_codes.as_slice(), own.max_retries),
            (&[503][..], 3),
            "the field wins"
        );
        assert_eq!(rules[1].backend_request_timeout_ms, None);
        let five = RouteRecord::new(
            RouteKind::Http,
            "shop",
            &meta(&[(RETRY_HTTP_ANNOTATION, "5xx")]),
            &spec,
        );
        let retry = five.rules.unwrap()[0].retry.clone().unwrap();
        assert_eq!((retry.status_codes.len(), retry.max_retries), (100, 1));
        for (pairs, want) in [
            (
                &[(RETRY_HTTP_ANNOTATION, "404")][..],
                "retry.phoenix.dev/http",
            ),
            (
                &[
                    (RETRY_HTTP_ANNOTATION, "5xx"),
                    (RETRY_LIMIT_ANNOTATION, "11"),
                ][..],
                "retry.phoenix.dev/limit",
            ),
            (
                &[(RETRY_LIMIT_ANNOTATION, "2")][..],
                "set retry.phoenix.dev/http too",
            ),
            (
                &[
                    (RETRY_HTTP_ANNOTATION, "5xx"),
                    (RETRY_TIMEOUT_ANNOTATION, "soon"),
                ][..],
                "retry.phoenix.dev/timeout",
            ),
        ] {
            let r = RouteRecord::new(RouteKind::Http, "shop", &meta(pairs), &spec);
            let error = r.rules.unwrap_err().to_string();
            assert!(error.contains(want), "{pairs:?}: {error}");
        }
    }

    /// Fields of a newer Gateway API release (unknown to the v1.5.1
    /// types) are refused by name, and the refusal still names the parent.
    #[test]
    fn a_newer_field_is_refused_by_name_and_reported_on_its_parent() {
        use crate::gateway::HttpRoute;
        use crate::gateway::httproutes::HttpRouteSpec;
        let raw: Raw<HttpRoute> = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"namespace": "shop", "name": "r"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80,
                                     "futureField": true}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        }))
        .unwrap();
        let r = raw.route::<HttpRouteSpec>(RouteKind::Http, "shop");
        let error = r.rules.unwrap_err().to_string();
        assert!(error.contains("futureField"), "{error}");
        assert_eq!(r.parents.len(), 1);
        assert_eq!(r.parents[0].service, ObjectKey::new("shop", "web"));
        assert_eq!(r.parents[0].port, Some(80));
    }

    #[test]
    fn service_keys_come_back_from_backend_names() {
        let name = ServiceName::kubernetes("web", "shop", 80).unwrap();
        assert_eq!(service_key(&name), Some(ObjectKey::new("shop", "web")));
        let unresolved = ServiceName::new(UNRESOLVED_BACKEND, None).unwrap();
        assert_eq!(service_key(&unresolved), None);
    }

    #[test]
    fn a_grant_allows_only_what_it_names() {
        let grant = GrantRecord {
            from: vec![(GATEWAY_GROUP.into(), "HTTPRoute".into(), "shop".into())],
            to: vec![(String::new(), "Service".into(), Some("web".into()))],
        };
        assert!(grant.allows(RouteKind::Http, "shop", "web"));
        assert!(
            !grant.allows(RouteKind::Grpc, "shop", "web"),
            "another kind"
        );
        assert!(
            !grant.allows(RouteKind::Http, "ops", "web"),
            "another namespace"
        );
        assert!(
            !grant.allows(RouteKind::Http, "shop", "db"),
            "another Service"
        );
        let any = GrantRecord {
            to: vec![(String::new(), "Service".into(), None)],
            ..grant
        };
        assert!(any.allows(RouteKind::Http, "shop", "db"));
    }
}
