//! Pooled HTTP connections from the inbound proxy to its own app.
//!
//! One hyper client per app address and HTTP version: HTTP/1.1 keeps idle
//! keep-alive connections for reuse, HTTP/2 multiplexes every request on
//! one connection. The connector ignores the request's URI and dials the
//! app's address, so the request keeps the `Host` or `:authority` the
//! client sent.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{H3Body, ServerRecv};

/// The body of a request on its way to the app.
pub type AppBody = H3Body<ServerRecv>;

/// How long an idle pooled connection to the app is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Dials one address whatever the URI says.
#[derive(Clone, Debug)]
pub struct Dial {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<http::Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let Self { addr, timeout } = self.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Which HTTP version the app is spoken to in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC).
    Http2,
}

/// The clients, made on first use.
#[derive(Debug, Default)]
pub struct AppClients {
    clients: Mutex<HashMap<(SocketAddr, AppProtocol), Client<Dial, AppBody>>>,
}

impl AppClients {
    /// The client for the app at `addr` speaking `protocol`. The map is
    /// bounded by the services this pod serves.
    pub fn get(
        &self,
        addr: SocketAddr,
        protocol: AppProtocol,
        connect_timeout: Duration,
    ) -> Client<Dial, AppBody> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .entry((addr, protocol))
            .or_insert_with(|| {
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new());
                if protocol == AppProtocol::Http2 {
                    builder.http2_only(true);
                }
                builder.build(Dial {
                    addr,
                    timeout: connect_timeout,
                })
            })
            .clone()
    }
}
