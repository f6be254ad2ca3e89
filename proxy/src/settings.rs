//! Proxy settings: command-line flags and environment, validated into
//! [`Settings`] before anything starts.
//!
//! Every environment variable is named here, with its default and why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use phoenix_api::SpiffeId;
use phoenix_api::tls_policy::{AuthPolicy, CipherSuite, IdentityAlgorithm, KeyExchange};
use phoenix_tls::endpoint::TransportSettings;
use phoenix_tls::handshake::TlsPolicy;

use crate::control::{ControlPlane, Token};

/// Environment variable holding the bootstrap token. An environment variable
/// rather than a flag, because flags are visible to every user in `ps`.
pub const ENV_TOKEN: &str = "PHOENIX_TOKEN";

/// Command-line flags of `phoenix-proxy`.
#[derive(Debug, clap::Parser)]
#[command(name = "phoenix-proxy", version, about = "Phoenix data-plane proxy")]
pub struct Args {
    /// Control plane QUIC address, `host:port` (a name is resolved at
    /// every connection, e.g. `phoenix-control-plane.phoenix-system.svc:4180`).
    #[arg(long, env = "PHOENIX_CONTROL_PLANE", value_parser = parse_host_port)]
    pub control_plane: String,
    /// SPIFFE ID the control plane's certificate must carry.
    #[arg(long, env = "PHOENIX_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: String,
    /// PEM file with the mesh root certificate(s).
    #[arg(long, env = "PHOENIX_TRUST_ANCHOR")]
    pub trust_anchor: Option<PathBuf>,
    /// The mesh root certificate(s) themselves, instead of a file (the
    /// injector sets it: a pod then needs no extra volume).
    #[arg(long, env = "PHOENIX_TRUST_ANCHOR_PEM", hide_env_values = true)]
    pub trust_anchor_pem: Option<String>,
    /// File holding the bootstrap token (instead of $PHOENIX_TOKEN).
    #[arg(long, env = "PHOENIX_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// UDP address for peers' QUIC connections.
    #[arg(long, env = "PHOENIX_INBOUND", default_value = "127.0.0.1:0")]
    pub inbound: SocketAddr,
    /// Admin HTTP address (loopback by default: it shows config).
    #[arg(long, env = "PHOENIX_ADMIN", default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,
    /// TCP address that accepts the app's outbound connections redirected by
    /// `phoenix-proxy init` (e.g. 0.0.0.0:4140); off when absent.
    #[arg(long, env = "PHOENIX_OUTBOUND_REDIRECT")]
    pub outbound_redirect: Option<SocketAddr>,
    /// TCP address that accepts plain inbound connections redirected by
    /// `phoenix-proxy init` (e.g. 0.0.0.0:4141); off when absent.
    #[arg(long, env = "PHOENIX_INBOUND_REDIRECT")]
    pub inbound_redirect: Option<SocketAddr>,
    /// Addresses whose plain TCP to a probe port is passed even in strict
    /// mode: the node's kubelet, so liveness and readiness probes keep
    /// working (the injector passes the pod's `status.hostIPs`).
    /// Comma-separated.
    #[arg(long, env = "PHOENIX_PROBE_SOURCES", value_delimiter = ',')]
    pub probe_sources: Vec<std::net::IpAddr>,
    /// The pod's own addresses (the injector passes `status.podIPs`): a
    /// meshed client may reach a port of the app no service lists at one
    /// of them (metrics ports, the proxy's admin port). Comma-separated.
    #[arg(long, env = "PHOENIX_POD_IPS", value_delimiter = ',')]
    pub pod_ips: Vec<std::net::IpAddr>,
    /// The app ports the kubelet probes (the injector lists the ports of
    /// the app's httpGet, tcpSocket and grpc probes): the only ports the
    /// probe sources reach in clear. Comma-separated.
    #[arg(long, env = "PHOENIX_PROBE_PORTS", value_delimiter = ',')]
    pub probe_ports: Vec<u16>,
    /// Key exchange towards the control plane: pq-only or pq-preferred.
    #[arg(long, env = "PHOENIX_KEY_EXCHANGE", default_value = "pq-only", value_parser = parse_kx)]
    pub key_exchange: KeyExchange,
    /// The algorithm of the proxy's first key: ecdsa-p256 or ml-dsa-65. By
    /// default that of the first root in the trust anchor (the control plane
    /// writes the signing root first). Once config arrives the mesh's
    /// signing root decides, and the proxy re-keys when they differ.
    #[arg(long, env = "PHOENIX_IDENTITY_ALGORITHM")]
    pub identity_algorithm: Option<IdentityAlgorithm>,
    /// Grace period for open connections on SIGTERM, e.g. `20s`.
    #[arg(long, env = "PHOENIX_DRAIN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Largest UDP payload (MTU minus IP and UDP headers): `auto` (the
    /// default) starts at 1200 bytes and probes each peer's path up to the
    /// route's interface MTU (loopback peers keep 1452); a number (1200 to 65527) sends packets of that size from the
    /// start and never probes.
    #[arg(long, env = "PHOENIX_MAX_UDP_PAYLOAD", default_value = "auto", value_parser = parse_udp_payload)]
    pub max_udp_payload: UdpPayload,
    /// The largest path MTU `auto` probes for, 1280 to 9001: 1500 by
    /// default; 9001 on jumbo-frame networks (AWS, GCP VPCs) to probe up
    /// to their interface MTU.
    #[arg(long, env = "PHOENIX_MAX_PATH_MTU", default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1280..=9001))]
    pub max_path_mtu: u32,
    /// A peer that sends nothing (not even keep-alives, sent every third of
    /// this) for this long is dead: its streams are reset. E.g. `10s`.
    #[arg(long, env = "PHOENIX_QUIC_IDLE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub quic_idle_timeout: Duration,
    /// Worker threads of the proxy's runtime. One by default, as Linkerd's
    /// proxy: on the 2-core benchmark machine a single-threaded proxy moved
    /// 33% more bytes and spent 30% less CPU per round trip than two workers
    /// (benches/README.md); raise it for proxies that carry many busy peers.
    #[arg(long, env = "PHOENIX_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// The largest request head an app may send (request line and headers),
    /// in bytes, 8 KiB to 64 KiB: HTTP/1 beyond it gets 431, HTTP/2 is
    /// refused by its header-list limit.
    #[arg(long, env = "PHOENIX_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(8192..=65536))]
    pub max_header_bytes: u32,
    /// UDP flows one peer connection may hold open to this proxy's apps, 1
    /// to 65,536. Each is a socket: beyond it a peer's new flows are
    /// refused (counted as `upstream_refused`), so one peer with a valid
    /// identity cannot take every file descriptor of the pod.
    #[arg(long, env = "PHOENIX_MAX_UDP_FLOWS_PER_PEER", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_udp_flows_per_peer: u32,
    /// Accept HTTP/3 from peers. `false` makes the proxy answer exactly as
    /// one from before HTTP/3 (the tunnel only), which the rolling-upgrade
    /// tests need; peers then carry HTTP to it inside tunnel streams.
    #[arg(long, env = "PHOENIX_INBOUND_HTTP3", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    pub inbound_http3: bool,
    /// Log format: `text` (coloured only on a terminal, never with
    /// `NO_COLOR`) or `json` (one object per line; injected proxies use it).
    #[arg(long, env = "PHOENIX_LOG_FORMAT", value_enum)]
    pub log_format: Option<phoenix_runtime::process::LogFormat>,
    /// Same as `--log-format json` (kept for earlier charts and pods).
    #[arg(long, env = "PHOENIX_LOG_JSON", hide = true)]
    pub log_json: bool,
    /// Exit when the parent process dies (set by `phoenix up`).
    #[arg(long, env = "PHOENIX_DIE_WITH_PARENT", hide = true)]
    pub die_with_parent: bool,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Control plane and bootstrap credentials.
    pub control_plane: ControlPlane,
    /// PEM of the mesh root(s).
    pub trust_anchor_pem: String,
    /// Inbound QUIC bind address.
    pub inbound: SocketAddr,
    /// Admin bind address.
    pub admin: SocketAddr,
    /// Redirected outbound TCP listener (interception).
    pub outbound_redirect: Option<SocketAddr>,
    /// Redirected inbound TCP listener (interception).
    pub inbound_redirect: Option<SocketAddr>,
    /// Plain TCP passed in strict mode: the kubelet's probes.
    pub probes: crate::intercept::ProbeExemption,
    /// The pod's own addresses.
    pub pod_ips: Vec<std::net::IpAddr>,
    /// Drain grace period.
    pub drain_grace: Duration,
    /// QUIC transport settings.
    pub transport: TransportSettings,
    /// Whether peers may speak HTTP/3 to this proxy.
    pub inbound_http3: bool,
    /// The largest request head an app may send.
    pub max_header_bytes: usize,
    /// UDP flows one peer connection may hold open here.
    pub max_udp_flows_per_peer: usize,
}

