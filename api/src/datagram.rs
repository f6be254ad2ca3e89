//! UDP between proxies: the prefix of every QUIC datagram of a UDP flow.
//!
//! A UDP flow (one client address talking to one service) is set up once,
//! on a bidirectional tunnel stream of its own: the client proxy writes a
//! [`ConnectRequest`](crate::header::ConnectRequest) whose service is a UDP
//! name (`dns:53/udp`), the server proxy checks the identity against the
//! allow-list and answers with a [`Status`](crate::header::Status). The
//! stream then stays open, carrying no bytes, for as long as the flow lives:
//! either side ending it ends the flow. The flow's datagrams travel as QUIC
//! datagrams (RFC 9221), each prefixed with the flow's id.
//!
//! The id is the setup stream's *quarter stream id* (its QUIC stream id
//! divided by four), exactly as HTTP datagrams name their request stream
//! (RFC 9297, section 2.1): both proxies know it without a field in the
//! header, it is unique per connection for the connection's life, and it is
//! small (one byte for the first 64 flows, two up to 16,383), encoded as a
//! QUIC variable-length integer (RFC 9000, section 16).
//!
//! ```text
//! flow id   1, 2, 4 or 8 bytes, QUIC varint (the two top bits say which)
//! payload   the UDP datagram's bytes, as the app sent them
//! ```
//!
//! Sans-IO and allocation-free: [`FlowId::encode`] writes the prefix,
//! [`decode`] splits a received datagram into id and payload.

/// The largest value a QUIC varint holds (2^62 - 1).
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;

/// The id of a UDP flow on one peer connection: its setup stream's quarter
/// stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(u64);

/// Why a received datagram has no flow id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// An empty datagram: not even a flow id.
    #[error("empty datagram: no flow id")]
    Empty,
    /// The varint's first byte announces more bytes than arrived.
    #[error("datagram of {len} bytes ends inside its {needed}-byte flow id")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the flow id takes.
        needed: usize,
    },
}

/// A value that does not fit a QUIC varint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("flow id {0} exceeds the QUIC varint maximum 2^62 - 1")]
pub struct FlowIdTooLarge(pub u64);

impl FlowId {
    /// The flow set up on the bidirectional stream of QUIC stream id
    /// `stream_id` (so the flow id is `stream_id / 4`).
    pub fn of_stream(stream_id: u64) -> Self {
        Self(stream_id >> 2)
    }

    /// A flow id from its numeric value.
    pub fn new(value: u64) -> Result<Self, FlowIdTooLarge> {
        if value > MAX_FLOW_ID {
            return Err(FlowIdTooLarge(value));
        }
        Ok(Self(value))
    }

    /// Its numeric value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// How many bytes its prefix takes: 1, 2, 4 or 8.
    pub fn encoded_len(self) -> usize {
        match self.0 {
            0..=0x3f => 1,
            0x40..=0x3fff => 2,
            0x4000..=0x3fff_ffff => 4,
            _ => 8,
        }
    }

    /// Appends the prefix to `out` (the payload goes after it).
    pub fn encode(self, out: &mut Vec<u8>) {
        // `new` and `of_stream` keep the value below 2^62, so the two top
        // bits are free for the length tag.
        match self.encoded_len() {
            1 => out.push(self.0 as u8),
            2 => out.extend_from_slice(&(0x4000 | self.0 as u16).to_be_bytes()),
            4 => out.extend_from_slice(&(0x8000_0000 | self.0 as u32).to_be_bytes()),
            _ => out.extend_from_slice(&(0xc000_0000_0000_0000 | self.0).to_be_bytes()),
        }
    }
}

impl std::fmt::Display for FlowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Splits a received datagram into its flow id and payload (which may be
/// empty: UDP carries empty datagrams, and so do we).
pub fn decode(datagram: &[u8]) -> Result<(FlowId, &[u8]), DatagramError> {
    let &first = datagram.first().ok_or(DatagramError::Empty)?;
    let needed = 1usize << (first >> 6);
    let Some((id, payload)) = datagram.split_at_checked(needed) else {
        return Err(DatagramError::Truncated {
            len: datagram.len(),
            needed,
        });
    };
    let value = id[1..]
        .iter()
        .fold(u64::from(first & 0x3f), |v, &b| (v << 8) | u64::from(b));
    Ok((FlowId(value), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_id_is_the_quarter_stream_id() {
        // Client-initiated bidirectional streams are 0, 4, 8, …: flows 0, 1, 2.
        assert_eq!(FlowId::of_stream(0).get(), 0);
        assert_eq!(FlowId::of_stream(8).get(), 2);
        assert_eq!(FlowId::of_stream(u64::MAX).get(), MAX_FLOW_ID);
    }

    #[test]
    fn a_value_beyond_the_varint_range_is_refused() {
        assert_eq!(FlowId::new(MAX_FLOW_ID).map(FlowId::get), Ok(MAX_FLOW_ID));
        assert_eq!(FlowId::new(1 << 62), Err(FlowIdTooLarge(1 << 62)));
    }

    #[test]
    fn errors_name_what_is_missing() {
        assert_eq!(decode(&[]), Err(DatagramError::Empty));
        assert_eq!(
            decode(&[0x40]),
            Err(DatagramError::Truncated { len: 1, needed: 2 })
        );
        assert_eq!(
            decode(&[0xc0, 0, 0, 0, 0, 0, 0]),
            Err(DatagramError::Truncated { len: 7, needed: 8 })
        );
    }

    #[test]
    fn an_empty_payload_is_a_datagram_too() {
        let mut out = Vec::new();
        FlowId::of_stream(4).encode(&mut out);
        assert_eq!(decode(&out), Ok((FlowId(1), &[][..])));
    }
}
