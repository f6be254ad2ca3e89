//! The helper processes that stand in for applications: the test server and
//! the plain TCP forwarder. Each binds port 0, announces its address as one
//! JSON line on stdout, and dies with the bench.
//!
//! Server protocol: the first byte picks the mode.
//! - `T` (throughput): read to EOF, then answer the byte count (u64, big
//!   endian) and close, so the client times delivery, not just sending.
//! - `C` (checked throughput, `--check`): as `T`, then also the FNV-1a
//!   digest (u64, big endian) of every byte read, so the client knows the
//!   bytes arrived unchanged, not only their number.
//! - `E` (echo): write back everything read, until EOF.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// First byte of a throughput connection.
pub const MODE_THROUGHPUT: u8 = b'T';
/// First byte of a checked throughput connection.
pub const MODE_CHECKED: u8 = b'C';
/// First byte of an echo connection.
pub const MODE_ECHO: u8 = b'E';

/// Read buffer of the throughput sink.
const SINK_BUFFER: usize = 256 * 1024;
/// Read buffer of the echo loop.
const ECHO_BUFFER: usize = 16 * 1024;

/// `{"listen": "IP:PORT"}`, what every helper prints once bound.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Announce {
    /// The bound address.
    pub listen: SocketAddr,
}

/// Runs the test server on `listen` until killed.
pub fn server(listen: SocketAddr) -> anyhow::Result<()> {
    prepare_child();
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}"))?;
        announce(listener.local_addr()?)?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = serve(tcp).await;
            });
        }
    })
}

/// Runs a forwarder from `listen` to `to` until killed: one outgoing
/// connection per incoming one, bytes copied with `copy_bidirectional`.
pub fn forwarder(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    prepare_child();
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot bind {listen}"))?;
        announce(listener.local_addr()?)?;
        loop {
            let (mut inbound, _) = listener.accept().await?;
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

async fn serve(mut tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    match tcp.read_u8().await? {
        mode @ (MODE_THROUGHPUT | MODE_CHECKED) => {
            let mut buf = vec![0u8; SINK_BUFFER];
            let mut total = 0u64;
            let mut digest = Fnv::default();
            loop {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if mode == MODE_CHECKED {
                    digest.write(&buf[..n]);
                }
            }
            tcp.write_all(&total.to_be_bytes()).await?;
            if mode == MODE_CHECKED {
                tcp.write_all(&digest.0.to_be_bytes()).await?;
            }
            tcp.shutdown().await?;
        }
        MODE_ECHO => {
            let mut buf = vec![0u8; ECHO_BUFFER];
            loop {
                let n = tcp.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                tcp.write_all(&buf[..n]).await?;
            }
            tcp.shutdown().await?;
        }
        other => bail!("unknown mode byte {other:#x}"),
    }
    Ok(())
}

/// FNV-1a, 64 bits: order-sensitive and dependency-free; `--check` needs
/// to see a changed, lost or reordered byte, not resist an adversary.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `bytes` to the digest.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// What every helper does first: die with the bench (a killed bench leaves
/// nothing behind) and allow thousands of sockets.
pub fn prepare_child() {
    use rustix::process::{
        Resource, Signal, getrlimit, set_parent_process_death_signal, setrlimit,
    };
    let _ = set_parent_process_death_signal(Some(Signal::KILL));
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn announce(listen: SocketAddr) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&Announce { listen })?);
    Ok(())
}
