//! HTTP routes on the wire: how a client's requests to one service are
//! matched, changed and split over backend services (Gateway API's
//! `HTTPRoute` and `GRPCRoute` in the mesh profile, GAMMA).
//!
//! The control plane resolves what only it can know (which routes apply to
//! which client, the spec's producer/consumer rules, backend names into
//! services) and sends each proxy the routes of a service it calls in the
//! spec's tie-break order (oldest first, then by namespace and name). The
//! proxy orders the matches by [`Precedence`] (stable, so ties keep that
//! order) and takes the first that matches a request. Both sides use this
//! one ordering, so a control plane's status and a proxy's choice cannot
//! disagree.
//!
//! Wire version 9 added these (`upstream.routes`). A proxy from before
//! ignores them and sends every request to the parent service.

use serde::{Deserialize, Serialize};

use crate::service::ServiceName;
use crate::snapshot::RetryPolicy;

/// Which Gateway API kind a route came from: their matches and their
/// precedence differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RouteKind {
    /// `HTTPRoute`.
    #[serde(rename = "HTTPRoute")]
    Http,
    /// `GRPCRoute`.
    #[serde(rename = "GRPCRoute")]
    Grpc,
}

impl RouteKind {
    /// The kind's name, as in a manifest and the `route_kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTPRoute",
            Self::Grpc => "GRPCRoute",
        }
    }
}

/// One route attached to a service, as one client's proxy gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The route's name (a metrics label).
    pub name: String,
    /// Its namespace (a metrics label).
    pub namespace: String,
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: RouteKind,
    /// Its rules, in the order written.
    pub rules: Vec<RouteRule>,
}

/// One rule: which requests it takes and what happens to them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Any of these matches the rule; none: every request (an
    /// `HTTPRoute`'s default is the path prefix `/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Where matched requests go, split by weight; none: the parent
    /// service itself (GAMMA: a rule without backends keeps its service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// From the request's first byte to its response's last, retries
    /// included (`timeouts.request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// For each attempt to a backend (`timeouts.backendRequest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_timeout_ms: Option<u64>,
    /// Retries of the rule's requests; replaces the service's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// What a request must carry to match. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The path (`HTTPRoute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The method, e.g. `GET` (`HTTPRoute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers with exactly these values (names are case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
    /// Query parameters with exactly these values (`HTTPRoute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<NameValue>,
    /// The gRPC service, e.g. `echo.Echo` (`GRPCRoute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    /// The gRPC method, e.g. `Unary` (`GRPCRoute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<String>,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A prefix of whole segments: `/api` takes `/api` and `/api/x`,
    /// not `/apis`.
    PathPrefix(String),
}

/// A header or query parameter and its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameValue {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A backend service and its share of the rule's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The service; its endpoints come in its own `upstream` resource,
    /// which the control plane sends with the route.
    pub service: ServiceName,
    /// Its relative share; 0 takes none.
    pub weight: u32,
}

/// What a rule does to a request or its response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Filter {
    /// Changes the request's headers before it is sent.
    RequestHeaderModifier(HeaderModifier),
    /// Changes the response's headers before the client gets them.
    ResponseHeaderModifier(HeaderModifier),
    /// Answers with a redirect instead of sending the request.
    RequestRedirect(Redirect),
}

/// Header changes: `set` replaces, `add` appends, `remove` deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Headers set to these values, replacing any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<NameValue>,
    /// Headers added beside any already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NameValue>,
    /// Headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A redirect: each part given replaces the request's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301 or 302 (the standard channel), or 303, 307, 308.
    pub status_code: u16,
}

/// How a redirect rewrites the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathRewrite {
    /// The whole path.
    ReplaceFullPath(String),
    /// The part the rule's `PathPrefix` matched.
    ReplacePrefixMatch(String),
}

/// How specific a match is, by the Gateway API's precedence rules: a
/// greater value wins. Routes tie on equal values and then keep their
/// order on the wire (oldest, then by namespace and name), and within a
/// route, the first rule wins.
///
/// `HTTPRoute`: an exact path before any prefix, a longer prefix before a
/// shorter, then a method before none, then more header matches, then more
/// query-parameter matches. `GRPCRoute`: a longer service, then a longer
/// method, then more header matches (there are no hostnames in a mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence([usize; 5]);