/// A setting that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The trust anchor file cannot be read.
    #[error(
        "cannot read --trust-anchor {path}: {source}; pass the mesh roots PEM (the control plane writes it to <stateDir>/trust-bundle.crt)"
    )]
    TrustAnchor {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No trust anchor.
    #[error(
        "no trust anchor: pass --trust-anchor FILE (the control plane writes <stateDir>/trust-bundle.crt) or set PHOENIX_TRUST_ANCHOR_PEM"
    )]
    NoTrustAnchor,
    /// No token.
    #[error("no bootstrap token: set ${ENV_TOKEN} or --token-file")]
    NoToken,
    /// The token file cannot be read.
    #[error("cannot read --token-file {path}: {source}")]
    TokenFile {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The control-plane identity is not a SPIFFE ID.
    #[error(
        "--control-plane-identity is not a SPIFFE ID ({0}); e.g. spiffe://phoenix.local/ns/phoenix/sa/control-plane"
    )]
    Identity(phoenix_api::identity::IdentityError),
}

impl Args {
    /// Reads files and environment and validates everything.
    pub fn into_settings(self, token_env: Option<String>) -> Result<Settings, SettingsError> {
        let trust_anchor_pem = match (&self.trust_anchor, self.trust_anchor_pem) {
            (Some(path), _) => {
                std::fs::read_to_string(path).map_err(|source| SettingsError::TrustAnchor {
                    path: path.clone(),
                    source,
                })?
            }
            (None, Some(pem)) => pem,
            (None, None) => return Err(SettingsError::NoTrustAnchor),
        };
        let token = match (&self.token_file, token_env) {
            (Some(path), _) => {
                // Read now so a missing file is a config error at start;
                // it is read again at every renewal (tokens rotate).
                let t =
                    std::fs::read_to_string(path).map_err(|source| SettingsError::TokenFile {
                        path: path.clone(),
                        source,
                    })?;
                if t.trim().is_empty() {
                    return Err(SettingsError::NoToken);
                }
                Token::File(path.clone())
            }
            (None, Some(t)) if !t.is_empty() => Token::Fixed(t.into()),
            (None, _) => return Err(SettingsError::NoToken),
        };
        let identity: SpiffeId = self
            .control_plane_identity
            .parse()
            .map_err(SettingsError::Identity)?;
        Ok(Settings {
            control_plane: ControlPlane {
                address: self.control_plane,
                identity,
                token,
                policy: TlsPolicy {
                    key_exchange: self.key_exchange,
                    cipher_suites: CipherSuite::DEFAULT.to_vec(),
                    // The control plane is known by its identity; the mesh's
                    // authPolicy applies to tunnels once config arrives.
                    auth_policy: AuthPolicy::Any,
                },
                identity_algorithm: self
                    .identity_algorithm
                    .or_else(|| phoenix_tls::spiffe::signer_algorithm(&trust_anchor_pem))
                    .unwrap_or_default(),
            },
            trust_anchor_pem,
            inbound: self.inbound,
            admin: self.admin,
            outbound_redirect: self.outbound_redirect,
            inbound_redirect: self.inbound_redirect,
            pod_ips: self.pod_ips,
            probes: crate::intercept::ProbeExemption {
                sources: self.probe_sources,
                ports: self.probe_ports,
            },
            drain_grace: self.drain_grace,
            transport: TransportSettings {
                max_udp_payload: self.max_udp_payload.fixed(),
                max_path_mtu: self.max_path_mtu,
                idle_timeout: self.quic_idle_timeout,
                keep_alive: self.quic_idle_timeout / 3,
                ..TransportSettings::default()
            },
            inbound_http3: self.inbound_http3,
            max_header_bytes: self.max_header_bytes as usize,
            max_udp_flows_per_peer: self.max_udp_flows_per_peer as usize,
        })
    }
}

