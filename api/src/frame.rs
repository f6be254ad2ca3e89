//! Framing of the control protocol: a 4-byte big-endian length, then that
//! many bytes of body (JSON, see [`control`](crate::control)).
//!
//! Sans-IO, like the tunnel header codec: [`FrameWriter`] builds a frame in
//! one buffer, [`FrameDecoder`] is fed whatever bytes the stream yields and
//! hands out whole bodies. Each direction has its own limit, checked as soon
//! as the length prefix is read, and the decoder holds only bytes it was
//! given: a client that announces 64 MiB and sends nothing costs the
//! control plane 4 bytes, not a 64 MiB allocation. Requests come from
//! clients that have not proven anything yet, so their limit is small.

/// Length of the big-endian length prefix.
pub const PREFIX_LEN: usize = 4;
/// Largest request body a control plane reads: a bootstrap token and a CSR
/// (a few KiB, even with ML-DSA keys), from a client not yet authenticated.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// Largest response body a proxy reads: a snapshot of a large mesh (10,000
/// Services with 10 endpoints each encode to 9.2 MiB, benches/README.md).
pub const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;
/// The decoder's first allocation for a body, at most: beyond it, the body
/// grows with the bytes that actually arrive.
const INITIAL_BODY: usize = 16 * 1024;

/// Which way a frame travels; each way has its own size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Proxy → control plane ([`MAX_REQUEST_LEN`]).
    Request,
    /// Control plane → proxy ([`MAX_RESPONSE_LEN`]).
    Response,
}

impl Direction {
    /// The largest body accepted this way.
    pub const fn limit(self) -> usize {
        match self {
            Self::Request => MAX_REQUEST_LEN,
            Self::Response => MAX_RESPONSE_LEN,
        }
    }
}

/// Why bytes are not a frame, or a message not a frame's body.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame announces (or its body has) more bytes than its direction allows.
    #[error("control frame of {len} bytes exceeds the {limit}-byte limit of a {direction:?}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit of its direction.
        limit: usize,
        /// Its direction.
        direction: Direction,
    },
    /// The stream ended inside a frame.
    #[error("the stream ended {have} bytes into a control frame of {want}")]
    Truncated {
        /// Bytes of the frame (prefix included) received.
        have: usize,
        /// Bytes of the frame (prefix included) announced, or the prefix's 4.
        want: usize,
    },
    /// The JSON does not match the message shape.
    #[error("control frame is not a valid message")]
    Json(#[source] serde_json::Error),
}

/// A frame being built: the body is written after room for the prefix,
/// which [`finish`](FrameWriter::finish) fills in, so a large body (a
/// snapshot assembled from pre-encoded parts) is never copied to be framed.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    direction: Direction,
}

impl FrameWriter {
    /// An empty frame for `direction`, with room for `body` bytes.
    pub fn new(direction: Direction, body: usize) -> Self {
        let mut buf = Vec::with_capacity(PREFIX_LEN + body);
        buf.extend_from_slice(&[0; PREFIX_LEN]);
        Self { buf, direction }
    }

    /// Appends body bytes.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends one body byte.
    pub fn push(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    /// The frame, prefix filled in; refused if the body is over the limit.
    pub fn finish(mut self) -> Result<Vec<u8>, FrameError> {
        let len = self.buf.len() - PREFIX_LEN;
        let limit = self.direction.limit();
        let too_long = || FrameError::TooLong {
            len,
            limit,
            direction: self.direction,
        };
        if len > limit {
            return Err(too_long());
        }
        let prefix = u32::try_from(len).map_err(|_| too_long())?.to_be_bytes();
        self.buf[..PREFIX_LEN].copy_from_slice(&prefix);
        Ok(self.buf)
    }
}

impl std::io::Write for FrameWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `msg` as one JSON frame travelling `direction`.
pub fn encode_frame<T: serde::Serialize>(
    msg: &T,
    direction: Direction,
) -> Result<Vec<u8>, FrameError> {
    let mut frame = FrameWriter::new(direction, 256);
    serde_json::to_writer(&mut frame, msg).map_err(FrameError::Json)?;
    frame.finish()
}

/// Decodes a frame body as a message.
pub fn decode_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(FrameError::Json)
}

