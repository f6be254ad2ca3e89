//! A service's HTTP routes, validated, and the choice of the rule that
//! takes a request (Gateway API `HTTPRoute` and `GRPCRoute`, mesh
//! profile).
//!
//! Pure: no I/O and no clock, so matching, precedence and the weighted
//! split are tested by calling them. The table is built once per config;
//! a request walks its matches most specific first and stops at the first
//! that holds.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use phoenix_api::ServiceName;
use phoenix_api::route::{self as wire, PathMatch, PathRewrite, RouteKind};

use crate::config::{ConfigError, RetryConfig};

/// The routes of one service, matches ordered most specific first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    matcher: Matcher,
    rule: Arc<Rule>,
}

/// Which route a rule belongs to: the route metrics' labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteId {
    /// The route's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: RouteKind,
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The route it is part of.
    pub route: Arc<RouteId>,
    /// Backends and their weights; empty: the parent service.
    pub backends: Vec<(ServiceName, u32)>,
    /// Header changes to the request.
    pub request_headers: Option<HeaderEdit>,
    /// Header changes to the response.
    pub response_headers: Option<HeaderEdit>,
    /// A redirect answered instead of sending the request.
    pub redirect: Option<wire::Redirect>,
    /// The whole request's limit, retries included.
    pub request_timeout: Option<Duration>,
    /// Each attempt's limit, to its response's head.
    pub backend_timeout: Option<Duration>,
    /// Replaces the service's retry policy.
    pub retry: Option<RetryConfig>,
}

/// Where a rule sends one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick<'a> {
    /// The rule has no backends: the parent service takes it.
    Parent,
    /// This backend, drawn by weight.
    Backend(&'a ServiceName),
    /// Every weight is zero: no backend may take it (a 500 by the spec).
    Nothing,
}

/// Header changes, checked: what HTTP can carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdit {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdit {
    /// Applies the changes to `headers`: set, then add, then remove (the
    /// spec's order; a name both set and removed ends removed).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Matcher {
    path: Option<PathMatch>,
    method: Option<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
    query: Vec<(String, String)>,
    grpc_service: Option<String>,
    grpc_method: Option<String>,
}

/// The rule a request takes, and what of its path the rule's prefix
/// matched (for a redirect's `ReplacePrefixMatch`).
#[derive(Clone, Debug)]
pub struct Selected<'a> {
    /// The rule.
    pub rule: &'a Arc<Rule>,
    /// The matched prefix (without a trailing `/`), if the match was a
    /// `PathPrefix`.
    pub prefix: Option<&'a str>,
}

impl RouteTable {
    /// Whether the service has no routes (every request goes to it).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rule that takes a request, most specific match first; `None`:
    /// no rule does (a 404 by the spec).
    pub fn select(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Selected<'_>> {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        self.entries.iter().find_map(|e| {
            e.matcher
                .matches(method, path, query, headers)
                .then_some(Selected {
                    rule: &e.rule,
                    prefix: match &e.matcher.path {
                        Some(PathMatch::PathPrefix(p)) => Some(p.as_str()),
                        _ => None,
                    },
                })
        })
    }

    /// Validates the routes of `service` (listed oldest first).
    pub fn build(key: &str, routes: &[wire::Route]) -> Result<Self, ConfigError> {
        let mut entries: Vec<(wire::Precedence, Entry)> = Vec::new();
        for route in routes {
            let wire::Route {
                name,
                namespace,
                kind,
                rules,
            } = route;
            let id = Arc::new(RouteId {
                name: name.clone(),
                namespace: namespace.clone(),
                kind: *kind,
            });
            for rule in rules {
                let built = Arc::new(Rule::build(key, &id, rule)?);
                let matches = if rule.matches.is_empty() {
                    vec![wire::RouteMatch::default()]
                } else {
                    rule.matches.clone()
                };
                for m in &matches {
                    entries.push((
                        m.precedence(*kind),
                        Entry {
                            matcher: Matcher::build(key, m)?,
                            rule: built.clone(),
                        },
                    ));
                }
            }
        }
        // Stable: equal precedence keeps route order, then rule order.
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        Ok(Self {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        })
    }
}

