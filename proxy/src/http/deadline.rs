//! Request deadlines: the service's `requestTimeout` and gRPC's
//! `grpc-timeout`, whichever ends first, enforced until the response's
//! last byte (Gateway API's `timeouts.request` semantics).
//!
//! Before the response's head, the proxy answers 504 (gRPC:
//! DEADLINE_EXCEEDED, trailers-only). After it, a gRPC response ends with
//! DEADLINE_EXCEEDED trailers, which gRPC clients read as the call's
//! status; a plain HTTP response is cut (a reset), so a client never takes
//! a truncated body as whole.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::body::{BoxError, Polled};
use super::respond::GRPC_DEADLINE_EXCEEDED;

/// The deadline of a request that started at `start`: the first of the
/// service's timeout and the client's `grpc-timeout`.
pub fn of(start: Instant, timeout: Option<Duration>, headers: &HeaderMap) -> Option<Instant> {
    let grpc = headers
        .get("grpc-timeout")
        .and_then(|v| phoenix_api::grpc_timeout::parse(v.as_bytes()));
    let limit = match (timeout, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    limit.map(|l| start + l)
}

/// The error a cut body ends with.
#[derive(Debug, thiserror::Error)]
#[error("request deadline passed")]
pub struct DeadlinePassed;

/// A response body that ends at the deadline (an observer around it sees
/// the DEADLINE_EXCEEDED trailers or the error, so counts a failure).
pub struct Deadlined<B> {
    inner: Option<B>,
    sleep: Pin<Box<Sleep>>,
    grpc: bool,
    on_fire: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> Deadlined<B> {
    /// `inner`, ended at `deadline`; a gRPC response (`grpc`) ends with
    /// DEADLINE_EXCEEDED trailers; `on_fire` runs once if it does.
    pub fn new(
        inner: B,
        deadline: Instant,
        grpc: bool,
        on_fire: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            grpc,
            on_fire: Some(Box::new(on_fire)),
        }
    }
}

impl<B> Body for Deadlined<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Dropping the inner body stops the stream toward the peer.
        this.inner = None;
        if let Some(on_fire) = this.on_fire.take() {
            on_fire();
        }
        if this.grpc {
            let mut trailers = HeaderMap::new();
            trailers.insert(
                "grpc-status",
                HeaderValue::from(u16::from(GRPC_DEADLINE_EXCEEDED)),
            );
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("deadline exceeded at the client's proxy"),
            );
            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
        } else {
            Poll::Ready(Some(Err(Box::new(DeadlinePassed))))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn the_first_limit_wins() {
        let start = Instant::now();
        let mut headers = HeaderMap::new();
        assert_eq!(of(start, None, &headers), None);
        assert_eq!(
            of(start, Some(Duration::from_secs(2)), &headers),
            Some(start + Duration::from_secs(2))
        );
        headers.insert("grpc-timeout", HeaderValue::from_static("500m"));
        assert_eq!(
            of(start, Some(Duration::from_secs(2)), &headers),
            Some(start + Duration::from_millis(500))
        );
        assert_eq!(
            of(start, Some(Duration::from_millis(100)), &headers),
            Some(start + Duration::from_millis(100))
        );
    }

    /// A body that never ends, cut at the deadline on tokio's paused
    /// clock: gRPC gets DEADLINE_EXCEEDED trailers, HTTP an error.
    #[tokio::test(start_paused = true)]
    async fn a_body_is_cut_at_the_deadline() {
        for grpc in [true, false] {
            let pending = Pending;
            let deadline = Instant::now() + Duration::from_secs(3);
            let (tx, rx) = std::sync::mpsc::channel();
            let mut body = Deadlined::new(pending, deadline, grpc, move || {
                let _ = tx.send(());
            });
            let frame = body.frame().await.unwrap();
            assert_eq!(Instant::now(), deadline, "cut exactly at the deadline");
            assert!(rx.try_recv().is_ok());
            if grpc {
                let trailers = frame.unwrap().into_trailers().unwrap();
                assert_eq!(trailers["grpc-status"], "4");
            } else {
                assert!(frame.is_err());
            }
            assert!(body.frame().await.is_none());
        }
    }

    /// A stream that never yields.
    struct Pending;

    impl Body for Pending {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }
}
