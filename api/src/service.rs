//! Service names: one grammar for every place a service is named.
//!
//! A service name crosses three boundaries: the control plane writes it
//! (from the mesh file or from a Kubernetes Service), the snapshot carries it
//! to the proxies, and the client proxy puts it in the tunnel header, whose
//! serving proxy routes by it. When each of those had its own idea of what a
//! name may contain, the Kubernetes index produced `web.shop:80` and the
//! header codec refused the `:`: every ClusterIP connection was reset. So
//! the grammar lives here, once, and a [`ServiceName`] exists only when it
//! parsed (parse, don't validate): a value that reached a snapshot always
//! encodes.
//!
//! A name is a DNS name (RFC 1123 labels, lowercase) and an optional port:
//! `db` in a mesh file, `<name>.<namespace>:<port>` for a Kubernetes Service
//! port (one upstream per port, so two ports of one Service, or two Services
//! of one name in different namespaces, never collide). The tunnel header
//! carries the two parts as two fields, as Linkerd's transport header does,
//! so the port is a number on the wire rather than text to re-parse. The
//! text form `host:port` is what snapshots, `/config` and logs show.
//!
//! The transport is part of the name, so a Service's TCP and UDP ports of
//! one number (DNS on 53) are two services that cannot collide: TCP is the
//! default and has no suffix, UDP is written `host:port/udp` and travels in
//! a critical header field (a proxy that predates UDP refuses it rather than
//! connecting a datagram flow to a TCP port).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest host part of a service name (a DNS name).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of the host part (a DNS label).
pub const MAX_LABEL_LEN: usize = 63;

/// A service's name: a DNS host part and, for a service port, its number.
///
/// Compared, hashed and ordered as its text form, which it also borrows as
/// (`Borrow<str>`), so maps keyed by names are looked up with a `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// The canonical text, `host` or `host:port`: validated, so equal names
    /// have equal text.
    text: Box<str>,
    /// The service port, when the name is one port of a service (the digits
    /// after the text's last `:`).
    port: Option<u16>,
    /// TCP (no suffix) or UDP (`/udp`).
    transport: Transport,
}

/// The transport a service is reached over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// Streams (the default; no suffix in the text form).
    #[default]
    Tcp,
    /// Datagrams (`/udp` in the text form).
    Udp,
}

/// Why text is not a service name. Each says what is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceNameError {
    /// Nothing before the port, or nothing at all.
    #[error("service name is empty")]
    Empty,
    /// The host part is longer than a DNS name may be.
    #[error("service name is {0} bytes long; at most {MAX_HOST_LEN} are allowed before the port")]
    TooLong(usize),
    /// Two dots in a row, or a dot at either end.
    #[error("service name has an empty label (two dots in a row, or a dot at either end)")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("service name has a label of {0} bytes; DNS labels are at most {MAX_LABEL_LEN}")]
    LabelTooLong(usize),
    /// A label that starts or ends with `-`.
    #[error("a label of the service name starts or ends with `-`")]
    LabelHyphen,
    /// A byte outside `a-z`, `0-9`, `-` and `.`.
    #[error(
        "service name has the character {0:?}; use lowercase letters, digits, `-` and `.` (and `:port` at the end)"
    )]
    BadChar(char),
    /// What follows `:` is not a port number in 1..=65535.
    #[error("the port after `:` must be a number from 1 to 65535, without leading zeros")]
    BadPort,
    /// A `/` suffix other than `/udp` (TCP is the default and has none).
    #[error("the only transport suffix is `/udp` (TCP services have none)")]
    BadTransport,
}

impl ServiceName {
    /// A name from its host part and an optional port.
    pub fn new(host: &str, port: Option<u16>) -> Result<Self, ServiceNameError> {
        check_host(host.as_bytes())?;
        if port == Some(0) {
            return Err(ServiceNameError::BadPort);
        }
        let text = match port {
            Some(port) => format!("{host}:{port}").into(),
            None => host.into(),
        };
        Ok(Self {
            text,
            port,
            transport: Transport::Tcp,
        })
    }

    /// This name over `transport` (`/udp` is appended for UDP).
    pub fn with_transport(self, transport: Transport) -> Self {
        let host_port = self.host_and_port().to_owned();
        let text = match transport {
            Transport::Tcp => host_port.into(),
            Transport::Udp => format!("{host_port}/udp").into(),
        };
        Self {
            text,
            port: self.port,
            transport,
        }
    }

    /// The name of port `port` of the Kubernetes Service `name` in
    /// `namespace`: `<name>.<namespace>:<port>`.
    pub fn kubernetes(name: &str, namespace: &str, port: u16) -> Result<Self, ServiceNameError> {
        Self::new(&format!("{name}.{namespace}"), Some(port))
    }

