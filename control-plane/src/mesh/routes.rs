//! `routes:` in the mesh file: Gateway API `HTTPRoute` and `GRPCRoute`
//! objects in the shape a cluster takes them (`kind`, `metadata`-like
//! `name` and `namespace`, and the `spec` as the Gateway API writes it),
//! parented to mesh services, so a manifest moves between the two modes
//! with its `spec` unchanged.
//!
//! What Phoenix does not carry out yet (`URLRewrite`, `RequestMirror`,
//! regular-expression matches, retry `backoff`…) is an error naming the
//! field, never silently dropped. A route listed earlier counts as the
//! older one: the spec breaks precedence ties by creation time.

use std::collections::{BTreeMap, BTreeSet};

use phoenix_api::identity::is_dns_label;
use phoenix_api::route::{
    Backend, Filter, HeaderModifier, NameValue, PathMatch, PathRewrite, Redirect, RouteKind,
    RouteMatch, RouteRule,
};
use phoenix_api::snapshot::RetryPolicy;
use phoenix_api::{ServiceName, duration};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Problem;

/// Largest `weight` the Gateway API allows.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One `routes:` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteFile {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: Spanned<String>,
    /// Its name (a DNS label), unique per namespace and kind.
    pub name: Spanned<String>,
    /// Its namespace (default `default`): the service's workloads'
    /// namespace makes it a producer route, any other a consumer route for
    /// that namespace's clients alone.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Gateway API `spec`.
    pub spec: SpecFile,
}

/// A route's `spec`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecFile {
    /// The services it attaches to.
    pub parent_refs: Vec<Spanned<RefFile>>,
    /// In a mesh there is no hostname to match: refused if given.
    #[serde(default)]
    pub hostnames: Option<Spanned<Vec<String>>>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleFile>>,
}

/// A `parentRefs` or `backendRefs` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefFile {
    /// `""` (the core group) only.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` only.
    #[serde(default)]
    pub kind: Option<String>,
    /// The mesh service, as the workloads name it.
    pub name: String,
    /// File-mode services have no namespace: refused if given.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The service port: the service named `<name>:<port>`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `parentRefs` only in a cluster's Gateway, refused here.
    #[serde(default)]
    pub section_name: Option<String>,
    /// `backendRefs`: the share of the rule's requests (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// `backendRefs`: per-backend filters are not carried out yet.
    #[serde(default)]
    pub filters: Option<serde_json::Value>,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFile {
    /// Optional rule name (Gateway API v1.2+), kept for messages only.
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these takes the request.
    #[serde(default)]
    pub matches: Vec<Spanned<MatchFile>>,
    /// Applied in order.
    #[serde(default)]
    pub filters: Vec<Spanned<FilterFile>>,
    /// Where the requests go.
    #[serde(default)]
    pub backend_refs: Vec<Spanned<RefFile>>,
    /// `request` and `backendRequest` (HTTPRoute).
    #[serde(default)]
    pub timeouts: Option<Spanned<TimeoutsFile>>,
    /// The experimental channel's `retry` (GEP-1731, HTTPRoute).
    #[serde(default)]
    pub retry: Option<Spanned<RetryFile>>,
    /// Session persistence is not carried out: refused if given.
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// One match; HTTPRoute's and GRPCRoute's fields together, each checked
/// against the route's kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchFile {
    /// HTTPRoute: `{type: Exact | PathPrefix, value}`; GRPCRoute: absent.
    #[serde(default)]
    pub path: Option<TypedValue>,
    /// HTTPRoute: `{type, name, value}` entries.
    #[serde(default)]
    pub headers: Vec<TypedNameValue>,
    /// HTTPRoute: `{type, name, value}` entries.
    #[serde(default)]
    pub query_params: Vec<TypedNameValue>,
    /// HTTPRoute: a method name (`GET`); GRPCRoute: `{type, service,
    /// method}`.
    #[serde(default)]
    pub method: Option<MethodFile>,
}

/// A path match as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedValue {
    /// `Exact` or `PathPrefix` (the default).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// A header or query parameter match as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedNameValue {
    /// `Exact` (the default) only.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The header or parameter.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// HTTPRoute's `method: GET` or GRPCRoute's `method: {service, method}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MethodFile {
    /// HTTPRoute.
    Http(String),
    /// GRPCRoute.
    Grpc(GrpcMethodFile),
}

