//! The Phoenix tunnel header: the first bytes of every proxied QUIC stream.
//!
//! The outbound proxy opens one bidirectional stream per TCP connection and
//! writes a [`ConnectRequest`] naming the destination; the inbound proxy
//! answers with a [`ConnectResponse`] carrying a [`Status`], then both sides
//! relay raw bytes. The codec is sans-IO: [`decode_request`] and
//! [`decode_response`] take whatever bytes have arrived and say either "need
//! more", "here is a frame and how many bytes it used", or why the bytes are
//! not a frame. Nothing here allocates more than [`MAX_BODY_LEN`] bytes, so a
//! hostile peer cannot make the proxy buffer without bound.
//!
//! # Layout (version 1)
//!
//! ```text
//! magic    2 bytes  "PX"
//! version  1 byte   0x01
//! kind     1 byte   0x01 connect request, 0x02 connect response
//! length   2 bytes  big-endian length of the field block (<= 4096)
//! fields   type (1 byte), length (2 bytes, big-endian), value
//! ```
//!
//! Fields are type-length-value so that new ones can be added without a new
//! version. Types `0x00..=0x7f` are *critical*: a decoder that does not know
//! one rejects the frame, because ignoring it could change where bytes go.
//! Types `0x80..=0xff` are advisory and skipped when unknown.
//!
//! | type | field | value |
//! |---|---|---|
//! | `0x01` | service host | the DNS part of a [`ServiceName`] |
//! | `0x02` | original destination | family (4 or 6), address, port |
//! | `0x03` | connection id | u64, big-endian |
//! | `0x04` | service port | u16, big-endian: the port of a service-port name such as Kubernetes' `web.shop:80` (critical: ignoring it would reach another port's service) |
//! | `0x05` | transport | one byte, `1` = UDP; absent for TCP (critical: a proxy that predates UDP refuses the flow) |
//! | `0x10` | status | one byte, a [`Status`] |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::service::{self, ServiceName, ServiceNameError, Transport};

/// The two magic bytes that start every frame.
pub const MAGIC: [u8; 2] = *b"PX";
/// The header version this codec writes and reads.
pub const VERSION: u8 = 1;
/// Largest field block accepted; a frame that claims more is refused at once.
pub const MAX_BODY_LEN: usize = 4096;
/// Longest service name's host part (a DNS name).
pub const MAX_SERVICE_LEN: usize = service::MAX_HOST_LEN;

const PREFIX_LEN: usize = 6;
const KIND_REQUEST: u8 = 0x01;
const KIND_RESPONSE: u8 = 0x02;

const FIELD_SERVICE: u8 = 0x01;
const FIELD_ORIGINAL_DST: u8 = 0x02;
const FIELD_CONNECTION_ID: u8 = 0x03;
const FIELD_SERVICE_PORT: u8 = 0x04;
const FIELD_TRANSPORT: u8 = 0x05;
const TRANSPORT_UDP: u8 = 1;
const FIELD_STATUS: u8 = 0x10;

/// What the outbound proxy asks of the inbound proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The service the app asked for: named when the app used an explicit
    /// outbound listener or dialled a service's virtual address (a
    /// ClusterIP), absent when it dialled a pod's own address.
    pub service: Option<ServiceName>,
    /// The address the app dialled, when its connection was intercepted.
    pub original_dst: Option<SocketAddr>,
    /// Identifies the connection in both proxies' logs.
    pub connection_id: u64,
}

/// The inbound proxy's answer, sent before any payload byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Whether the stream was connected to the upstream, and if not why.
    pub status: Status,
}

/// Outcome of a connect request. The outbound proxy mirrors anything but
/// [`Status::Connected`] to the app as a TCP reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The upstream accepted the connection; payload follows.
    Connected = 0,
    /// The upstream refused or did not answer the TCP connect.
    UpstreamRefused = 1,
    /// The inbound proxy serves no such service or address.
    NoRoute = 2,
    /// The client identity is not on the service's allow-list.
    Denied = 3,
}