/// What is wrong with a route on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    /// A header name or value HTTP cannot carry.
    #[error("header `{0}` cannot be carried by HTTP")]
    Header(String),
    /// A method that is not one.
    #[error("`{0}` is not an HTTP method")]
    Method(String),
    /// A path that does not start with `/`.
    #[error("path `{0}` does not start with `/`")]
    Path(String),
    /// A redirect status outside 3xx.
    #[error("redirect status {0} is not a redirect")]
    RedirectStatus(u16),
    /// A zero timeout.
    #[error("a rule timeout is zero")]
    ZeroTimeout,
    /// A retry policy the proxy cannot keep bounded.
    #[error("{0}")]
    Retry(#[from] crate::config::RetryProblem),
}

fn pair(nv: &wire::NameValue) -> Result<(HeaderName, HeaderValue), RouteProblem> {
    let bad = || RouteProblem::Header(nv.name.clone());
    Ok((
        HeaderName::from_bytes(nv.name.as_bytes()).map_err(|_| bad())?,
        HeaderValue::from_str(&nv.value).map_err(|_| bad())?,
    ))
}

impl HeaderEdit {
    fn build(m: &wire::HeaderModifier) -> Result<Self, RouteProblem> {
        let wire::HeaderModifier { set, add, remove } = m;
        Ok(Self {
            set: set.iter().map(pair).collect::<Result<_, _>>()?,
            add: add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| RouteProblem::Header(n.clone()))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Rule {
    fn build(key: &str, route: &Arc<RouteId>, rule: &wire::RouteRule) -> Result<Self, ConfigError> {
        let wire::RouteRule {
            matches: _,
            backends,
            filters,
            request_timeout_ms,
            backend_request_timeout_ms,
            retry,
        } = rule;
        let bad = |problem: RouteProblem| ConfigError::Route {
            key: key.to_owned(),
            route: route.name.clone(),
            problem,
        };
        let mut built = Self {
            route: route.clone(),
            backends: backends
                .iter()
                .map(|b| (b.service.clone(), b.weight))
                .collect(),
            request_headers: None,
            response_headers: None,
            redirect: None,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        };
        for filter in filters {
            match filter {
                wire::Filter::RequestHeaderModifier(m) => {
                    built.request_headers = Some(HeaderEdit::build(m).map_err(bad)?);
                }
                wire::Filter::ResponseHeaderModifier(m) => {
                    built.response_headers = Some(HeaderEdit::build(m).map_err(bad)?);
                }
                wire::Filter::RequestRedirect(r) => {
                    if !(300..400).contains(&r.status_code) {
                        return Err(bad(RouteProblem::RedirectStatus(r.status_code)));
                    }
                    built.redirect = Some(r.clone());
                }
            }
        }
        let positive = |ms: &Option<u64>| match ms {
            Some(0) => Err(bad(RouteProblem::ZeroTimeout)),
            other => Ok(other.map(Duration::from_millis)),
        };
        built.request_timeout = positive(request_timeout_ms)?;
        built.backend_timeout = positive(backend_request_timeout_ms)?;
        built.retry = retry
            .as_ref()
            .map(|r| RetryConfig::validate(key, r))
            .transpose()?;
        Ok(built)
    }

    /// The backend for a request, drawn by weight with `r` (uniform over
    /// `u64`).
    pub fn pick(&self, r: u64) -> Pick<'_> {
        if self.backends.is_empty() {
            return Pick::Parent;
        }
        let total: u64 = self.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Pick::Nothing;
        }
        let mut point = r % total;
        for (service, weight) in &self.backends {
            let weight = u64::from(*weight);
            if point < weight {
                return Pick::Backend(service);
            }
            point -= weight;
        }
        Pick::Nothing
    }

    /// The redirect's response head for a request to `uri` (authority
    /// `authority`), or `None` without a redirect.
    pub fn redirect_location(
        &self,
        uri: &Uri,
        authority: &str,
        prefix: Option<&str>,
    ) -> Option<(StatusCode, String)> {
        let r = self.redirect.as_ref()?;
        let status = StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
        let scheme = r.scheme.as_deref().unwrap_or("http");
        let (host, port) = split_authority(authority);
        let host = r.hostname.as_deref().unwrap_or(host);
        // The spec: a port given is used; else the request's, unless the
        // scheme changed (then the new scheme's default); the default
        // port of the scheme is left out.
        let port = match (r.port, &r.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => port,
        };
        let default = if scheme == "https" { 443 } else { 80 };
        let authority = match port {
            Some(p) if p != default => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let path = uri.path();
        let path = match &r.path {
            None => path.to_owned(),
            Some(PathRewrite::ReplaceFullPath(p)) => p.clone(),
            Some(PathRewrite::ReplacePrefixMatch(p)) => {
                let rest = prefix
                    .map(trim_prefix)
                    .and_then(|pre| path.strip_prefix(pre))
                    .unwrap_or("");
                let base = p.trim_end_matches('/');
                match (base.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    _ => format!("{base}{rest}"),
                }
            }
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        Some((status, format!("{scheme}://{authority}{path}{query}")))
    }
}

/// `host[:port]` → its parts (IPv6 literals keep their brackets).
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// A prefix without its trailing `/` (`/` itself is kept as ``).
fn trim_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

impl Matcher {
    fn build(key: &str, m: &wire::RouteMatch) -> Result<Self, ConfigError> {
        let wire::RouteMatch {
            path,
            method,
            headers,
            query_params,
            grpc_service,
            grpc_method,
        } = m;
        let bad = |problem: RouteProblem| ConfigError::Route {
            key: key.to_owned(),
            route: String::new(),
            problem,
        };
        if let Some(PathMatch::Exact(p) | PathMatch::PathPrefix(p)) = path
            && !p.starts_with('/')
        {
            return Err(bad(RouteProblem::Path(p.clone())));
        }
        Ok(Self {
            path: path.clone(),
            method: method
                .as_ref()
                .map(|m| {
                    Method::from_bytes(m.as_bytes())
                        .map_err(|_| bad(RouteProblem::Method(m.clone())))
                })
                .transpose()?,
            headers: headers
                .iter()
                .map(|h| pair(h).map_err(bad))
                .collect::<Result<_, _>>()?,
            query: query_params
                .iter()
                .map(|q| (q.name.clone(), q.value.clone()))
                .collect(),
            grpc_service: grpc_service.clone(),
            grpc_method: grpc_method.clone(),
        })
    }

    fn matches(&self, method: &Method, path: &str, query: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::PathPrefix(p)) => prefix_matches(trim_prefix(p), path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
            && self
                .query
                .iter()
                .all(|(name, value)| first_param(query, name) == Some(value.as_str()))
            && self.grpc_matches(path)
    }

    /// A gRPC call's path is `/<service>/<method>`.
    fn grpc_matches(&self, path: &str) -> bool {
        if self.grpc_service.is_none() && self.grpc_method.is_none() {
            return true;
        }
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return false;
        };
        self.grpc_service.as_deref().is_none_or(|s| s == service)
            && self.grpc_method.as_deref().is_none_or(|m| m == method)
    }
}

/// Whether `prefix` (without a trailing `/`) takes `path` by whole
/// segments: `/api` takes `/api`, `/api/` and `/api/x`, not `/apis`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.is_empty() || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The value of the first parameter `name` in `query` (as sent, not
/// decoded: the spec compares exact values).
fn first_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_api::route::{Backend, NameValue, Route, RouteMatch, RouteRule};
    use proptest::prelude::*;

    fn route(name: &str, kind: RouteKind, rules: Vec<RouteRule>) -> Route {
        Route {
            name: name.into(),
            namespace: "default".into(),
            kind,
            rules,
        }
    }

    fn to(service: &str, matches: Vec<RouteMatch>) -> RouteRule {
        RouteRule {
            matches,
            backends: vec![Backend {
                service: service.parse().unwrap(),
                weight: 1,
            }],
            ..RouteRule::default()
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch {
            path: Some(PathMatch::PathPrefix(p.into())),
            ..RouteMatch::default()
        }
    }

    fn chosen(table: &RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        match table.select(&Method::from_bytes(method.as_bytes()).unwrap(), &uri, &map) {
            None => "404".into(),
            Some(s) => match s.rule.pick(0) {
                Pick::Backend(b) => b.to_string(),
                Pick::Parent => "parent".into(),
                Pick::Nothing => "500".into(),
            },
        }
    }

    #[test]
    fn the_most_specific_match_wins_across_routes() {
        let older = route(
            "older",
            RouteKind::Http,
            vec![to("api", vec![prefix("/api")]), to("root", vec![])],
        );
        let newer = route(
            "newer",
            RouteKind::Http,
            vec![
                to("v1", vec![prefix("/api/v1/")]),
                to(
                    "exact",
                    vec![RouteMatch {
                        path: Some(PathMatch::Exact("/api".into())),
                        ..RouteMatch::default()
                    }],
                ),
                to(
                    "canary",
                    vec![RouteMatch {
                        headers: vec![NameValue {
                            name: "x-canary".into(),
                            value: "1".into(),
                        }],
                        ..prefix("/api")
                    }],
                ),
                to("tie", vec![prefix("/api")]),
            ],
        );
        let t = RouteTable::build("upstream/web", &[older, newer]).unwrap();
        assert_eq!(chosen(&t, "GET", "/api", &[]), "exact");
        assert_eq!(chosen(&t, "GET", "/api/v1/x", &[]), "v1");
        assert_eq!(
            chosen(&t, "GET", "/api/v1", &[]),
            "v1",
            "a trailing / is ignored"
        );
        assert_eq!(chosen(&t, "GET", "/api/x", &[("x-canary", "1")]), "canary");
        assert_eq!(chosen(&t, "GET", "/api/x", &[("X-Canary", "2")]), "api");
        // Equal precedence: the older route's rule wins over the newer's.
        assert_eq!(chosen(&t, "GET", "/api/x", &[]), "api");
        assert_eq!(
            chosen(&t, "GET", "/apis", &[]),
            "root",
            "prefixes take whole segments"
        );
        assert_eq!(chosen(&t, "GET", "/", &[]), "root");
    }

    #[test]
    fn method_query_and_no_match() {
        let r = route(
            "r",
            RouteKind::Http,
            vec![
                to(
                    "post",
                    vec![RouteMatch {
                        method: Some("POST".into()),
                        ..prefix("/")
                    }],
                ),
                to(
                    "q",
                    vec![RouteMatch {
                        query_params: vec![NameValue {
                            name: "v".into(),
                            value: "2".into(),
                        }],
                        ..prefix("/")
                    }],
                ),
                to("only", vec![prefix("/only")]),
            ],
        );
        let t = RouteTable::build("upstream/web", &[r]).unwrap();
        assert_eq!(chosen(&t, "POST", "/x?v=2", &[]), "post");
        assert_eq!(chosen(&t, "GET", "/x?a=1&v=2", &[]), "q");
        assert_eq!(
            chosen(&t, "GET", "/x?v=3&v=2", &[]),
            "404",
            "the first value counts"
        );
        assert_eq!(chosen(&t, "GET", "/only/a", &[]), "only");
        assert_eq!(chosen(&t, "GET", "/x", &[]), "404");
    }

    #[test]
    fn grpc_routes_match_service_and_method() {
        let m = |s: Option<&str>, me: Option<&str>| RouteMatch {
            grpc_service: s.map(Into::into),
            grpc_method: me.map(Into::into),
            ..RouteMatch::default()
        };
        let r = route(
            "g",
            RouteKind::Grpc,
            vec![
                to("svc", vec![m(Some("echo.Echo"), None)]),
                to("unary", vec![m(Some("echo.Echo"), Some("Unary"))]),
                to("any-stream", vec![m(None, Some("Stream"))]),
            ],
        );
        let t = RouteTable::build("upstream/echo", &[r]).unwrap();
        assert_eq!(chosen(&t, "POST", "/echo.Echo/Unary", &[]), "unary");
        assert_eq!(chosen(&t, "POST", "/echo.Echo/Stream", &[]), "svc");
        assert_eq!(chosen(&t, "POST", "/other.Svc/Stream", &[]), "any-stream");
        assert_eq!(chosen(&t, "POST", "/other.Svc/Unary", &[]), "404");
    }

    #[test]
    fn bad_routes_are_refused_naming_the_problem() {
        let with_header = |name: &str| {
            route(
                "bad",
                RouteKind::Http,
                vec![to(
                    "x",
                    vec![RouteMatch {
                        headers: vec![NameValue {
                            name: name.into(),
                            value: "v".into(),
                        }],
                        ..RouteMatch::default()
                    }],
                )],
            )
        };
        let err = RouteTable::build("upstream/web", &[with_header("bad name")]).unwrap_err();
        assert!(err.to_string().contains("bad name"), "{err}");
        let no_slash = route("r", RouteKind::Http, vec![to("x", vec![prefix("api")])]);
        assert!(RouteTable::build("upstream/web", &[no_slash]).is_err());
    }

    #[test]
    fn zero_weights_take_nothing_and_no_backends_keep_the_parent() {
        let rule = |weights: &[u32]| Rule {
            route: Arc::new(RouteId {
                name: "r".into(),
                namespace: "d".into(),
                kind: RouteKind::Http,
            }),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| (format!("b{i}").parse().unwrap(), *w))
                .collect(),
            request_headers: None,
            response_headers: None,
            redirect: None,
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        };
        assert_eq!(rule(&[]).pick(7), Pick::Parent);
        assert_eq!(rule(&[0, 0]).pick(7), Pick::Nothing);
        let zero_first = rule(&[0, 5]);
        for r in 0..20 {
            assert!(matches!(zero_first.pick(r), Pick::Backend(b) if b.as_str() == "b1"));
        }
    }

    proptest! {
        /// Over every draw, each backend gets exactly its weight's share.
        #[test]
        fn weights_split_draws_in_proportion(weights in prop::collection::vec(0u32..50, 1..5)) {
            let r = Rule {
                route: Arc::new(RouteId { name: "r".into(), namespace: "d".into(), kind: RouteKind::Http }),
                backends: weights.iter().enumerate().map(|(i, w)| (format!("b{i}").parse().unwrap(), *w)).collect(),
                request_headers: None, response_headers: None, redirect: None,
                request_timeout: None, backend_timeout: None, retry: None,
            };
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            if total == 0 {
                prop_assert_eq!(r.pick(3), Pick::Nothing);
            } else {
                let mut counts = vec![0u64; weights.len()];
                for draw in 0..total {
                    let Pick::Backend(b) = r.pick(draw) else { panic!("no backend") };
                    let i: usize = b.as_str()[1..].parse().unwrap();
                    counts[i] += 1;
                }
                let want: Vec<u64> = weights.iter().map(|w| u64::from(*w)).collect();
                prop_assert_eq!(counts, want);
            }
        }

        /// Matching never panics, whatever the path, query and headers.
        #[test]
        fn matching_takes_any_request(path in "/[ -~]{0,40}", query in "[ -~]{0,40}") {
            let t = RouteTable::build("upstream/web", &[route("r", RouteKind::Http, vec![
                to("q", vec![RouteMatch { query_params: vec![NameValue { name: "a".into(), value: "1".into() }], ..prefix("/a") }]),
            ])]).unwrap();
            let text = format!("{}?{}", path.replace(['?', '#', ' '], ""), query.replace(['#', ' '], ""));
            if let Ok(uri) = text.parse::<Uri>() {
                let _ = t.select(&Method::GET, &uri, &HeaderMap::new());
            }
        }
    }

    #[test]
    fn redirects_build_their_location_by_the_spec() {
        let rule = |r: wire::Redirect| Rule {
            route: Arc::new(RouteId {
                name: "r".into(),
                namespace: "d".into(),
                kind: RouteKind::Http,
            }),
            backends: vec![],
            request_headers: None,
            response_headers: None,
            redirect: Some(r),
            request_timeout: None,
            backend_timeout: None,
            retry: None,
        };
        let uri: Uri = "/old/page?x=1".parse().unwrap();
        let full = rule(wire::Redirect {
            path: Some(PathRewrite::ReplaceFullPath("/new".into())),
            status_code: 301,
            ..wire::Redirect::default()
        });
        assert_eq!(
            full.redirect_location(&uri, "web:8080", None),
            Some((
                StatusCode::MOVED_PERMANENTLY,
                "http://web:8080/new?x=1".into()
            ))
        );
        let prefix = rule(wire::Redirect {
            scheme: Some("https".into()),
            hostname: Some("example.com".into()),
            path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
            status_code: 302,
            ..wire::Redirect::default()
        });
        assert_eq!(
            prefix.redirect_location(&uri, "web:8080", Some("/old/")),
            Some((StatusCode::FOUND, "https://example.com/v2/page?x=1".into()))
        );
        let port = rule(wire::Redirect {
            port: Some(80),
            status_code: 307,
            ..wire::Redirect::default()
        });
        assert_eq!(
            port.redirect_location(&uri, "web:8080", None),
            Some((
                StatusCode::TEMPORARY_REDIRECT,
                "http://web/old/page?x=1".into()
            ))
        );
    }
}
