//! Control frames read from a QUIC stream: the one async loop around the
//! sans-IO [`FrameDecoder`], shared by the proxy and the control plane.
//!
//! It reads at most what the frame in progress still wants, so nothing past
//! a frame is ever read, and the decoder holds only bytes that arrived.

use phoenix_api::frame::{FrameDecoder, FrameError};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The bytes are not a frame (too long for its direction, cut short).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream was reset or the connection lost.
    #[error("the control stream failed")]
    Stream(#[source] quinn::ReadError),
}

/// The next frame's body; `None` when the stream ended cleanly between
/// frames. `frames` lives as long as the stream.
pub async fn read_body(
    recv: &mut quinn::RecvStream,
    frames: &mut FrameDecoder,
) -> Result<Option<Vec<u8>>, ReadFrameError> {
    loop {
        if let Some(body) = frames.take() {
            return Ok(Some(body));
        }
        match recv.read_chunk(frames.wanted(), true).await {
            Ok(Some(chunk)) => {
                frames.feed(&chunk.bytes)?;
            }
            Ok(None) => {
                frames.end()?;
                return Ok(None);
            }
            Err(error) => return Err(ReadFrameError::Stream(error)),
        }
    }
}