impl Status {
    /// Lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::UpstreamRefused => "upstream_refused",
            Status::NoRoute => "no_route",
            Status::Denied => "denied",
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Status::Connected,
            1 => Status::UpstreamRefused,
            2 => Status::NoRoute,
            3 => Status::Denied,
            _ => return None,
        })
    }
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The stream does not start with `PX`: the peer is not a Phoenix proxy.
    #[error("stream does not start with the Phoenix magic bytes")]
    BadMagic,
    /// A version this proxy does not speak.
    #[error("tunnel header version {0} is not supported (this proxy speaks version {VERSION})")]
    UnsupportedVersion(u8),
    /// A response where a request belongs, or the reverse.
    #[error("unexpected frame kind {found:#04x} (expected {expected:#04x})")]
    UnexpectedKind {
        /// The kind the caller decodes.
        expected: u8,
        /// The kind on the wire.
        found: u8,
    },
    /// The field block is longer than [`MAX_BODY_LEN`].
    #[error("header field block of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLong(usize),
    /// A field's length runs past the end of the field block.
    #[error("field {0:#04x} runs past the end of the header")]
    TruncatedField(u8),
    /// The same field appears twice.
    #[error("field {0:#04x} appears twice")]
    DuplicateField(u8),
    /// A critical field this version does not know.
    #[error("unknown critical field {0:#04x}")]
    UnknownCriticalField(u8),
    /// A known field with a value of the wrong size.
    #[error("field {field:#04x} has invalid length {len}")]
    BadFieldLength {
        /// The field type.
        field: u8,
        /// Its length on the wire.
        len: usize,
    },
    /// The service field is not a service name's host part.
    #[error("invalid service name in the header")]
    InvalidService(#[source] ServiceNameError),
    /// A service port or transport field without the service it belongs to.
    #[error("connect request has a service port or transport but no service name")]
    PortWithoutService,
    /// A transport this version does not know.
    #[error("unknown transport {0}")]
    UnknownTransport(u8),
    /// The original-destination field has an unknown address family.
    #[error("original destination has unknown address family {0}")]
    InvalidAddressFamily(u8),
    /// A request names neither a service nor an original destination.
    #[error("connect request names neither a service nor an original destination")]
    MissingDestination,
    /// A request lacks its connection id.
    #[error("connect request has no connection id")]
    MissingConnectionId,
    /// A response lacks its status.
    #[error("connect response has no status")]
    MissingStatus,
    /// A status code this version does not know.
    #[error("unknown status code {0}")]
    UnknownStatus(u8),
}

/// Result of decoding from a buffer that may hold a partial frame.
pub type Decoded<T> = Result<Option<(T, usize)>, HeaderError>;

impl ConnectRequest {
    /// Appends the encoded frame to `out`.
    ///
    /// Fails only when the request names no destination: a [`ServiceName`]
    /// always encodes, so a proxy never sends a header its peer cannot read.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), HeaderError> {
        if self.service.is_none() && self.original_dst.is_none() {
            return Err(HeaderError::MissingDestination);
        }
        let start = begin_frame(out, KIND_REQUEST);
        if let Some(service) = &self.service {
            put_field(out, FIELD_SERVICE, service.host().as_bytes());
            if let Some(port) = service.port() {
                put_field(out, FIELD_SERVICE_PORT, &port.to_be_bytes());
            }
            if service.transport() == Transport::Udp {
                put_field(out, FIELD_TRANSPORT, &[TRANSPORT_UDP]);
            }
        }
        if let Some(dst) = self.original_dst {
            let mut value = Vec::with_capacity(19);
            match dst.ip() {
                IpAddr::V4(ip) => {
                    value.push(4);
                    value.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    value.push(6);
                    value.extend_from_slice(&ip.octets());
                }
            }
            value.extend_from_slice(&dst.port().to_be_bytes());
            put_field(out, FIELD_ORIGINAL_DST, &value);
        }
        put_field(out, FIELD_CONNECTION_ID, &self.connection_id.to_be_bytes());
        end_frame(out, start);
        Ok(())
    }
}

impl ConnectResponse {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = begin_frame(out, KIND_RESPONSE);
        put_field(out, FIELD_STATUS, &[self.status as u8]);
        end_frame(out, start);
    }
}

