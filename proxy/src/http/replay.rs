//! Request bodies kept for a retry.
//!
//! A retried request must be sent again byte for byte, so the body of a
//! request its policy may retry is copied as it streams to the first
//! endpoint, up to [`MAX_REPLAY_BYTES`]. Nothing waits for the copy: the
//! first attempt streams exactly as an unretried one would (a bidi gRPC
//! stream keeps flowing). A retry is possible only when the whole body,
//! trailers included, had gone by the time the response came and fitted
//! in the copy.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, Ended, Polled, Tap, Tapped};

/// The most body bytes kept for a replay (the and Linkerd's 64 KiB).
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Copy {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    /// The body was read to its end.
    complete: bool,
    /// The body outgrew [`MAX_REPLAY_BYTES`]: the copy was dropped.
    overflow: bool,
}

/// The first attempt's body: the request's, copied as it is read.
pub type Recorded<B> = Tapped<B, Recorder>;

/// Copies a body's frames into the [`Replay`].
pub struct Recorder {
    copy: Arc<Mutex<Copy>>,
}

impl Recorder {
    fn copy(&self) -> std::sync::MutexGuard<'_, Copy> {
        self.copy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tap for Recorder {
    fn data(&mut self, data: &Bytes) {
        let mut copy = self.copy();
        copy.bytes += data.len();
        if copy.bytes > MAX_REPLAY_BYTES {
            copy.overflow = true;
            copy.data = Vec::new();
        } else if !copy.overflow {
            copy.data.push(data.clone());
        }
    }

    fn end(self, how: Ended<'_>) {
        let mut copy = self.copy();
        match how {
            Ended::Trailers(trailers) => {
                copy.trailers = Some(trailers.clone());
                copy.complete = true;
            }
            Ended::Complete => copy.complete = true,
            Ended::Failed => copy.overflow = true,
            // Half sent: nothing to replay.
            Ended::Dropped => {}
        }
    }
}

/// A handle on the copy, for later attempts.
#[derive(Clone, Debug)]
pub struct Replay {
    copy: Arc<Mutex<Copy>>,
}

/// Wraps `inner` so that it can be replayed.
pub fn record<B: Body>(inner: B) -> (Recorded<B>, Replay) {
    let copy = Arc::new(Mutex::new(Copy {
        // A body that is already at its end (a GET) is never polled.
        complete: inner.is_end_stream(),
        ..Copy::default()
    }));
    (
        Tapped::new(inner, Recorder { copy: copy.clone() }),
        Replay { copy },
    )
}

impl Replay {
    /// The body again, if it was sent whole and kept.
    pub fn body(&self) -> Option<Replayed> {
        let copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        (copy.complete && !copy.overflow).then(|| Replayed {
            data: copy.data.clone().into(),
            trailers: copy.trailers.clone(),
        })
    }
}

/// A kept body, sent again.
pub struct Replayed {
    data: std::collections::VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if let Some(data) = this.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self.data.iter().map(Bytes::len).sum();
        let mut hint = SizeHint::new();
        if self.trailers.is_none() {
            hint.set_exact(len as u64);
        } else {
            hint.set_lower(len as u64);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body of the given frames, one per poll.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    fn frames(parts: Vec<Frame<Bytes>>) -> Frames {
        Frames(parts.into())
    }

    #[tokio::test]
    async fn a_body_read_whole_replays_the_same_bytes_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let (recorded, replay) = record(frames(vec![
            Frame::data(Bytes::from_static(b"hello ")),
            Frame::data(Bytes::from_static(b"world")),
            Frame::trailers(trailers.clone()),
        ]));
        assert!(
            replay.body().is_none(),
            "nothing to replay before it was sent"
        );
        let first = recorded.collect().await.unwrap();
        assert_eq!(first.trailers(), Some(&trailers));
        let again = replay.body().unwrap().collect().await.unwrap();
        assert_eq!(again.trailers(), Some(&trailers));
        assert_eq!(again.to_bytes(), Bytes::from_static(b"hello world"));
        // Any number of times.
        let third = replay.body().unwrap().collect().await.unwrap();
        assert_eq!(third.to_bytes(), Bytes::from_static(b"hello world"));
    }

    #[tokio::test]
    async fn an_empty_body_replays_without_being_read() {
        let (_recorded, replay) = record(Full::new(Bytes::new()));
        let again = replay.body().unwrap();
        assert!(again.is_end_stream());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_half_sent_is_not_replayed() {
        let big = Bytes::from(vec![7u8; MAX_REPLAY_BYTES + 1]);
        let (recorded, replay) = record(Full::new(big));
        recorded.collect().await.unwrap();
        assert!(replay.body().is_none());

        let (mut recorded, replay) = record(frames(vec![
            Frame::data(Bytes::from_static(b"first")),
            Frame::data(Bytes::from_static(b"second")),
        ]));
        let _ = recorded.frame().await;
        assert!(replay.body().is_none(), "half sent");
    }
}
