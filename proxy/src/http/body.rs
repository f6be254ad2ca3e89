//! Bodies between hyper (toward apps) and h3 (between proxies).
//!
//! A body streams in both directions frame by frame, never buffered whole:
//! [`H3Body`] is the receive half of an HTTP/3 stream as an `http_body`
//! body (DATA frames, then trailers), and [`pump`] writes any body into
//! the send half of one. gRPC's trailers (`grpc-status`) cross intact.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// Errors crossing a body: an h3 stream's, hyper's, or the app's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy's bodies answer a poll with.
pub type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// The receive half of a request stream at the accepting proxy.
pub type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
/// The send half of a request stream at the accepting proxy.
pub type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// The receive half of a request stream at the calling proxy.
pub type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;
/// The send half of a request stream at the calling proxy.
pub type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The receive half of an HTTP/3 request stream, either side.
pub trait RecvHalf: Send + Unpin + 'static {
    /// The next DATA frame's bytes, or `None` at the end of the data.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    /// The trailers, once the data has ended.
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>>;
    /// Tells the peer to stop sending (the reader went away).
    fn stop(&mut self);
}

macro_rules! recv_half {
    ($t:ty) => {
        impl RecvHalf for $t {
            fn poll_data(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<Bytes>, StreamError>> {
                let data = ready!(self.poll_recv_data(cx))?;
                Poll::Ready(Ok(data.map(|mut b| b.copy_to_bytes(b.remaining()))))
            }

            fn poll_trailers(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
                self.poll_recv_trailers(cx)
            }

            fn stop(&mut self) {
                self.stop_sending(Code::H3_REQUEST_CANCELLED);
            }
        }
    };
}
recv_half!(ServerRecv);
recv_half!(ClientRecv);

/// The send half of an HTTP/3 request stream, either side.
pub trait SendHalf: Send + 'static {
    /// Sends one DATA frame.
    fn data(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Sends the trailers (the last frame).
    fn trailers(&mut self, t: HeaderMap) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Ends the stream cleanly.
    fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Resets the stream: the body failed, the peer must not take it as whole.
    fn cancel(&mut self);
}

macro_rules! send_half {
    ($t:ty) => {
        impl SendHalf for $t {
            fn data(
                &mut self,
                data: Bytes,
            ) -> impl Future<Output = Result<(), StreamError>> + Send {
                self.send_data(data)
            }

            fn trailers(
                &mut self,
                t: HeaderMap,
            ) -> impl Future<Output = Result<(), StreamError>> + Send {
                self.send_trailers(t)
            }

            fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send {
                <$t>::finish(self)
            }

            fn cancel(&mut self) {
                self.stop_stream(Code::H3_REQUEST_CANCELLED);
            }
        }
    };
}
send_half!(ServerSend);
send_half!(ClientSend);

/// Why a body could not be carried to its end.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The body being read failed (the client or app reset, or hyper
    /// refused what it sent).
    #[error("body failed")]
    Body(#[source] BoxError),
    /// The HTTP/3 stream being written failed.
    #[error("HTTP/3 stream failed")]
    Stream(#[from] StreamError),
}

/// The most body bytes [`send_ready`] writes before leaving the rest to
/// [`pump`]: a small request's whole body, not a large one's.
const FIRST_FLIGHT: usize = 16 * 1024;

/// Writes what of `body` is ready now (up to [`FIRST_FLIGHT`] bytes), in
/// the caller's turn, right after the request's head: QUIC then sends
/// the head, a small body and the stream's end in one packet, so the peer
/// wakes once for the request instead of once per frame (and, receiving
/// one packet and not two, owes no immediate ACK). On this 2-core VM a
/// wake-up of an idle process costs 100–200 µs, which is most of what
/// the mesh adds to a request at low rates. `true` once the body has gone
/// whole (the stream is finished); otherwise [`pump`] carries the rest.
pub async fn send_ready<B>(body: &mut B, send: &mut impl SendHalf) -> Result<bool, PumpError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut sent = 0;
    loop {
        if body.is_end_stream() {
            send.finish().await?;
            return Ok(true);
        }
        if sent >= FIRST_FLIGHT {
            return Ok(false);
        }
        let Poll::Ready(frame) = look(body) else {
            return Ok(false);
        };
        match frame {
            None => {
                send.finish().await?;
                return Ok(true);
            }
            Some(Err(error)) => {
                send.cancel();
                return Err(PumpError::Body(error.into()));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    sent += data.len();
                    if !data.is_empty() {
                        send.data(data).await?;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.trailers(trailers).await?;
                    }
                }
            },
        }
    }
}

