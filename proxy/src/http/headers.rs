//! The headers the mesh adds, and the ones no hop may forward.
//!
//! Between proxies a request carries where it goes (`phoenix-dst-service`
//! or `phoenix-dst-addr`) and which HTTP version the client spoke
//! (`phoenix-client-proto`, so the inbound proxy speaks the same one to an
//! app whose port only detects). The inbound proxy removes them and adds
//! `phoenix-client-id`, the client's verified identity, the header an app
//! may trust (as Linkerd's `l5d-client-id`). Every `phoenix-` header a
//! client sends is dropped at its own proxy, so no app can claim another's
//! identity or steer a request.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// The service a request is for (the outbound proxy's name for it).
pub const DST_SERVICE: HeaderName = HeaderName::from_static("phoenix-dst-service");
/// The pod address the app dialled, when it called a pod and not a service.
pub const DST_ADDR: HeaderName = HeaderName::from_static("phoenix-dst-addr");
/// The HTTP version the client spoke: `http1` or `http2`.
pub const CLIENT_PROTO: HeaderName = HeaderName::from_static("phoenix-client-proto");
/// The client's verified SPIFFE ID, as the server's app sees it.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("phoenix-client-id");

/// The prefix every mesh header shares.
const MESH_PREFIX: &str = "phoenix-";

/// Removes every mesh header (`phoenix-*`).
pub fn strip_mesh(headers: &mut HeaderMap) {
    let mesh: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(MESH_PREFIX))
        .cloned()
        .collect();
    for name in mesh {
        headers.remove(&name);
    }
}

/// Removes the connection-specific headers RFC 9110 §7.6.1 says a proxy
/// must not forward: those `Connection` names, and `Connection`,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and
/// `TE` unless it is exactly `trailers` (which gRPC needs and HTTP/2 and
/// HTTP/3 allow).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(&name);
    }
    let trailers_only = headers
        .get_all(header::TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(header::TE);
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols: an `Upgrade`
/// header named by `Connection` (RFC 9110 §7.8), as WebSocket and h2c do.
pub fn upgrades(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a request is gRPC (its content type says so): its errors are
/// then answered as gRPC statuses, which a gRPC client understands.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A header value from a string the mesh made (a service name, an address,
/// a SPIFFE ID): always visible ASCII, so this never fails in practice;
/// `None` rather than a panic if it ever did.
pub fn value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("te", "gzip"),
            ("traceparent", "00-abc-def-01"),
            ("host", "web"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "traceparent"]);
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        assert!(upgrades(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!upgrades(&map(&[("upgrade", "websocket")])));
        assert!(!upgrades(&map(&[("connection", "upgrade")])));
        assert!(!upgrades(&map(&[
            ("connection", "upgraded"),
            ("upgrade", "websocket"),
        ])));
    }

    #[test]
    fn te_trailers_stays_for_grpc() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get("te").unwrap(), "trailers");
    }

    #[test]
    fn every_mesh_header_a_client_sends_is_dropped() {
        let mut h = map(&[
            ("phoenix-client-id", "spiffe://evil/ns/x/sa/y"),
            ("Phoenix-Dst-Service", "db"),
            ("tracestate", "a=b"),
        ]);
        strip_mesh(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["tracestate"]);
    }
}
