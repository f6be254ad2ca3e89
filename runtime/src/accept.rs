//! Accepting TCP connections without spinning: an accept that fails (most
//! often EMFILE, out of file descriptors) is logged and retried after a
//! pause, instead of failing again at once and taking a core.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept: long enough for descriptors to free up,
/// short enough that a recovered process answers at once.
const PAUSE: Duration = Duration::from_millis(50);

/// The next connection on `listener` (`what` names it in the log line of a
/// failed accept, which is retried).
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(listener = what, %error, "accept failed; retrying");
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
}