/// What polling a body `B` answers.
type PolledBy<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// Polls `body` once without a waker: a look, not a wait. Whoever polls
/// it next registers their own waker then.
fn look<B: Body + Unpin>(body: &mut B) -> PolledBy<B> {
    Pin::new(body).poll_frame(&mut Context::from_waker(std::task::Waker::noop()))
}

/// Writes `body` into `send` frame by frame, then finishes the stream; a
/// failing body resets it. Returns the trailers it carried (gRPC's status
/// is there).
pub async fn pump<B>(mut body: B, send: &mut impl SendHalf) -> Result<Option<HeaderMap>, PumpError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut sent_trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                send.cancel();
                return Err(PumpError::Body(error.into()));
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => send.data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.trailers(trailers.clone()).await?;
                    sent_trailers = Some(trailers);
                }
            }
        }
    }
    send.finish().await?;
    Ok(sent_trailers)
}

/// How a body ended, told to its observer once.
#[derive(Debug)]
pub enum Ended<'a> {
    /// All data, then these trailers.
    Trailers(&'a HeaderMap),
    /// All data, no trailers.
    Complete,
    /// The stream failed midway.
    Failed,
    /// The reader dropped it before its end (a HEAD response, a cancelled
    /// call): not the peer's failure.
    Dropped,
}

/// The receive half of an HTTP/3 stream as a body (DATA frames, then
/// trailers); dropped before its end, it tells the peer to stop sending.
pub struct H3Body<R: RecvHalf> {
    recv: R,
    data_done: bool,
    done: bool,
    /// A read is in flight. h3-quinn (0.0.10) moves the QUIC stream into
    /// its read future meanwhile, and its `stop_sending` then unwraps a
    /// `None` and panics; dropping the stream stops it in that case.
    reading: bool,
    /// What a first look found already arrived, given out first.
    peeked: Option<Option<Result<Frame<Bytes>, BoxError>>>,
}

impl<R: RecvHalf> H3Body<R> {
    /// `recv` as a body.
    pub fn new(recv: R) -> Self {
        Self {
            recv,
            data_done: false,
            done: false,
            reading: false,
            peeked: None,
        }
    }

    /// `recv` as a body, after a look at what has already arrived: a
    /// stream that has ended (a GET's request) is then a body at its end,
    /// which hyper sends as such (HTTP/2 END_STREAM on the HEADERS,
    /// HTTP/1.1 without chunked framing), so the app does not wait on a
    /// second frame (or wake a second time) for a body that is empty.
    pub fn peeked(recv: R) -> Self {
        let mut body = Self::new(recv);
        if let Poll::Ready(frame) = look(&mut body) {
            body.peeked = Some(frame);
        }
        body
    }
}