    /// The DNS part.
    pub fn host(&self) -> &str {
        let host_port = self.host_and_port();
        match host_port.rsplit_once(':') {
            Some((host, _)) => host,
            None => host_port,
        }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn host_and_port(&self) -> &str {
        match self.transport {
            Transport::Tcp => &self.text,
            Transport::Udp => self.text.strip_suffix("/udp").unwrap_or(&self.text),
        }
    }

    /// The text form, `host` or `host:port`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The port, for one port of a service.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

/// Checks the host part: what the tunnel header's service field may carry.
pub(crate) fn check_host(host: &[u8]) -> Result<(), ServiceNameError> {
    if host.is_empty() {
        return Err(ServiceNameError::Empty);
    }
    if host.len() > MAX_HOST_LEN {
        return Err(ServiceNameError::TooLong(host.len()));
    }
    if let Some(&b) = host
        .iter()
        .find(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-' || **b == b'.'))
    {
        return Err(ServiceNameError::BadChar(char::from(b)));
    }
    for label in host.split(|b| *b == b'.') {
        if label.is_empty() {
            return Err(ServiceNameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(ServiceNameError::LabelTooLong(label.len()));
        }
        if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
            return Err(ServiceNameError::LabelHyphen);
        }
    }
    Ok(())
}

impl FromStr for ServiceName {
    type Err = ServiceNameError;

    fn from_str(s: &str) -> Result<Self, ServiceNameError> {
        let (s, transport) = match s.rsplit_once('/') {
            None => (s, Transport::Tcp),
            Some((rest, "udp")) => (rest, Transport::Udp),
            Some(_) => return Err(ServiceNameError::BadTransport),
        };
        let (host, port) = match s.rsplit_once(':') {
            None => (s, None),
            Some((host, port)) => {
                // Canonical digits only, so that equal names have equal text.
                let canonical = !port.is_empty()
                    && !port.starts_with('0')
                    && port.bytes().all(|b| b.is_ascii_digit());
                let port: u16 = canonical
                    .then(|| port.parse().ok())
                    .flatten()
                    .ok_or(ServiceNameError::BadPort)?;
                (host, Some(port))
            }
        };
        Ok(Self::new(host, port)?.with_transport(transport))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::borrow::Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for ServiceName {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceName({self})")
    }
}

impl Serialize for ServiceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(|error| {
            serde::de::Error::custom(format_args!("invalid service name `{text}`: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_kubernetes_names_parse_and_print_back() {
        for text in [
            "db",
            "web.shop:80",
            "a-b.c-d.svc:65535",
            "x1:1",
            "dns.kube-system:53/udp",
        ] {
            let name: ServiceName = text.parse().unwrap();
            assert_eq!(name.to_string(), text);
        }
        let k = ServiceName::kubernetes("web", "shop", 80).unwrap();
        assert_eq!((k.host(), k.port()), ("web.shop", Some(80)));
        assert_eq!(k, "web.shop:80".parse::<ServiceName>().unwrap());
    }

    #[test]
    fn refusals_name_the_problem() {
        use ServiceNameError::*;
        let cases = [
            ("", Empty),
            (":80", Empty),
            ("Web", BadChar('W')),
            ("web_1", BadChar('_')),
            ("web:80:1", BadChar(':')),
            ("a..b", EmptyLabel),
            (".a", EmptyLabel),
            ("-a", LabelHyphen),
            ("a-.b", LabelHyphen),
            ("web:", BadPort),
            ("web:0", BadPort),
            ("web:080", BadPort),
            ("web:65536", BadPort),
            ("web:+1", BadPort),
            ("web:80/tcp", BadTransport),
            ("web:80/", BadTransport),
            ("web/udp/udp", BadChar('/')),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ServiceName>(), Err(want), "{text:?}");
        }
        assert_eq!("a".repeat(64).parse::<ServiceName>(), Err(LabelTooLong(64)));
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.parse::<ServiceName>(), Err(TooLong(255)));
        assert_eq!(ServiceName::new("db", Some(0)), Err(BadPort));
        assert_eq!(ServiceName::new("db:1", None), Err(BadChar(':')));
    }

    #[test]
    fn tcp_and_udp_on_one_port_are_two_services() {
        let tcp: ServiceName = "dns.kube-system:53".parse().unwrap();
        let udp: ServiceName = "dns.kube-system:53/udp".parse().unwrap();
        assert_ne!(tcp, udp);
        assert_eq!((tcp.host(), tcp.port()), (udp.host(), udp.port()));
        assert_eq!(
            (tcp.transport(), udp.transport()),
            (Transport::Tcp, Transport::Udp)
        );
        assert_eq!(tcp.clone().with_transport(Transport::Udp), udp);
        assert_eq!(udp.with_transport(Transport::Tcp), tcp);
    }

    #[test]
    fn serde_is_the_text_form_and_refuses_bad_names() {
        let name: ServiceName = serde_json::from_str("\"db.shop:5432\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"db.shop:5432\"");
        let error = serde_json::from_str::<ServiceName>("\"db.shop:5432:1\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid service name `db.shop:5432:1`"),
            "{error}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_parsed_name_prints_and_parses_back(s in "[a-z0-9.:/-]{0,20}") {
            if let Ok(name) = s.parse::<ServiceName>() {
                proptest::prop_assert_eq!(name.to_string(), s.clone());
                proptest::prop_assert_eq!(name.to_string().parse::<ServiceName>(), Ok(name));
            }
        }
    }
}