/// GRPCRoute's method match.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodFile {
    /// `Exact` (the default) only.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The package-qualified service, e.g. `echo.Echo`.
    #[serde(default)]
    pub service: Option<String>,
    /// The method, e.g. `Unary`.
    #[serde(default)]
    pub method: Option<String>,
}

/// A filter as written: `type` and the member it names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterFile {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier` or
    /// `RequestRedirect`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<ModifierFile>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<ModifierFile>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RedirectFile>,
    /// `URLRewrite` is not carried out yet.
    #[serde(default)]
    pub url_rewrite: Option<serde_json::Value>,
    /// `RequestMirror` is not carried out yet.
    #[serde(default)]
    pub request_mirror: Option<serde_json::Value>,
    /// `ExtensionRef` names nothing Phoenix knows.
    #[serde(default)]
    pub extension_ref: Option<serde_json::Value>,
    /// `CORS` is not carried out yet.
    #[serde(default)]
    pub cors: Option<serde_json::Value>,
}

/// A header modifier as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModifierFile {
    /// Replaced.
    #[serde(default)]
    pub set: Vec<NameValueFile>,
    /// Appended.
    #[serde(default)]
    pub add: Vec<NameValueFile>,
    /// Removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `{name, value}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameValueFile {
    /// Header name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A redirect as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFile {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The new host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The new path.
    #[serde(default)]
    pub path: Option<PathRewriteFile>,
    /// The new port.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<u16>,
}

/// `{type: ReplaceFullPath, replaceFullPath}` or `{type:
/// ReplacePrefixMatch, replacePrefixMatch}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewriteFile {
    /// Which.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `timeouts:` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsFile {
    /// The whole request, retries included (`0s`: no limit).
    #[serde(default)]
    pub request: Option<String>,
    /// Each attempt (`0s`: no limit).
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// GEP-1731's `retry:` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryFile {
    /// HTTP statuses retried (default 503).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries, at most (default 2, at most 10).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Phoenix retries at once: refused if given.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A checked route of the mesh file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRoute {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: RouteKind,
    /// The services it attaches to.
    pub parents: BTreeSet<ServiceName>,
    /// Its rules, in wire form.
    pub rules: Vec<RouteRule>,
}

/// What is wrong with one route field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    /// A kind other than the two routes.
    #[error("kind must be HTTPRoute or GRPCRoute")]
    Kind,
    /// Two routes of one kind, namespace and name.
    #[error("a {0} of this name is already in this namespace; names are unique per namespace")]
    Duplicate(&'static str),
    /// A reference to something other than a Service.
    #[error("only kind Service (group \"\") can be referenced here")]
    RefKind,
    /// A namespace on a file-mode reference.
    #[error(
        "mesh-file services have no namespace: name the service as the workloads' serve lists do"
    )]
    RefNamespace,
    /// A Kubernetes backend without its port.
    #[error("a backendRef to a Service needs its port (the Service port, e.g. port: 80)")]
    BackendPort,
    /// A `sectionName`.
    #[error("sectionName applies to Gateways, not to a mesh Service; remove it")]
    SectionName,
    /// A parent or backend nobody serves.
    #[error("no workload serves service `{0}`; add it to some workload's serve list")]
    Unserved(String),
    /// A route attached to an opaque service.
    #[error(
        "service `{0}` is declared opaque, so its requests cannot be routed; declare it http1, http2 or detect"
    )]
    OpaqueParent(String),
    /// A Service with routes of both kinds.
    #[error("service `{0}` already has routes of the other kind; attach one kind per service")]
    MixedKinds(String),
    /// `hostnames` on a mesh route.
    #[error("hostnames do not apply to mesh routes (GAMMA); remove them")]
    Hostnames,
    /// A field or value Phoenix does not carry out.
    #[error(
        "{0} is not supported by Phoenix yet; remove it (see the README's table of route fields)"
    )]
    Unsupported(&'static str),
    /// A field that does not belong to the route's kind.
    #[error("{0} does not belong in a {1}")]
    WrongKind(&'static str, &'static str),
    /// A path that does not start with `/`.
    #[error("a path must start with `/`")]
    Path,
    /// A method the spec does not list.
    #[error(
        "`{0}` is not an HTTP method; use GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH"
    )]
    Method(String),
    /// A header name or value HTTP cannot carry.
    #[error("`{0}` is not a valid header name, or its value has characters HTTP cannot carry")]
    Header(String),
    /// A weight over the spec's limit.
    #[error("weight {0} is over 1000000")]
    Weight(u32),
    /// A filter whose `type` names no known filter or lacks its member.
    #[error("filter type `{0}` needs its member (e.g. requestHeaderModifier: {{set: [...]}})")]
    FilterMember(String),
    /// A filter type the spec does not define.
    #[error("`{0}` is not a filter type")]
    FilterType(String),
    /// A redirect status outside the set.
    #[error("redirect statusCode {0}: use 301, 302, 303, 307 or 308")]
    RedirectStatus(u16),
    /// A redirect scheme outside the set.
    #[error("redirect scheme `{0}`: use http or https")]
    RedirectScheme(String),
    /// Two redirects, or a redirect beside backends.
    #[error("a rule with a RequestRedirect sends nothing to backends; remove its backendRefs")]
    RedirectWithBackends,
    /// A prefix rewrite without a prefix match.
    #[error("ReplacePrefixMatch needs every match of the rule to be a PathPrefix")]
    PrefixRewrite,
    /// A bad duration.
    #[error("{0}; e.g. 500ms, 2s or 1m")]
    Duration(String),
    /// A backend timeout longer than the request's.
    #[error("backendRequest must not be longer than request")]
    BackendLongerThanRequest,
    /// A retry that cannot be kept.
    #[error("retry: {0}")]
    Retry(&'static str),
}