impl RouteMatch {
    /// This match's precedence, read as a `kind` route's.
    pub fn precedence(&self, kind: RouteKind) -> Precedence {
        match kind {
            RouteKind::Http => {
                let (exact, prefix) = match &self.path {
                    Some(PathMatch::Exact(_)) => (1, 0),
                    Some(PathMatch::PathPrefix(p)) => (0, p.len()),
                    // The default: a prefix match on `/`.
                    None => (0, 1),
                };
                Precedence([
                    exact,
                    prefix,
                    usize::from(self.method.is_some()),
                    self.headers.len(),
                    self.query_params.len(),
                ])
            }
            RouteKind::Grpc => Precedence([
                self.grpc_service.as_ref().map_or(0, String::len),
                self.grpc_method.as_ref().map_or(0, String::len),
                self.headers.len(),
                0,
                0,
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: Some(p),
            ..RouteMatch::default()
        }
    }

    #[test]
    fn http_precedence_follows_the_spec_order() {
        let exact = path(PathMatch::Exact("/a".into()));
        let long = path(PathMatch::PathPrefix("/api/v1".into()));
        let short = path(PathMatch::PathPrefix("/api".into()));
        let method = RouteMatch {
            method: Some("GET".into()),
            ..short.clone()
        };
        let header = RouteMatch {
            headers: vec![NameValue {
                name: "x".into(),
                value: "1".into(),
            }],
            ..method.clone()
        };
        let query = RouteMatch {
            query_params: header.headers.clone(),
            ..header.clone()
        };
        let all = RouteMatch::default();
        let p = |m: &RouteMatch| m.precedence(RouteKind::Http);
        // Exact beats the longest prefix; a longer prefix beats anything
        // on a shorter one; then method, headers, query parameters.
        assert!(p(&exact) > p(&long));
        assert!(p(&long) > p(&query));
        assert!(p(&query) > p(&header));
        assert!(p(&header) > p(&method));
        assert!(p(&method) > p(&short));
        assert!(p(&short) > p(&all));
        assert_eq!(p(&all), p(&path(PathMatch::PathPrefix("/".into()))));
    }

    #[test]
    fn grpc_precedence_prefers_longer_service_then_method_then_headers() {
        let m = |s: Option<&str>, me: Option<&str>, h: usize| RouteMatch {
            grpc_service: s.map(Into::into),
            grpc_method: me.map(Into::into),
            headers: (0..h)
                .map(|i| NameValue {
                    name: format!("h{i}"),
                    value: "v".into(),
                })
                .collect(),
            ..RouteMatch::default()
        };
        let p = |x: RouteMatch| x.precedence(RouteKind::Grpc);
        assert!(p(m(Some("echo.Echo"), None, 0)) > p(m(Some("e.E"), Some("Unary"), 3)));
        assert!(p(m(Some("e.E"), Some("Unary"), 0)) > p(m(Some("e.E"), None, 3)));
        assert!(p(m(None, None, 1)) > p(m(None, None, 0)));
    }

    #[test]
    fn the_wire_form_reads_back_and_is_the_gateway_api_shape() {
        let route = Route {
            name: "web-canary".into(),
            namespace: "default".into(),
            kind: RouteKind::Http,
            rules: vec![RouteRule {
                matches: vec![path(PathMatch::PathPrefix("/api".into()))],
                backends: vec![Backend {
                    service: "web-v2".parse().unwrap(),
                    weight: 10,
                }],
                filters: vec![Filter::RequestRedirect(Redirect {
                    path: Some(PathRewrite::ReplacePrefixMatch("/v2".into())),
                    status_code: 302,
                    ..Redirect::default()
                })],
                request_timeout_ms: Some(2000),
                ..RouteRule::default()
            }],
        };
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(
            json["rules"][0]["matches"][0]["path"],
            serde_json::json!({"type": "PathPrefix", "value": "/api"})
        );
        assert_eq!(json["rules"][0]["filters"][0]["type"], "RequestRedirect");
        let back: Route = serde_json::from_value(json).unwrap();
        assert_eq!(back, route);
    }
}
