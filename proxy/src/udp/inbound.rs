//! The server side of a UDP flow: a socket of its own, connected to the
//! app, so the app's replies come back on this flow and reach only the
//! client that asked.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use phoenix_api::SpiffeId;
use phoenix_api::header::{ConnectResponse, Status};
use tokio::net::UdpSocket;

use super::demux::{self, Flow, Sink};
use super::{Activity, MAX_PAYLOAD};
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
    let socket = match bind_to(target).await {
        Ok(socket) => Arc::new(socket),
        Err(error) => {
            tracing::info!(service, %target, connection = id, %error, "cannot reach the UDP app");
            return crate::inbound::respond_and_close(shared, send, recv, Status::UpstreamRefused)
                .await;
        }
    };
    let mut response = Vec::with_capacity(16);
    ConnectResponse {
        status: Status::Connected,
    }
    .encode(&mut response);
    if send.write_all(&response).await.is_err() {
        return;
    }
    shared.metrics.stream(Direction::inbound, Status::Connected);
    let identity = client.to_string();
    let handles = shared.metrics.udp.flow(Direction::inbound, &identity);
    handles.opened.inc();
    handles.open.inc();
    let activity = Arc::new(Activity::default());
    let (flow_id, prefix) = demux::prefix_of(recv.id());
    let demux = shared
        .udp_demuxes
        .of(conn, &shared.metrics, Direction::inbound, &identity);
    demux.insert(
        flow_id,
        Arc::new(Flow {
            sink: Sink::Upstream(socket.clone()),
            handles: handles.clone(),
            activity: activity.clone(),
        }),
    );
    let idle = super::idle_timeout(None, port.or(Some(target.port())));
    tracing::debug!(%client, service, connection = id, flow = %flow_id, "UDP flow connected");
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let ended = loop {
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(len) => {
                    activity.touch();
                    if !demux::send(conn, &prefix, &buf[..len], &handles) {
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