/// Checks `host:port` (an IP address, or a name with a port).
pub fn parse_host_port(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && port.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "`{s}` is not host:port; e.g. 10.0.0.1:4180 or phoenix-control-plane.phoenix-system.svc:4180"
        )),
    }
}

/// Parses `pq-only` / `pq-preferred`.
pub fn parse_kx(s: &str) -> Result<KeyExchange, String> {
    match s {
        "pq-only" => Ok(KeyExchange::PqOnly),
        "pq-preferred" => Ok(KeyExchange::PqPreferred),
        other => Err(format!(
            "`{other}` is not a key-exchange policy; use pq-only or pq-preferred"
        )),
    }
}

/// `--max-udp-payload`: discovered per path, or fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpPayload {
    /// Probe each peer's path up to its interface's MTU.
    Auto,
    /// This many bytes from the start, no probing.
    Fixed(u16),
}

impl UdpPayload {
    /// The fixed size, if one was set.
    pub fn fixed(self) -> Option<u16> {
        match self {
            Self::Auto => None,
            Self::Fixed(n) => Some(n),
        }
    }
}

/// Parses `auto` or a payload size in 1200..=65527.
pub fn parse_udp_payload(s: &str) -> Result<UdpPayload, String> {
    if s == "auto" {
        return Ok(UdpPayload::Auto);
    }
    match s.parse::<u16>() {
        Ok(n) if (1200..=65527).contains(&n) => Ok(UdpPayload::Fixed(n)),
        _ => Err(format!(
            "`{s}` is not a UDP payload size; use auto (path MTU discovery) or a number of bytes from 1200 to 65527 (the MTU minus 28 for IPv4, 48 for IPv6)"
        )),
    }
}

/// Parses durations like `500ms`, `20s`, `5m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    phoenix_api::duration::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_is_an_address_or_a_name_with_a_port() {
        for ok in [
            "10.0.0.1:4180",
            "[fd00::1]:4180",
            "phoenix-control-plane.phoenix-system.svc:4180",
            "localhost:1",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "phoenix",
            "phoenix:",
            ":4180",
            "phoenix:0",
            "phoenix:http",
            "fd00::1:4180x",
        ] {
            let e = parse_host_port(bad).unwrap_err();
            assert!(e.contains("is not host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_udp_payload_is_auto_or_a_size_quic_allows() {
        assert_eq!(parse_udp_payload("auto"), Ok(UdpPayload::Auto));
        assert_eq!(parse_udp_payload("8972"), Ok(UdpPayload::Fixed(8972)));
        assert_eq!(
            parse_udp_payload("1200").map(UdpPayload::fixed),
            Ok(Some(1200))
        );
        for bad in ["1199", "65528", "", "1500b", "Auto"] {
            let e = parse_udp_payload(bad).unwrap_err();
            assert!(e.contains("use auto"), "{bad}: {e}");
        }
    }
}
