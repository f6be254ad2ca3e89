//! An HTTP app for tests and benchmarks: hyper serving HTTP/1.1 and h2c on
//! one loopback port (hyper-util's auto builder tells them apart; HTTP/1.1
//! may upgrade), on a
//! thread of its own so that it keeps answering whatever the caller's
//! runtime does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};

/// Serves `handler` on a fresh loopback port until the process ends; the
/// port.
pub fn spawn<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the app's port");
    let addr = listener.local_addr().expect("the app's address");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the app's runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("the app's listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let service = hyper::service::service_fn(handler.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
                });
            }
        });
    });
    addr
}
