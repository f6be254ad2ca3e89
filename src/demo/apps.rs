//! The demo's sample services and their clients: an HTTP/1.1 web service,
//! a gRPC service (unary calls framed as gRPC frames them: length-prefixed
//! messages, `grpc-status` in the trailers, over h2c) and a TCP echo, each
//! with clients that call it through the mesh as an app would.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What one kind of client saw.
#[derive(Debug, Default)]
pub struct Calls {
    /// Answered as expected.
    pub ok: AtomicU64,
    /// Failed or answered wrongly.
    pub failed: AtomicU64,
}

/// The web service: a small JSON document for any GET.
pub async fn web_server(listener: TcpListener) {
    serve(listener, |req: Request<Incoming>| async move {
        let body = format!(
            "{{\"service\":\"web\",\"path\":\"{}\",\"items\":[1,2,3]}}",
            req.uri().path()
        );
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok::<_, Infallible>(response)
    })
    .await;
}

/// The gRPC service: `/demo.Greeter/Hello` answers "hello, " and the
/// request's message, with `grpc-status: 0` in the trailers.
pub async fn grpc_server(listener: TcpListener) {
    serve(listener, |req: Request<Incoming>| async move {
        let message = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let name = message.get(5..).unwrap_or_default();
        let reply = [b"hello, ".as_slice(), name].concat();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Unary {
            data: Some(grpc_frame(&reply)),
            trailers: Some(trailers),
        };
        let mut response = Response::new(body.boxed_unsync());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(response)
    })
    .await;
}

/// The TCP echo service: bytes back as they come.
pub async fn echo_server(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

type DemoBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<DemoBody>, Infallible>> + Send + 'static,
{
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(handler))
                .await;
        });
    }
}

/// One gRPC message: a compression flag, its length, its bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// A unary gRPC response body: one message, then the trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// Calls the web service over keep-alive HTTP/1.1 connections until `stop`.
pub async fn web_client(target: SocketAddr, calls: Arc<Calls>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let Ok(tcp) = TcpStream::connect(target).await else {
            calls.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, DemoBody>(TokioIo::new(tcp)).await
        else {
            calls.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        for n in 0..200u32 {
            if *stop.borrow() {
                return;
            }
            let request = Request::get(format!("http://web/items/{n}"))
                .header("host", "web")
                .body(Full::new(Bytes::new()).boxed_unsync());
            let Ok(request) = request else { return };
            let call = async {
                let response = sender.send_request(request).await.ok()?;
                let ok = response.status().is_success();
                let body = response.into_body().collect().await.ok()?.to_bytes();
                (ok && body.starts_with(b"{\"service\":\"web\"")).then_some(())
            };
            let result = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(5), call) => r.ok().flatten(),
                _ = stop.changed() => return,
            };
            match result {
                Some(()) => calls.ok.fetch_add(1, Ordering::Relaxed),
                None => {
                    calls.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
        }
    }
}

/// Makes unary gRPC calls on one HTTP/2 connection until `stop`; the mesh
/// spreads them over the service's endpoints.
pub async fn grpc_client(target: SocketAddr, calls: Arc<Calls>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let Ok(tcp) = TcpStream::connect(target).await else {
            calls.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((mut sender, conn)) = hyper::client::conn::http2::handshake::<_, _, DemoBody>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        else {
            calls.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tokio::spawn(conn);
        loop {
            if *stop.borrow() {
                return;
            }
            let request = Request::post("http://grpc/demo.Greeter/Hello")
                .header(CONTENT_TYPE, "application/grpc")
                .header("te", "trailers")
                .body(Full::new(grpc_frame(b"phoenix")).boxed_unsync());
            let Ok(request) = request else { return };
            let call = async {
                let response = sender.send_request(request).await.ok()?;
                let body = response.into_body().collect().await.ok()?;
                let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
                let data = body.to_bytes();
                (status.as_ref().is_some_and(|s| s == "0")
                    && data.get(5..) == Some(b"hello, phoenix".as_slice()))
                .then_some(())
            };
            let result = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(5), call) => r.ok().flatten(),
                _ = stop.changed() => return,
            };
            match result {
                Some(()) => calls.ok.fetch_add(1, Ordering::Relaxed),
                None => {
                    calls.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
        }
    }
}

/// A game server over UDP: each datagram back to its sender, as a game
/// answers a player's move with the world's state.
pub async fn game_server(socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// A player: a move every 10 ms (a 100 Hz game tick) to `target`, each
/// answered within a second or counted as failed; UDP's own loss shows as
/// a failure, never as a stall.
pub async fn game_client(target: SocketAddr, calls: Arc<Calls>, mut stop: watch::Receiver<bool>) {
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        calls.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if socket.connect(target).await.is_err() {
        calls.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut buf = [0u8; 64];
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let sent = format!("move {n}");
        if socket.send(sent.as_bytes()).await.is_err() {
            calls.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // Answers to earlier moves that came late are skipped.
        let answer = async {
            loop {
                let len = socket.recv(&mut buf).await.ok()?;
                if &buf[..len] == sent.as_bytes() {
                    return Some(());
                }
            }
        };
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(1), answer) => r.ok().flatten(),
            _ = stop.changed() => return,
        };
        let counter = if result.is_some() {
            &calls.ok
        } else {
            &calls.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
