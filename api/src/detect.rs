//! Protocol detection: what a client's first bytes say it speaks.
//!
//! A `detect` port reads the first bytes a client sends and classifies them:
//! an HTTP/1.x request line, the HTTP/2 connection preface (h2c with prior
//! knowledge, gRPC), or anything else, which is opaque (the app's own TLS,
//! a database protocol, a banner the server sends first). This is the pure
//! part, over a byte prefix; the proxy bounds how long it waits for those
//! bytes, so a server-first protocol, whose client sends nothing, is never
//! stalled for long.
//!
//! The rules are strict where it costs nothing: a request line must be a
//! method token, one space, a target without spaces or control bytes, one
//! space, `HTTP/1.` and a digit, then CRLF (or a bare LF, which RFC 9112
//! tolerates). Everything else is opaque: a misclassified opaque stream
//! would be parsed as HTTP and break, while misclassified HTTP only loses
//! the HTTP features. A prefix that may still become a request line or the
//! preface asks for more bytes, up to [`MAX_DETECT_LEN`].

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes detection looks at: a request line longer than this is
/// treated as opaque (the proxy's HTTP server would refuse it anyway).
pub const MAX_DETECT_LEN: usize = 8 * 1024;

/// The longest method token accepted (the registered ones are at most 17:
/// `UPDATEREDIRECTREF`).
const MAX_METHOD_LEN: usize = 24;

/// What a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detected {
    /// An HTTP/1.x request.
    Http1,
    /// HTTP/2 with prior knowledge (the preface): h2c, gRPC.
    Http2,
    /// Anything else.
    Opaque,
}

impl Detected {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Opaque => "opaque",
        }
    }
}

/// The verdict on a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detection {
    /// Decided: more bytes would not change it.
    Done(Detected),
    /// The prefix could still be either HTTP version: read more (or, when
    /// the client stops sending, treat it as opaque).
    NeedMore,
}

/// Classifies the first bytes a client sent.
pub fn detect(prefix: &[u8]) -> Detection {
    let h2 = preface_match(prefix);
    let h1 = request_line(prefix);
    match (h2, h1) {
        (Detection::Done(Detected::Http2), _) => h2,
        (_, Detection::Done(Detected::Http1)) => h1,
        (Detection::NeedMore, _) | (_, Detection::NeedMore) if prefix.len() < MAX_DETECT_LEN => {
            Detection::NeedMore
        }
        _ => Detection::Done(Detected::Opaque),
    }
}

fn preface_match(prefix: &[u8]) -> Detection {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] != H2_PREFACE[..n] {
        Detection::Done(Detected::Opaque)
    } else if n == H2_PREFACE.len() {
        Detection::Done(Detected::Http2)
    } else {
        Detection::NeedMore
    }
}

/// RFC 9110 `tchar`: the bytes of a token (a method).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `b` may appear in a request target: visible ASCII, or any
/// non-ASCII byte (lenient servers accept raw UTF-8 in paths).
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

fn request_line(prefix: &[u8]) -> Detection {
    const OPAQUE: Detection = Detection::Done(Detected::Opaque);
    let mut rest = prefix;
    // Method: 1..=MAX_METHOD_LEN tchars, then one space.
    let method = rest.iter().take_while(|b| is_tchar(**b)).count();
    if method > MAX_METHOD_LEN {
        return OPAQUE;
    }
    rest = &rest[method..];
    match rest.first() {
        None => return Detection::NeedMore,
        Some(b' ') if method > 0 => rest = &rest[1..],
        Some(_) => return OPAQUE,
    }
    // Target: one or more target bytes, then one space.
    let target = rest.iter().take_while(|b| is_target_byte(**b)).count();
    rest = &rest[target..];
    match rest.first() {
        None => return Detection::NeedMore,
        Some(b' ') if target > 0 => rest = &rest[1..],
        Some(_) => return OPAQUE,
    }
    // Version: `HTTP/1.` and one digit.
    const VERSION: &[u8] = b"HTTP/1.";
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return OPAQUE;
    }
    if rest.len() <= VERSION.len() {
        return Detection::NeedMore;
    }
    if !rest[VERSION.len()].is_ascii_digit() {
        return OPAQUE;
    }
    rest = &rest[VERSION.len() + 1..];
    // End of line: CRLF, or a bare LF.
    match rest {
        [] | [b'\r'] => Detection::NeedMore,
        [b'\n', ..] | [b'\r', b'\n', ..] => Detection::Done(Detected::Http1),
        _ => OPAQUE,
    }
}