/// Decodes a connect request from the start of `buf`.
///
/// `Ok(None)` means `buf` holds a valid prefix and more bytes are needed.
pub fn decode_request(buf: &[u8]) -> Decoded<ConnectRequest> {
    let Some((body, used)) = split_frame(buf, KIND_REQUEST)? else {
        return Ok(None);
    };
    let mut host = None;
    let mut port = None;
    let mut transport = None;
    let mut original_dst = None;
    let mut connection_id = None;
    for field in Fields::new(body) {
        let (ty, value) = field?;
        match ty {
            FIELD_SERVICE => {
                service::check_host(value).map_err(HeaderError::InvalidService)?;
                // check_host admits ASCII only, so this never fails.
                let name = std::str::from_utf8(value)
                    .map_err(|_| HeaderError::InvalidService(ServiceNameError::Empty))?;
                set_once(&mut host, ty, name)?;
            }
            FIELD_SERVICE_PORT => {
                let bytes: [u8; 2] = value.try_into().map_err(|_| HeaderError::BadFieldLength {
                    field: ty,
                    len: value.len(),
                })?;
                set_once(&mut port, ty, u16::from_be_bytes(bytes))?;
            }
            FIELD_TRANSPORT => {
                let t = match value {
                    [TRANSPORT_UDP] => Transport::Udp,
                    [other] => return Err(HeaderError::UnknownTransport(*other)),
                    _ => {
                        return Err(HeaderError::BadFieldLength {
                            field: ty,
                            len: value.len(),
                        });
                    }
                };
                set_once(&mut transport, ty, t)?;
            }
            FIELD_ORIGINAL_DST => set_once(&mut original_dst, ty, decode_addr(value)?)?,
            FIELD_CONNECTION_ID => {
                let bytes: [u8; 8] = value.try_into().map_err(|_| HeaderError::BadFieldLength {
                    field: ty,
                    len: value.len(),
                })?;
                set_once(&mut connection_id, ty, u64::from_be_bytes(bytes))?;
            }
            _ => skip_unknown(ty)?,
        }
    }
    let service = match (host, port, transport) {
        (Some(host), port, transport) => Some(
            ServiceName::new(host, port)
                .map_err(HeaderError::InvalidService)?
                .with_transport(transport.unwrap_or_default()),
        ),
        (None, None, None) => None,
        (None, ..) => return Err(HeaderError::PortWithoutService),
    };
    if service.is_none() && original_dst.is_none() {
        return Err(HeaderError::MissingDestination);
    }
    let connection_id = connection_id.ok_or(HeaderError::MissingConnectionId)?;
    Ok(Some((
        ConnectRequest {
            service,
            original_dst,
            connection_id,
        },
        used,
    )))
}

/// Decodes a connect response from the start of `buf`.
///
/// `Ok(None)` means `buf` holds a valid prefix and more bytes are needed.
pub fn decode_response(buf: &[u8]) -> Decoded<ConnectResponse> {
    let Some((body, used)) = split_frame(buf, KIND_RESPONSE)? else {
        return Ok(None);
    };
    let mut status = None;
    for field in Fields::new(body) {
        let (ty, value) = field?;
        match ty {
            FIELD_STATUS => {
                let [code] = value else {
                    return Err(HeaderError::BadFieldLength {
                        field: ty,
                        len: value.len(),
                    });
                };
                let s = Status::from_u8(*code).ok_or(HeaderError::UnknownStatus(*code))?;
                set_once(&mut status, ty, s)?;
            }
            _ => skip_unknown(ty)?,
        }
    }
    let status = status.ok_or(HeaderError::MissingStatus)?;
    Ok(Some((ConnectResponse { status }, used)))
}

fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    start
}

fn end_frame(out: &mut [u8], start: usize) {
    // Encoders only write fields bounded well below MAX_BODY_LEN (a service
    // name's host is at most 253 bytes), so the length always fits in u16.
    let len = (out.len() - start - 2) as u16;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
}

fn put_field(out: &mut Vec<u8>, ty: u8, value: &[u8]) {
    out.push(ty);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// Checks the fixed prefix and returns the field block once it is complete.
fn split_frame(buf: &[u8], kind: u8) -> Result<Option<(&[u8], usize)>, HeaderError> {
    // Check what has arrived so far, byte by byte, so a peer that is not a
    // Phoenix proxy is refused on its first bytes rather than after a timeout.
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Err(HeaderError::BadMagic);
    }
    if let Some(&v) = buf.get(2)
        && v != VERSION
    {
        return Err(HeaderError::UnsupportedVersion(v));
    }
    if let Some(&k) = buf.get(3)
        && k != kind
    {
        return Err(HeaderError::UnexpectedKind {
            expected: kind,
            found: k,
        });
    }
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if len > MAX_BODY_LEN {
        return Err(HeaderError::TooLong(len));
    }
    let end = PREFIX_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((&buf[PREFIX_LEN..end], end)))
}

