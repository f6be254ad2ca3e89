//! The server side of a UDP flow: a socket of its own, connected to the
//! app, so the app's replies come back on this flow and reach only the
//! client that asked.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::header::{ConnectResponse, Status};
use tokio::net::UdpSocket;

use super::Activity;
use super::demux::{self, Flow, Sink};
use crate::metrics::Direction;
use crate::state::Shared;

/// Where one flow goes, once the stream's route and allow-list passed.
pub(crate) struct Accepted<'a> {
    /// The service (for logs).
    pub service: &'a str,
    /// The service's port, for the DNS idle default.
    pub port: Option<u16>,
    /// Where the app listens.
    pub target: SocketAddr,
    /// The connection id in the header, for logs.
    pub id: u64,
}

/// Carries one accepted flow until either side ends it or it idles out.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    client: &SpiffeId,
    flow: Accepted<'_>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Accepted {
        service,
        port,
        target,
        id,
    } = flow;
    let identity = client.to_string();
    let handles = shared.metrics.udp.flow(Direction::inbound, &identity);
    let activity = Arc::new(Activity::default());
    let (flow_id, prefix) = demux::prefix_of(recv.id());
    let demux = shared
        .udp_demuxes
        .of(conn, &shared.metrics, Direction::inbound, &identity);
    if demux.len() >= shared.max_udp_flows_per_peer {
        tracing::info!(%client, service, connection = id, limit = shared.max_udp_flows_per_peer, "UDP flow refused: the peer holds as many as it may");
        return crate::inbound::respond_and_close(shared, send, recv, Status::UpstreamRefused)
            .await;
    }
    let socket = match bind_to(target).await {
        Ok(socket) => Arc::new(socket),
        Err(error) => {
            tracing::info!(service, %target, connection = id, %error, "cannot reach the UDP app");
            return crate::inbound::respond_and_close(shared, send, recv, Status::UpstreamRefused)
                .await;
        }
    };
    // Registered before the answer: the client sends its queued datagrams
    // the moment it reads `Connected`.
    let flow = Arc::new(Flow {
        sink: Sink::Upstream(socket.clone()),
        handles: handles.clone(),
        activity: activity.clone(),
    });
    if !demux.try_insert(flow_id, flow, shared.max_udp_flows_per_peer) {
        return crate::inbound::respond_and_close(shared, send, recv, Status::UpstreamRefused)
            .await;
    }
    let mut response = Vec::with_capacity(16);
    ConnectResponse {
        status: Status::Connected,
    }
    .encode(&mut response);
    if send.write_all(&response).await.is_err() {
        demux.remove(flow_id);
        return;
    }
    shared.metrics.stream(Direction::inbound, Status::Connected);
    handles.opened.inc();
    handles.open.inc();
    // The client's proxy ends the flow at its own idle timeout (the
    // service's, which this side does not know); this one is a backstop
    // against a client proxy that holds flows open and sends nothing.
    let idle = BACKSTOP_IDLE.max(super::idle_timeout(None, port.or(Some(target.port()))));
    tracing::debug!(%client, service, connection = id, flow = %flow_id, "UDP flow connected");
    // Larger than any QUIC datagram (the path MTU is capped at 9,001): a
    // datagram that fills it was truncated, and is too large either way.
    let mut buf = vec![0u8; RECV_BUF];
    let ended = loop {
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(len) => {
                    activity.touch();
                    if len == buf.len() {
                        handles.too_large.inc();
                    } else if !demux::send(conn, &prefix, &buf[..len], &handles) {
                        break "connection lost";
                    }
                }
                // An ICMP port unreachable from the app's host: the app is
                // not listening (yet); UDP carries on.
                Err(error) => tracing::trace!(%error, "UDP receive from the app failed"),
            },
            _ = recv.read_chunk(1, true) => break "ended by the client",
            () = tokio::time::sleep_until(activity.expires(idle)) => {
                if activity.expires(idle) <= tokio::time::Instant::now() {
                    handles.expired.inc();
                    let _ = send.finish();
                    break "idle";
                }
            }
        }
    };
    tracing::debug!(connection = id, flow = %flow_id, ended, "UDP flow closed");
    demux.remove(flow_id);
    handles.open.dec();
}

/// The server side's idle timeout: the client's proxy normally ends a flow
/// first, at the service's own timeout.
const BACKSTOP_IDLE: Duration = Duration::from_secs(15 * 60);
/// The receive buffer per flow.
const RECV_BUF: usize = 16 * 1024;

/// A socket of the target's family on an ephemeral port, connected to it
/// (the kernel then passes only the app's datagrams to it).
async fn bind_to(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = super::bind(local)?;
    socket.connect(target).await?;
    Ok(socket)
}