/// Whether an HTTP/1 request head asks to leave HTTP: an `Upgrade` header
/// (WebSocket, h2c) or the CONNECT method. `None` until the head is
/// complete; a head that does not parse is not an upgrade (the HTTP server
/// answers it with a 400). Fuzzed (`fuzz/fuzz_targets/http_head.rs`).
pub fn head_upgrades(bytes: &[u8]) -> Option<bool> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Some(
            request.method == Some("CONNECT")
                || request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("upgrade")),
        ),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GET: &[u8] = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example\r\n\r\n";

    #[test]
    fn classifies_the_common_cases() {
        assert_eq!(detect(GET), Detection::Done(Detected::Http1));
        assert_eq!(
            detect(b"OPTIONS * HTTP/1.0\n"),
            Detection::Done(Detected::Http1)
        );
        assert_eq!(
            detect(b"CONNECT db:5432 HTTP/1.1\r\n"),
            Detection::Done(Detected::Http1)
        );
        assert_eq!(detect(H2_PREFACE), Detection::Done(Detected::Http2));
        // The app's own TLS, a Postgres startup, Redis, a bare newline.
        for opaque in [
            &[0x16, 0x03, 0x01, 0x02, 0x00][..],
            &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f][..],
            b"*1\r\n$4\r\nPING\r\n",
            b"\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1\rX",
            b"GET /a\x01b HTTP/1.1\r\n",
        ] {
            assert_eq!(
                detect(opaque),
                Detection::Done(Detected::Opaque),
                "{opaque:?}"
            );
        }
    }

    #[test]
    fn a_prefix_that_may_still_be_http_asks_for_more() {
        let end = GET.iter().position(|b| *b == b'\n').unwrap();
        for n in 0..=end {
            assert_eq!(
                detect(&GET[..n]),
                Detection::NeedMore,
                "{n} bytes of a request"
            );
        }
        assert_eq!(detect(&GET[..=end]), Detection::Done(Detected::Http1));
        for n in 0..H2_PREFACE.len() {
            assert_eq!(
                detect(&H2_PREFACE[..n]),
                Detection::NeedMore,
                "{n} bytes of the preface"
            );
        }
    }

    #[test]
    fn a_request_line_past_the_bound_is_opaque() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_LEN + 1, b'a');
        assert_eq!(detect(&long), Detection::Done(Detected::Opaque));
        long.truncate(MAX_DETECT_LEN - 1);
        assert_eq!(detect(&long), Detection::NeedMore);
    }

    fn method() -> impl Strategy<Value = String> {
        "[A-Z]{1,12}"
    }

    fn target() -> impl Strategy<Value = String> {
        "/[!-~]{0,200}"
    }

    proptest! {
        #[test]
        fn any_input_gets_a_verdict_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = detect(&bytes);
        }

        /// Every strict prefix of a valid request line asks for more; the
        /// whole line, with anything after it, is HTTP/1.
        #[test]
        fn request_lines_are_http1_and_their_prefixes_need_more(
            method in method(),
            target in target(),
            minor in 0u8..10,
            crlf in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let line = format!("{method} {target} HTTP/1.{minor}{}", if crlf { "\r\n" } else { "\n" });
            let line = line.as_bytes();
            for n in 0..line.len() {
                prop_assert_eq!(detect(&line[..n]), Detection::NeedMore, "{} bytes", n);
            }
            let mut whole = line.to_vec();
            whole.extend_from_slice(&tail);
            prop_assert_eq!(detect(&whole), Detection::Done(Detected::Http1));
        }

        /// Any bytes: the head check never panics.
        #[test]
        fn any_head_is_checked_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = head_upgrades(&bytes);
        }

        /// A complete head upgrades exactly when it has an `Upgrade` header
        /// (in any case) or is a CONNECT; every strict prefix of it is
        /// undecided, so no verdict comes before the head has.
        #[test]
        fn heads_upgrade_only_when_they_ask(
            connect in any::<bool>(),
            upgrade in proptest::option::of("[uU][pP][gG][rR][aA][dD][eE]"),
            target in target(),
            others in proptest::collection::vec(("[a-z][a-z0-9-]{0,15}", "[ -~]{0,40}"), 0..6),
        ) {
            let method = if connect { "CONNECT" } else { "GET" };
            let mut head = format!("{method} {target} HTTP/1.1\r\nHost: web\r\n");
            for (name, value) in &others {
                if !name.eq_ignore_ascii_case("upgrade") {
                    head.push_str(&format!("{name}: {}\r\n", value.trim()));
                }
            }
            if let Some(name) = &upgrade {
                head.push_str(&format!("{name}: websocket\r\n"));
            }
            head.push_str("\r\n");
            let head = head.as_bytes();
            prop_assert_eq!(head_upgrades(head), Some(connect || upgrade.is_some()));
            for n in 0..head.len() {
                prop_assert_eq!(head_upgrades(&head[..n]), None, "{} bytes", n);
            }
        }

        /// A verdict, once reached, stays whatever follows.
        #[test]
        fn a_verdict_does_not_change_with_more_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            more in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if let Detection::Done(verdict) = detect(&bytes) {
                let mut longer = bytes.clone();
                longer.extend_from_slice(&more);
                prop_assert_eq!(detect(&longer), Detection::Done(verdict));
            }
        }
    }
}