impl<R: RecvHalf> Body for H3Body<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(frame);
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            let polled = this.recv.poll_data(cx);
            this.reading = polled.is_pending();
            match ready!(polled) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => this.data_done = true,
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
        let polled = this.recv.poll_trailers(cx);
        this.reading = polled.is_pending();
        match ready!(polled) {
            Ok(Some(trailers)) => {
                this.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(error) => {
                this.done = true;
                Poll::Ready(Some(Err(error.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A peeked end (`Some(None)`) is the end; a peeked frame is not.
        self.done && self.peeked.as_ref().is_none_or(Option::is_none)
    }
}

impl<R: RecvHalf> Drop for H3Body<R> {
    fn drop(&mut self) {
        // With a read in flight, quinn stops the stream as it is dropped.
        if !self.done && !self.reading {
            self.recv.stop();
        }
    }
}

/// What a body tells as its frames pass: the golden metrics count a
/// response at its end (where gRPC's status is known), a retry keeps a
/// copy of the request's body ([`super::replay`]).
pub trait Tap: Send + 'static {
    /// A DATA frame passed.
    fn data(&mut self, _data: &Bytes) {}
    /// The body ended, told once.
    fn end(self, how: Ended<'_>);
}

/// `body`, its frames told to a [`Tap`].
pub struct Tapped<B, T: Tap> {
    body: B,
    /// Taken at the end.
    tap: Option<T>,
}

impl<B, T: Tap> Tapped<B, T> {
    /// `body`, its frames told to `tap`.
    pub fn new(body: B, tap: T) -> Self {
        Self {
            body,
            tap: Some(tap),
        }
    }

    fn end(&mut self, how: Ended<'_>) {
        if let Some(tap) = self.tap.take() {
            tap.end(how);
        }
    }
}

impl<B, T> Body for Tapped<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    T: Tap + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(tap) = this.tap.as_mut() {
                        tap.data(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let trailers = trailers.clone();
                    this.end(Ended::Trailers(&trailers));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.end(Ended::Failed);
                Poll::Ready(Some(Err(error.into())))
            }
            None => {
                this.end(Ended::Complete);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B, T: Tap> Drop for Tapped<B, T> {
    fn drop(&mut self) {
        self.end(Ended::Dropped);
    }
}

/// A [`Tap`] that only hears the end.
pub struct OnEnd(Box<dyn FnOnce(Ended<'_>) + Send>);

impl Tap for OnEnd {
    fn end(self, how: Ended<'_>) {
        (self.0)(how);
    }
}

/// `body`, its end told to `on_end` once.
pub fn observed<B>(body: B, on_end: impl FnOnce(Ended<'_>) + Send + 'static) -> Tapped<B, OnEnd> {
    Tapped::new(body, OnEnd(Box::new(on_end)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use http_body_util::{Empty, Full};

    use super::*;

    /// A send half that writes down what it was given.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<String>>>);

    impl Sink {
        fn log(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }

        fn push(&self, what: String) -> std::future::Ready<Result<(), StreamError>> {
            self.0.lock().unwrap().push(what);
            std::future::ready(Ok(()))
        }
    }

    impl SendHalf for Sink {
        fn data(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send {
            self.push(format!("data {}", data.len()))
        }
        fn trailers(
            &mut self,
            t: HeaderMap,
        ) -> impl Future<Output = Result<(), StreamError>> + Send {
            self.push(format!("trailers {}", t.len()))
        }
        fn finish(&mut self) -> impl Future<Output = Result<(), StreamError>> + Send {
            self.push("finish".into())
        }
        fn cancel(&mut self) {
            drop(self.push("cancel".into()));
        }
    }

    /// Frames given one per poll; `None` in the list is a poll that
    /// finds nothing ready yet.
    struct Script(VecDeque<Option<Frame<Bytes>>>);

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Polled {
            match self.get_mut().0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t
    }

    #[tokio::test]
    async fn a_body_already_there_goes_whole_with_the_head() {
        let sink = Sink::default();
        let mut body = Full::new(Bytes::from_static(&[7; 100]));
        assert!(send_ready(&mut body, &mut sink.clone()).await.unwrap());
        assert_eq!(sink.log(), ["data 100", "finish"]);

        let sink = Sink::default();
        let mut empty = Empty::<Bytes>::new();
        assert!(send_ready(&mut empty, &mut sink.clone()).await.unwrap());
        assert_eq!(sink.log(), ["finish"], "a GET: its end at once");

        let sink = Sink::default();
        let mut grpc = Script(
            [
                Some(Frame::data(Bytes::from_static(b"hello"))),
                Some(Frame::trailers(trailers())),
            ]
            .into(),
        );
        assert!(send_ready(&mut grpc, &mut sink.clone()).await.unwrap());
        assert_eq!(sink.log(), ["data 5", "trailers 1", "finish"]);
    }

    #[tokio::test]
    async fn what_is_not_ready_is_left_to_the_pump() {
        let sink = Sink::default();
        let mut body = Script(
            [
                Some(Frame::data(Bytes::from_static(b"first"))),
                None,
                Some(Frame::data(Bytes::from_static(b"second"))),
            ]
            .into(),
        );
        let mut send = sink.clone();
        assert!(!send_ready(&mut body, &mut send).await.unwrap());
        assert_eq!(sink.log(), ["data 5"]);
        // The pump goes on from where it stopped, nothing sent twice.
        pump(body, &mut send).await.unwrap();
        assert_eq!(sink.log(), ["data 5", "data 6", "finish"]);
    }

    #[tokio::test]
    async fn a_large_body_is_sent_up_to_the_first_flight() {
        let sink = Sink::default();
        let chunk = Bytes::from(vec![1; 8 * 1024]);
        let mut body = Script((0..4).map(|_| Some(Frame::data(chunk.clone()))).collect());
        let mut send = sink.clone();
        assert!(!send_ready(&mut body, &mut send).await.unwrap());
        assert_eq!(
            sink.log(),
            ["data 8192", "data 8192"],
            "16 KiB, then the pump"
        );
        pump(body, &mut send).await.unwrap();
        assert_eq!(sink.log().len(), 5);
    }

    /// A receive half from a script of polls.
    struct Recv {
        data: VecDeque<Poll<Option<Bytes>>>,
        stopped: Arc<AtomicBool>,
    }

    impl RecvHalf for Recv {
        fn poll_data(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
            self.data.pop_front().unwrap_or(Poll::Pending).map(Ok)
        }
        fn poll_trailers(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
            Poll::Ready(Ok(None))
        }
        fn stop(&mut self) {
            self.stopped.store(true, Ordering::SeqCst);
        }
    }

    fn recv(data: Vec<Poll<Option<Bytes>>>) -> (Recv, Arc<AtomicBool>) {
        let stopped = Arc::new(AtomicBool::new(false));
        (
            Recv {
                data: data.into(),
                stopped: stopped.clone(),
            },
            stopped,
        )
    }

    #[tokio::test]
    async fn a_peeked_stream_that_has_ended_is_a_body_at_its_end() {
        let (r, stopped) = recv(vec![Poll::Ready(None)]);
        let mut body = H3Body::peeked(r);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        drop(body);
        assert!(!stopped.load(Ordering::SeqCst), "read to its end");
    }

    #[tokio::test]
    async fn a_peeked_frame_is_given_first_and_a_pending_one_is_not_lost() {
        let (r, _) = recv(vec![
            Poll::Ready(Some(Bytes::from_static(b"early"))),
            Poll::Ready(None),
        ]);
        let mut body = H3Body::peeked(r);
        assert!(!body.is_end_stream());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "early");
        assert!(body.frame().await.is_none());

        let (r, stopped) = recv(vec![
            Poll::Pending,
            Poll::Ready(Some(Bytes::from_static(b"late"))),
            Poll::Ready(None),
        ]);
        let mut body = H3Body::peeked(r);
        assert!(!body.is_end_stream());
        let late = body.frame().await.unwrap().unwrap();
        assert_eq!(late.into_data().unwrap(), "late");
        drop(body);
        assert!(stopped.load(Ordering::SeqCst), "dropped before its end");
    }
}