/// Iterates over the TLV fields of a complete field block.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u8, &'a [u8]), HeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&ty, rest) = self.rest.split_first()?;
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            self.rest = &[];
            return Some(Err(HeaderError::TruncatedField(ty)));
        };
        let len = u16::from_be_bytes(*len) as usize;
        if rest.len() < len {
            self.rest = &[];
            return Some(Err(HeaderError::TruncatedField(ty)));
        }
        let (value, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Ok((ty, value)))
    }
}

fn set_once<T>(slot: &mut Option<T>, ty: u8, value: T) -> Result<(), HeaderError> {
    if slot.is_some() {
        return Err(HeaderError::DuplicateField(ty));
    }
    *slot = Some(value);
    Ok(())
}

fn skip_unknown(ty: u8) -> Result<(), HeaderError> {
    if ty < 0x80 {
        Err(HeaderError::UnknownCriticalField(ty))
    } else {
        Ok(())
    }
}

fn decode_addr(value: &[u8]) -> Result<SocketAddr, HeaderError> {
    let bad_len = || HeaderError::BadFieldLength {
        field: FIELD_ORIGINAL_DST,
        len: value.len(),
    };
    let (&family, rest) = value.split_first().ok_or_else(bad_len)?;
    let ip_len = match family {
        4 => 4,
        6 => 16,
        other => return Err(HeaderError::InvalidAddressFamily(other)),
    };
    if rest.len() != ip_len + 2 {
        return Err(bad_len());
    }
    let (ip, port) = rest.split_at(ip_len);
    let ip = match <[u8; 4]>::try_from(ip) {
        Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        Err(_) => {
            let v6: [u8; 16] = ip.try_into().map_err(|_| bad_len())?;
            IpAddr::V6(Ipv6Addr::from(v6))
        }
    };
    Ok(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ConnectRequest {
        ConnectRequest {
            service: Some("db".parse().unwrap()),
            original_dst: Some("10.0.0.7:5432".parse().unwrap()),
            connection_id: 42,
        }
    }

    fn encoded(req: &ConnectRequest) -> Vec<u8> {
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn request_round_trips_with_trailing_payload() {
        let mut bytes = encoded(&request());
        let frame_len = bytes.len();
        bytes.extend_from_slice(b"payload");
        let (decoded, used) = decode_request(&bytes).unwrap().unwrap();
        assert_eq!(decoded, request());
        assert_eq!(used, frame_len);
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        let bytes = encoded(&request());
        for n in 0..bytes.len() {
            assert_eq!(decode_request(&bytes[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn response_round_trips_every_status() {
        for status in [
            Status::Connected,
            Status::UpstreamRefused,
            Status::NoRoute,
            Status::Denied,
        ] {
            let mut out = Vec::new();
            ConnectResponse { status }.encode(&mut out);
            let (decoded, used) = decode_response(&out).unwrap().unwrap();
            assert_eq!(decoded.status, status);
            assert_eq!(used, out.len());
        }
    }

    #[test]
    fn refuses_foreign_bytes_on_the_first_byte() {
        assert_eq!(decode_request(b"G"), Err(HeaderError::BadMagic));
        assert_eq!(
            decode_request(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::BadMagic)
        );
        assert_eq!(
            decode_request(b"PX\x02"),
            Err(HeaderError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode_request(b"PX\x01\x02"),
            Err(HeaderError::UnexpectedKind {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn refuses_oversized_bodies_before_they_arrive() {
        assert_eq!(
            decode_request(b"PX\x01\x01\xff\xff"),
            Err(HeaderError::TooLong(0xffff))
        );
    }

    #[test]
    fn unknown_fields_critical_or_advisory() {
        let mut bytes = encoded(&request());
        // Append an advisory field (0x90) and fix the length.
        bytes.extend_from_slice(&[0x90, 0, 1, 7]);
        let len = (bytes.len() - PREFIX_LEN) as u16;
        bytes[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(decode_request(&bytes).unwrap().unwrap().0, request());

        let last = bytes.len() - 4;
        bytes[last] = 0x20;
        assert_eq!(
            decode_request(&bytes),
            Err(HeaderError::UnknownCriticalField(0x20))
        );
    }

    #[test]
    fn duplicate_and_missing_fields() {
        let mut bytes = encoded(&ConnectRequest {
            service: Some("db".parse().unwrap()),
            original_dst: None,
            connection_id: 1,
        });
        bytes.extend_from_slice(&[FIELD_CONNECTION_ID, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2]);
        let len = (bytes.len() - PREFIX_LEN) as u16;
        bytes[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode_request(&bytes),
            Err(HeaderError::DuplicateField(FIELD_CONNECTION_ID))
        );

        assert_eq!(
            decode_request(b"PX\x01\x01\x00\x0b\x03\x00\x08\x00\x00\x00\x00\x00\x00\x00\x01"),
            Err(HeaderError::MissingDestination)
        );
        assert_eq!(
            decode_request(b"PX\x01\x01\x00\x05\x01\x00\x02db"),
            Err(HeaderError::MissingConnectionId)
        );
        assert_eq!(
            decode_response(b"PX\x01\x02\x00\x00"),
            Err(HeaderError::MissingStatus)
        );
        assert_eq!(
            decode_response(b"PX\x01\x02\x00\x04\x10\x00\x01\x09"),
            Err(HeaderError::UnknownStatus(9))
        );
    }

    #[test]
    fn encoder_refuses_a_request_without_destination() {
        let mut out = Vec::new();
        let none = ConnectRequest {
            service: None,
            original_dst: None,
            connection_id: 1,
        };
        assert_eq!(none.encode(&mut out), Err(HeaderError::MissingDestination));
    }

    #[test]
    fn kubernetes_service_port_names_round_trip_as_host_and_port() {
        let req = ConnectRequest {
            service: Some("web.shop:80".parse().unwrap()),
            original_dst: None,
            connection_id: 7,
        };
        let bytes = encoded(&req);
        assert_eq!(decode_request(&bytes).unwrap().unwrap().0, req);
        // The port is its own field: the host field holds no `:`.
        let host_field = [&[FIELD_SERVICE, 0, 8][..], b"web.shop"].concat();
        assert!(bytes.windows(host_field.len()).any(|w| w == host_field));
        assert!(
            bytes
                .windows(5)
                .any(|w| w == [FIELD_SERVICE_PORT, 0, 2, 0, 80])
        );
    }

    #[test]
    fn a_udp_service_carries_a_critical_transport_field() {
        let req = ConnectRequest {
            service: Some("dns.kube-system:53/udp".parse().unwrap()),
            original_dst: None,
            connection_id: 3,
        };
        let bytes = encoded(&req);
        assert!(
            bytes
                .windows(4)
                .any(|w| w == [FIELD_TRANSPORT, 0, 1, TRANSPORT_UDP])
        );
        assert_eq!(decode_request(&bytes).unwrap().unwrap().0, req);
        // TCP names carry no transport field, so their bytes are unchanged
        // for older peers (pinned by the goldens in tests/header_codec.rs).
        const { assert!(FIELD_TRANSPORT < 0x80, "the transport field is critical") };
    }

    #[test]
    fn decoder_refuses_bad_service_fields() {
        // A host with a `:` (what an old encoder would have needed).
        assert_eq!(
            decode_request(b"PX\x01\x01\x00\x0a\x01\x00\x07db.s:80"),
            Err(HeaderError::InvalidService(ServiceNameError::BadChar(':')))
        );
        // A port without a host, and a port of the wrong size or zero.
        let id = [FIELD_CONNECTION_ID, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1];
        let frame = |fields: &[&[u8]]| {
            let body: Vec<u8> = fields.concat();
            let mut out = b"PX\x01\x01".to_vec();
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(&body);
            out
        };
        let dst = [FIELD_ORIGINAL_DST, 0, 7, 4, 10, 0, 0, 1, 0, 80];
        assert_eq!(
            decode_request(&frame(&[&dst, &[FIELD_SERVICE_PORT, 0, 2, 0, 80], &id])),
            Err(HeaderError::PortWithoutService)
        );
        let db = [FIELD_SERVICE, 0, 2, b'd', b'b'];
        assert_eq!(
            decode_request(&frame(&[&db, &[FIELD_SERVICE_PORT, 0, 1, 80], &id])),
            Err(HeaderError::BadFieldLength {
                field: FIELD_SERVICE_PORT,
                len: 1
            })
        );
        assert_eq!(
            decode_request(&frame(&[&db, &[FIELD_SERVICE_PORT, 0, 2, 0, 0], &id])),
            Err(HeaderError::InvalidService(ServiceNameError::BadPort))
        );
    }

    #[test]
    fn ipv6_original_destination() {
        let req = ConnectRequest {
            service: None,
            original_dst: Some("[fd00::1]:8080".parse().unwrap()),
            connection_id: u64::MAX,
        };
        let bytes = encoded(&req);
        assert_eq!(decode_request(&bytes).unwrap().unwrap().0, req);
    }
}