/// Validates the mesh file's routes. `served` is every service a workload
/// serves with its declared protocol; the result keeps file order.
pub fn validate(
    files: &[RouteFile],
    served: &BTreeMap<ServiceName, Option<phoenix_api::protocol::Protocol>>,
) -> Result<Vec<MeshRoute>, (u64, String, Problem)> {
    let mut routes = Vec::new();
    let mut names = BTreeSet::new();
    let mut kinds: BTreeMap<ServiceName, RouteKind> = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        let at = |f: &str| format!("routes[{i}].{f}");
        let bad = |line: u64, f: &str, p: RouteProblem| (line, at(f), Problem::Route(p));
        let Some(kind) = route_kind(&file.kind.value) else {
            return Err(bad(file.kind.referenced.line(), "kind", RouteProblem::Kind));
        };
        let line = file.name.referenced.line();
        let name = file.name.value.clone();
        if !is_dns_label(&name) {
            return Err((line, at("name"), Problem::DnsLabel));
        }
        let namespace = file
            .namespace
            .clone()
            .unwrap_or_else(|| super::DEFAULT_NAMESPACE.into());
        if !is_dns_label(&namespace) {
            return Err((line, at("namespace"), Problem::DnsLabel));
        }
        if !names.insert((kind, namespace.clone(), name.clone())) {
            return Err(bad(line, "name", RouteProblem::Duplicate(kind.as_str())));
        }
        let SpecFile {
            parent_refs,
            hostnames,
            rules,
        } = &file.spec;
        let mut parents = BTreeSet::new();
        for (j, r) in parent_refs.iter().enumerate() {
            let f = format!("spec.parentRefs[{j}]");
            let service =
                reference(&r.value, served).map_err(|p| bad(r.referenced.line(), &f, p))?;
            if served.get(&service).copied().flatten()
                == Some(phoenix_api::protocol::Protocol::Opaque)
            {
                return Err(bad(
                    r.referenced.line(),
                    &f,
                    RouteProblem::OpaqueParent(service.to_string()),
                ));
            }
            if let Some(&other) = kinds.get(&service)
                && other != kind
            {
                return Err(bad(
                    r.referenced.line(),
                    &f,
                    RouteProblem::MixedKinds(service.to_string()),
                ));
            }
            kinds.insert(service.clone(), kind);
            parents.insert(service);
        }
        let rules = spec_rules(kind, hostnames.as_ref(), rules, &|r| reference(r, served))
            .map_err(|(line, f, p)| bad(line, &f, p))?;
        routes.push(MeshRoute {
            name,
            namespace,
            kind,
            parents,
            rules,
        });
    }
    Ok(routes)
}

/// Names the service a `backendRefs` entry refers to, by the rules of one
/// mode (file mode: a served mesh service; Kubernetes: a Service by
/// namespace, name and port).
pub type ResolveBackend<'a> = dyn Fn(&RefFile) -> Result<ServiceName, RouteProblem> + 'a;