/// Reassembles frames from bytes as they arrive, split anywhere.
///
/// Feed it with [`feed`](Self::feed) (reading at most [`wanted`](Self::wanted)
/// bytes keeps it from ever holding more than the frame in progress), take
/// each complete body with [`take`](Self::take), and at the end of the
/// stream ask [`end`](Self::end) whether it stopped between frames.
#[derive(Debug)]
pub struct FrameDecoder {
    direction: Direction,
    prefix: [u8; PREFIX_LEN],
    /// Prefix bytes received for the frame in progress.
    have_prefix: usize,
    /// The body length, once the prefix is complete (and within the limit).
    len: Option<usize>,
    body: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder for frames travelling `direction`.
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            prefix: [0; PREFIX_LEN],
            have_prefix: 0,
            len: None,
            body: Vec::new(),
        }
    }

    /// How many more bytes complete the prefix or body in progress (0 when
    /// a whole body waits to be taken).
    pub fn wanted(&self) -> usize {
        match self.len {
            None => PREFIX_LEN - self.have_prefix,
            Some(len) => len - self.body.len(),
        }
    }

    /// Consumes bytes up to the end of the frame in progress and returns
    /// how many it took (less than `bytes.len()` only when a frame
    /// completed: take it, then feed the rest). An announced length over
    /// the limit is refused before any of its body is held.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        if self.len.is_none() {
            let n = (PREFIX_LEN - self.have_prefix).min(bytes.len());
            self.prefix[self.have_prefix..self.have_prefix + n].copy_from_slice(&bytes[..n]);
            self.have_prefix += n;
            used = n;
            if self.have_prefix < PREFIX_LEN {
                return Ok(used);
            }
            let len = u32::from_be_bytes(self.prefix) as usize;
            let limit = self.direction.limit();
            if len > limit {
                return Err(FrameError::TooLong {
                    len,
                    limit,
                    direction: self.direction,
                });
            }
            self.len = Some(len);
            self.body = Vec::with_capacity(len.min(INITIAL_BODY));
        }
        let rest = &bytes[used..];
        let n = self.wanted().min(rest.len());
        self.body.extend_from_slice(&rest[..n]);
        Ok(used + n)
    }

    /// The body of the frame just completed, if one is; the decoder then
    /// starts on the next frame.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.len? != self.body.len() {
            return None;
        }
        self.len = None;
        self.have_prefix = 0;
        Some(std::mem::take(&mut self.body))
    }

    /// At the end of the stream: `Ok` when it ended between frames.
    pub fn end(&self) -> Result<(), FrameError> {
        match self.len {
            None if self.have_prefix == 0 => Ok(()),
            None => Err(FrameError::Truncated {
                have: self.have_prefix,
                want: PREFIX_LEN,
            }),
            Some(len) if self.body.len() == len => Ok(()),
            Some(len) => Err(FrameError::Truncated {
                have: PREFIX_LEN + self.body.len(),
                want: PREFIX_LEN + len,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut w = FrameWriter::new(Direction::Response, body.len());
        w.extend_from_slice(body);
        w.finish().unwrap()
    }

    /// Feeds `bytes` in pieces of `piece` bytes; the bodies decoded.
    fn decode_all(
        direction: Direction,
        bytes: &[u8],
        piece: usize,
    ) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut d = FrameDecoder::new(direction);
        let mut out = Vec::new();
        for mut chunk in bytes.chunks(piece.max(1)) {
            while !chunk.is_empty() {
                let used = d.feed(chunk)?;
                chunk = &chunk[used..];
                if let Some(body) = d.take() {
                    out.push(body);
                }
            }
        }
        d.end()?;
        Ok(out)
    }

    #[test]
    fn a_message_round_trips() {
        let msg = serde_json::json!({"type": "subscribe", "wireVersion": 4});
        let bytes = encode_frame(&msg, Direction::Request).unwrap();
        assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
        let bodies = decode_all(Direction::Request, &bytes, bytes.len()).unwrap();
        assert_eq!(decode_body::<serde_json::Value>(&bodies[0]).unwrap(), msg);
    }

    #[test]
    fn byte_by_byte_frames_decode_and_an_empty_body_is_a_frame() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"third"));
        let bodies = decode_all(Direction::Response, &bytes, 1).unwrap();
        assert_eq!(bodies, [b"first".to_vec(), Vec::new(), b"third".to_vec()]);
    }

    #[test]
    fn an_oversized_request_is_refused_from_its_prefix_alone() {
        let mut d = FrameDecoder::new(Direction::Request);
        // 64 MiB announced, nothing sent: refused on the 4th byte, and the
        // decoder allocated nothing for the body.
        let prefix = (MAX_RESPONSE_LEN as u32).to_be_bytes();
        assert_eq!(d.feed(&prefix[..3]).unwrap(), 3);
        let e = d.feed(&prefix[3..]).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::TooLong {
                    len: MAX_RESPONSE_LEN,
                    limit: MAX_REQUEST_LEN,
                    direction: Direction::Request
                }
            ),
            "{e:?}"
        );
        assert_eq!(d.body.capacity(), 0);
        // The same length is a legal response, held only as it arrives.
        let mut d = FrameDecoder::new(Direction::Response);
        assert_eq!(d.feed(&prefix).unwrap(), 4);
        assert!(d.body.capacity() <= INITIAL_BODY);
        assert_eq!(d.wanted(), MAX_RESPONSE_LEN);
        // Over the response limit: refused too.
        let e = FrameDecoder::new(Direction::Response)
            .feed(&(MAX_RESPONSE_LEN as u32 + 1).to_be_bytes())
            .unwrap_err();
        assert!(matches!(e, FrameError::TooLong { .. }), "{e:?}");
    }

    #[test]
    fn a_request_over_the_limit_is_not_encoded() {
        let token = "x".repeat(MAX_REQUEST_LEN);
        let e = encode_frame(&token, Direction::Request).unwrap_err();
        assert!(
            e.to_string().contains("exceeds the 65536-byte limit"),
            "{e}"
        );
        assert!(encode_frame(&token, Direction::Response).is_ok());
    }

    #[test]
    fn a_stream_that_ends_inside_a_frame_is_truncated() {
        let bytes = frame(b"hello");
        for cut in 1..bytes.len() {
            let e = decode_all(Direction::Response, &bytes[..cut], 2).unwrap_err();
            assert!(
                matches!(e, FrameError::Truncated { have, .. } if have == cut),
                "{e:?}"
            );
        }
        assert!(decode_all(Direction::Response, &[], 1).unwrap().is_empty());
    }

    proptest! {
        /// Any bodies, framed back to back and split anywhere, come back whole.
        #[test]
        fn frames_split_anywhere_round_trip(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
            piece in 1usize..64,
        ) {
            let bytes: Vec<u8> = bodies.iter().flat_map(|b| frame(b)).collect();
            prop_assert_eq!(decode_all(Direction::Request, &bytes, piece).unwrap(), bodies);
        }

        /// Arbitrary bytes never panic the decoder, which never holds more
        /// than one frame's worth, and never more than the limit.
        #[test]
        fn arbitrary_bytes_never_panic_or_overrun(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            piece in 1usize..64,
        ) {
            let mut d = FrameDecoder::new(Direction::Request);
            'feed: for mut chunk in bytes.chunks(piece) {
                while !chunk.is_empty() {
                    let Ok(used) = d.feed(chunk) else { break 'feed };
                    prop_assert!(used > 0 || d.wanted() == 0);
                    chunk = &chunk[used..];
                    prop_assert!(d.body.len() <= MAX_REQUEST_LEN);
                    if let Some(body) = d.take() {
                        prop_assert!(body.len() <= MAX_REQUEST_LEN);
                    }
                }
            }
            let _ = d.end();
        }
    }
}