/// A route's `hostnames` and `rules` in wire form: the one validation both
/// modes share, so a spec is accepted or refused alike in the mesh file and
/// in a cluster. Errors carry the line (the rule's), the field under
/// `spec`, and the problem.
pub fn spec_rules(
    kind: RouteKind,
    hostnames: Option<&Spanned<Vec<String>>>,
    rules: &[Spanned<RuleFile>],
    backend: &ResolveBackend<'_>,
) -> Result<Vec<RouteRule>, (u64, String, RouteProblem)> {
    if let Some(h) = hostnames {
        return Err((
            h.referenced.line(),
            "spec.hostnames".into(),
            RouteProblem::Hostnames,
        ));
    }
    rules
        .iter()
        .enumerate()
        .map(|(j, r)| {
            rule(kind, &r.value, backend)
                .map_err(|(f, p)| (r.referenced.line(), format!("spec.rules[{j}]{f}"), p))
        })
        .collect()
}

/// `HTTPRoute` or `GRPCRoute` → its kind.
pub fn route_kind(kind: &str) -> Option<RouteKind> {
    match kind {
        "HTTPRoute" => Some(RouteKind::Http),
        "GRPCRoute" => Some(RouteKind::Grpc),
        _ => None,
    }
}

/// A parent or backend reference → the service it names.
fn reference(
    r: &RefFile,
    served: &BTreeMap<ServiceName, Option<phoenix_api::protocol::Protocol>>,
) -> Result<ServiceName, RouteProblem> {
    if r.group.as_deref().is_some_and(|g| !g.is_empty())
        || r.kind.as_deref().is_some_and(|k| k != "Service")
    {
        return Err(RouteProblem::RefKind);
    }
    if r.namespace.is_some() {
        return Err(RouteProblem::RefNamespace);
    }
    if r.section_name.is_some() {
        return Err(RouteProblem::SectionName);
    }
    let text = match r.port {
        Some(port) => format!("{}:{port}", r.name),
        None => r.name.clone(),
    };
    text.parse::<ServiceName>()
        .ok()
        .filter(|s| served.contains_key(s))
        .ok_or(RouteProblem::Unserved(text))
}

type RuleError = (String, RouteProblem);

fn rule(
    kind: RouteKind,
    r: &RuleFile,
    backend: &ResolveBackend<'_>,
) -> Result<RouteRule, RuleError> {
    let RuleFile {
        name: _,
        matches,
        filters,
        backend_refs,
        timeouts,
        retry,
        session_persistence,
    } = r;
    if session_persistence.is_some() {
        return Err((
            ".sessionPersistence".into(),
            RouteProblem::Unsupported("sessionPersistence"),
        ));
    }
    let matches = matches
        .iter()
        .enumerate()
        .map(|(k, m)| route_match(kind, &m.value).map_err(|p| (format!(".matches[{k}]"), p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut backends = Vec::new();
    for (k, b) in backend_refs.iter().enumerate() {
        let f = || format!(".backendRefs[{k}]");
        if b.value.filters.is_some() {
            return Err((
                f() + ".filters",
                RouteProblem::Unsupported("a backendRef's filters"),
            ));
        }
        let service = backend(&b.value).map_err(|p| (f(), p))?;
        let weight = b.value.weight.unwrap_or(1);
        if weight > MAX_WEIGHT {
            return Err((f() + ".weight", RouteProblem::Weight(weight)));
        }
        backends.push(Backend { service, weight });
    }
    let mut wire_filters = Vec::new();
    for (k, f) in filters.iter().enumerate() {
        let at = format!(".filters[{k}]");
        let filter = filter(&f.value).map_err(|p| (at.clone(), p))?;
        if let Filter::RequestRedirect(redirect) = &filter {
            if !backends.is_empty()
                || wire_filters
                    .iter()
                    .any(|f| matches!(f, Filter::RequestRedirect(_)))
            {
                return Err((at, RouteProblem::RedirectWithBackends));
            }
            if matches!(redirect.path, Some(PathRewrite::ReplacePrefixMatch(_)))
                && (matches.is_empty()
                    || !matches
                        .iter()
                        .all(|m| matches!(m.path, Some(PathMatch::PathPrefix(_)))))
            {
                return Err((at, RouteProblem::PrefixRewrite));
            }
        }
        wire_filters.push(filter);
    }
    let (request_timeout_ms, backend_request_timeout_ms) = match timeouts {
        None => (None, None),
        Some(t) => {
            if kind == RouteKind::Grpc {
                return Err((
                    ".timeouts".into(),
                    RouteProblem::WrongKind("timeouts", "GRPCRoute"),
                ));
            }
            let TimeoutsFile {
                request,
                backend_request,
            } = &t.value;
            let ms = |field: &str, v: &Option<String>| match v {
                None => Ok(None),
                Some(v) => duration::parse(v)
                    .map(|d| (!d.is_zero()).then_some(d.as_millis() as u64))
                    .map_err(|e| {
                        (
                            format!(".timeouts.{field}"),
                            RouteProblem::Duration(e.to_string()),
                        )
                    }),
            };
            let request = ms("request", request)?;
            let backend = ms("backendRequest", backend_request)?;
            if let (Some(r), Some(b)) = (request, backend)
                && b > r
            {
                return Err((
                    ".timeouts.backendRequest".into(),
                    RouteProblem::BackendLongerThanRequest,
                ));
            }
            (request, backend)
        }
    };
    let retry = match retry {
        None => None,
        Some(r) => {
            if kind == RouteKind::Grpc {
                return Err((
                    ".retry".into(),
                    RouteProblem::WrongKind("retry", "GRPCRoute"),
                ));
            }
            let RetryFile {
                codes,
                attempts,
                backoff,
            } = &r.value;
            if backoff.is_some() {
                return Err((
                    ".retry.backoff".into(),
                    RouteProblem::Unsupported("retry backoff (Phoenix retries at once)"),
                ));
            }
            if codes.iter().any(|c| !(500..600).contains(c)) {
                return Err((
                    ".retry.codes".into(),
                    RouteProblem::Retry("codes must be 5xx statuses, e.g. [503]"),
                ));
            }
            let attempts = attempts.unwrap_or(crate::retry::DEFAULT_MAX_RETRIES);
            if attempts == 0 || attempts > 10 {
                return Err((
                    ".retry.attempts".into(),
                    RouteProblem::Retry("attempts must be from 1 to 10"),
                ));
            }
            Some(RetryPolicy {
                status_codes: if codes.is_empty() {
                    vec![503]
                } else {
                    codes.clone()
                },
                grpc_status_codes: Vec::new(),
                max_retries: attempts,
                non_idempotent: false,
                budget_percent: crate::retry::DEFAULT_BUDGET_PERCENT,
                budget_min_per_second: crate::retry::DEFAULT_BUDGET_MIN_PER_SECOND,
            })
        }
    };
    Ok(RouteRule {
        matches,
        backends,
        filters: wire_filters,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
    })
}

/// The methods HTTPRoute's `method` may name.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn route_match(kind: RouteKind, m: &MatchFile) -> Result<RouteMatch, RouteProblem> {
    let MatchFile {
        path,
        headers,
        query_params,
        method,
    } = m;
    let exact = |t: &Option<String>, what: &'static str| match t.as_deref() {
        None | Some("Exact") => Ok(()),
        Some("RegularExpression") => Err(RouteProblem::Unsupported(what)),
        Some(_) => Err(RouteProblem::Unsupported(what)),
    };
    let headers = headers
        .iter()
        .map(|h| {
            exact(&h.kind, "a header match other than Exact")?;
            header(&h.name, &h.value)?;
            Ok(NameValue {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = RouteMatch {
        headers,
        ..RouteMatch::default()
    };
    match kind {
        RouteKind::Http => {
            out.path = match path {
                None => None,
                Some(TypedValue { kind, value }) => {
                    let value = value.clone().unwrap_or_else(|| "/".into());
                    if !value.starts_with('/') {
                        return Err(RouteProblem::Path);
                    }
                    match kind.as_deref() {
                        None | Some("PathPrefix") => Some(PathMatch::PathPrefix(value)),
                        Some("Exact") => Some(PathMatch::Exact(value)),
                        Some(_) => {
                            return Err(RouteProblem::Unsupported(
                                "a path match other than Exact or PathPrefix",
                            ));
                        }
                    }
                }
            };
            out.query_params = query_params
                .iter()
                .map(|q| {
                    exact(&q.kind, "a query parameter match other than Exact")?;
                    Ok(NameValue {
                        name: q.name.clone(),
                        value: q.value.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.method = match method {
                None => None,
                Some(MethodFile::Http(m)) if METHODS.contains(&m.as_str()) => Some(m.clone()),
                Some(MethodFile::Http(m)) => return Err(RouteProblem::Method(m.clone())),
                Some(MethodFile::Grpc(_)) => {
                    return Err(RouteProblem::WrongKind(
                        "a {service, method} match",
                        "HTTPRoute",
                    ));
                }
            };
        }
        RouteKind::Grpc => {
            if path.is_some() {
                return Err(RouteProblem::WrongKind("path", "GRPCRoute"));
            }
            if !query_params.is_empty() {
                return Err(RouteProblem::WrongKind("queryParams", "GRPCRoute"));
            }
            match method {
                None => {}
                Some(MethodFile::Http(_)) => {
                    return Err(RouteProblem::WrongKind(
                        "a method name (use {service, method})",
                        "GRPCRoute",
                    ));
                }
                Some(MethodFile::Grpc(g)) => {
                    exact(&g.kind, "a gRPC method match other than Exact")?;
                    let part = |v: &Option<String>| match v {
                        Some(v) if v.is_empty() || v.contains('/') => Err(RouteProblem::Path),
                        other => Ok(other.clone()),
                    };
                    out.grpc_service = part(&g.service)?;
                    out.grpc_method = part(&g.method)?;
                }
            }
        }
    }
    Ok(out)
}

/// Checks that HTTP can carry `name: value`.
fn header(name: &str, value: &str) -> Result<(), RouteProblem> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let value_ok = value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(RouteProblem::Header(name.to_owned()))
    }
}

fn filter(f: &FilterFile) -> Result<Filter, RouteProblem> {
    let FilterFile {
        kind,
        request_header_modifier,
        response_header_modifier,
        request_redirect,
        url_rewrite: _,
        request_mirror: _,
        extension_ref: _,
        cors: _,
    } = f;
    let missing = || RouteProblem::FilterMember(kind.clone());
    match kind.as_str() {
        "RequestHeaderModifier" => Ok(Filter::RequestHeaderModifier(modifier(
            request_header_modifier.as_ref().ok_or_else(missing)?,
        )?)),
        "ResponseHeaderModifier" => Ok(Filter::ResponseHeaderModifier(modifier(
            response_header_modifier.as_ref().ok_or_else(missing)?,
        )?)),
        "RequestRedirect" => {
            let RedirectFile {
                scheme,
                hostname,
                path,
                port,
                status_code,
            } = request_redirect.as_ref().ok_or_else(missing)?;
            let status_code = status_code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status_code) {
                return Err(RouteProblem::RedirectStatus(status_code));
            }
            if let Some(s) = scheme
                && s != "http"
                && s != "https"
            {
                return Err(RouteProblem::RedirectScheme(s.clone()));
            }
            if let Some(h) = hostname
                && (h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
            {
                return Err(RouteProblem::Header("hostname".into()));
            }
            let path = match path {
                None => None,
                Some(PathRewriteFile {
                    kind,
                    replace_full_path,
                    replace_prefix_match,
                }) => {
                    let (rewrite, value): (fn(String) -> PathRewrite, _) = match kind.as_str() {
                        "ReplaceFullPath" => (PathRewrite::ReplaceFullPath, replace_full_path),
                        "ReplacePrefixMatch" => {
                            (PathRewrite::ReplacePrefixMatch, replace_prefix_match)
                        }
                        _ => return Err(RouteProblem::FilterType(kind.clone())),
                    };
                    let value = value
                        .clone()
                        .ok_or(RouteProblem::FilterMember(kind.clone()))?;
                    if !value.starts_with('/') {
                        return Err(RouteProblem::Path);
                    }
                    Some(rewrite(value))
                }
            };
            Ok(Filter::RequestRedirect(Redirect {
                scheme: scheme.clone(),
                hostname: hostname.clone(),
                port: *port,
                path,
                status_code,
            }))
        }
        "URLRewrite" => Err(RouteProblem::Unsupported("the URLRewrite filter")),
        "RequestMirror" => Err(RouteProblem::Unsupported("the RequestMirror filter")),
        "ExtensionRef" => Err(RouteProblem::Unsupported("the ExtensionRef filter")),
        "CORS" => Err(RouteProblem::Unsupported("the CORS filter")),
        other => Err(RouteProblem::FilterType(other.to_owned())),
    }
}

fn modifier(m: &ModifierFile) -> Result<HeaderModifier, RouteProblem> {
    let ModifierFile { set, add, remove } = m;
    let pairs = |list: &[NameValueFile]| {
        list.iter()
            .map(|nv| {
                header(&nv.name, &nv.value)?;
                Ok(NameValue {
                    name: nv.name.to_ascii_lowercase(),
                    value: nv.value.clone(),
                })
            })
            .collect::<Result<Vec<_>, RouteProblem>>()
    };
    let remove = remove
        .iter()
        .map(|n| header(n, "").map(|()| n.to_ascii_lowercase()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderModifier {
        set: pairs(set)?,
        add: pairs(add)?,
        remove,
    })
}
