//! The largest UDP payload worth probing toward a peer: the MTU of the
//! interface the kernel routes the peer through, minus the IP and UDP
//! headers.
//!
//! Why: a fixed 1452-byte payload is wrong both ways. It wastes jumbo
//! frames (a 9000-byte VPC MTU carries six times the bytes per packet, and
//! QUIC's cost is mostly per packet), and it exceeds overlay MTUs (1450 on
//! VXLAN, 1400 here on this VM's eth0), where every full packet is
//! dropped until loss detection gives up on it. quinn's DPLPMTUD (RFC 8899)
//! probes upward with padded packets from QUIC's 1200 and settles on what
//! the path really carries; the interface MTU is the ceiling of that search, so it
//! ends in a few probes and never tries sizes the first hop refuses. A
//! smaller hop further on (a tunnel, IPsec) is found by quinn's black-hole
//! detection, which falls back to QUIC's 1200.
//!
//! The routes are read from `/proc/net/route` (IPv4's main table only) and
//! `/proc/net/ipv6_route` (every IPv6 table, including the local one).
//! Policy routing is not followed, nor an IPv4 peer at one of this host's
//! own addresses (it goes over loopback, but is probed as its subnet's
//! interface): both can only make the ceiling too high, and the probes
//! then find the real size. Each interface's MTU is read from
//! `/sys/class/net/<name>/mtu`. Safe code only: a
//! connected socket's `IP_MTU` would need `getsockopt` through `unsafe`.
//! The parse is pure (tested on captured tables); the read is cached for
//! a few seconds, since it happens once per peer connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The ceiling used when no route or MTU can be read: quinn's own default,
/// which fits a 1500-byte MTU over IPv6 as well as IPv4.
pub const FALLBACK_PAYLOAD: u16 = 1452;

/// The smallest payload QUIC allows (RFC 9000 §14): probing starts here.
pub const MIN_PAYLOAD: u16 = 1200;

/// The largest UDP payload there is (65,535 bytes of IPv6 payload minus
/// the UDP header); quinn refuses more.
pub const MAX_PAYLOAD: u16 = 65527;

/// The largest MTU probed: AWS's 9001 (jumbo frames are 9000, GCP allows
/// 8896).
///
/// Peers reached through loopback (`phoenix up`, the demo, tests) are not
/// probed at all and keep 1452: loopback's 65,536 is no network's MTU,
/// and measured on it, large packets hurt. A bulk transfer's congestion
/// losses tripped quinn's black-hole heuristic about once per 300 MiB,
/// and a user-space hop on the path (tests/faults.rs' reordering relay,
/// with its default socket buffers) fell from 13 MiB/s to 0.6 at a
/// 65,508-byte ceiling and broke its connection at 8,973.
pub const LARGEST_MTU: u32 = 9001;

/// The path MTU probed by default (`--max-path-mtu`): Ethernet's. Jumbo
/// probing works (tests/path_mtu.rs finds 8972 over a 9000-byte veth),
/// but in the first bulk benchmark at MTU 9000 quinn's black-hole
/// heuristic fired on congestion losses, the connection fell back to
/// 1452, and it moved 2.77 Gbit/s against 4.47 at MTU 1500
/// (benches/README.md): opt in until that is understood.
pub const DEFAULT_MAX_PATH_MTU: u32 = 1500;

/// How long a read of the routing tables is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// IPv4 route flag: the route rejects packets (unreachable, prohibit).
const RTF_REJECT: u32 = 0x0200;
/// IPv6 route flag: the destination is one of this host's addresses, so
/// packets go through the loopback device whatever device is printed.
const RTF_LOCAL: u32 = 0x8000_0000;

/// Bytes of IP and UDP header ahead of a QUIC packet sent to `ip`.
pub fn header_bytes(ip: IpAddr) -> u16 {
    match canonical(ip) {
        IpAddr::V4(_) => 20 + 8,
        IpAddr::V6(_) => 40 + 8,
    }
}

/// What the host knows of the path toward a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Through the loopback device: not probed (see [`LARGEST_MTU`]).
    Loopback,
    /// No route, or the tables cannot be read.
    Unknown,
    /// Through an interface whose MTU allows payloads of this many bytes
    /// (capped by `max_mtu` and [`LARGEST_MTU`]).
    Routed(u16),
}

/// The path toward `peer`, its ceiling capped at `max_mtu`.
pub fn path_to(peer: IpAddr, max_mtu: u32) -> PathKind {
    let Some(routes) = cached() else {
        return PathKind::Unknown;
    };
    if routes.via_loopback(peer) {
        return PathKind::Loopback;
    }
    routes.mtu_to(peer).map_or(PathKind::Unknown, |mtu| {
        PathKind::Routed(payload_for_mtu(mtu.min(max_mtu), peer))
    })
}

/// The largest payload any interface but loopback carries, at most
/// `max_mtu`'s (the endpoint's receive ceiling, advertised to peers), or
/// [`FALLBACK_PAYLOAD`].
pub fn largest_payload(max_mtu: u32) -> u16 {
    cached()
        .and_then(|routes| {
            routes
                .mtus
                .iter()
                .filter(|(name, _)| name.as_str() != "lo")
                .map(|(_, mtu)| *mtu)
                .max()
        })
        .map_or(FALLBACK_PAYLOAD, |mtu| {
            payload_for_mtu(mtu.min(max_mtu), IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        })
        .max(FALLBACK_PAYLOAD)
}

fn payload_for_mtu(mtu: u32, peer: IpAddr) -> u16 {
    let payload = mtu
        .min(LARGEST_MTU)
        .saturating_sub(u32::from(header_bytes(peer)));
    u16::try_from(payload)
        .unwrap_or(MAX_PAYLOAD)
        .clamp(MIN_PAYLOAD, MAX_PAYLOAD)
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4
/// peer) is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn cached() -> Option<Arc<Routes>> {
    static CACHE: Mutex<Option<(Instant, Arc<Routes>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((at, routes)) = cache.as_ref()
        && at.elapsed() < CACHE_FOR
    {
        return Some(routes.clone());
    }
    let routes = Arc::new(Routes::read()?);
    *cache = Some((Instant::now(), routes.clone()));
    Some(routes)
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route4 {
    iface: String,
    dest: Ipv4Addr,
    prefix: u8,
    metric: u32,
}

/// One IPv6 route (every table the file prints).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route6 {
    iface: String,
    dest: Ipv6Addr,
    prefix: u8,
    metric: u32,
    local: bool,
}

/// The host's routes and interface MTUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    v4: Vec<Route4>,
    v6: Vec<Route6>,
    mtus: HashMap<String, u32>,
}

impl Routes {
    /// Reads the kernel's tables; `None` when `/proc` is not there.
    pub fn read() -> Option<Self> {
        let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        let mut mtus = HashMap::new();
        for entry in std::fs::read_dir("/sys/class/net").ok()?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mtu = std::fs::read_to_string(entry.path().join("mtu")).ok();
            if let Some(mtu) = mtu.and_then(|m| m.trim().parse::<u32>().ok()) {
                mtus.insert(name, mtu);
            }
        }
        Some(Self::parse(&v4, &v6, mtus))
    }

    /// Builds the tables from the two files' text and each interface's
    /// MTU. Lines that do not parse are skipped: the kernel's format is
    /// fixed, and a line we cannot read only lowers what we know.
    pub fn parse(v4: &str, v6: &str, mtus: HashMap<String, u32>) -> Self {
        Self {
            v4: v4.lines().skip(1).filter_map(parse_route4).collect(),
            v6: v6.lines().filter_map(parse_route6).collect(),
            mtus,
        }
    }

    /// The MTU of the path's first hop toward `ip`, if a route leads there.
    pub fn mtu_to(&self, ip: IpAddr) -> Option<u32> {
        match canonical(ip) {
            IpAddr::V4(v4) => self.mtu_to_v4(v4),
            IpAddr::V6(v6) => self.mtu_to_v6(v6),
        }
    }

    /// Whether packets to `ip` go through the loopback device: a
    /// loopback address, or (IPv6) one of this host's own.
    pub fn via_loopback(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || self.best_v6(v6).is_some_and(|r| r.local || r.iface == "lo")
            }
        }
    }

    fn mtu_to_v4(&self, ip: Ipv4Addr) -> Option<u32> {
        // 127/8 lives in the local table, which /proc/net/route omits.
        if ip.is_loopback() {
            return self.mtus.get("lo").copied();
        }
        let bits = u32::from(ip);
        let route = self
            .v4
            .iter()
            .filter(|r| prefix_matches4(bits, u32::from(r.dest), r.prefix))
            .max_by(|a, b| a.prefix.cmp(&b.prefix).then(b.metric.cmp(&a.metric)))?;
        self.mtus.get(&route.iface).copied()
    }

    fn mtu_to_v6(&self, ip: Ipv6Addr) -> Option<u32> {
        if ip.is_loopback() {
            return self.mtus.get("lo").copied();
        }
        let route = self.best_v6(ip)?;
        let iface = if route.local { "lo" } else { &route.iface };
        self.mtus.get(iface).copied()
    }

    fn best_v6(&self, ip: Ipv6Addr) -> Option<&Route6> {
        let bits = u128::from(ip);
        self.v6
            .iter()
            .filter(|r| prefix_matches6(bits, u128::from(r.dest), r.prefix))
            .max_by(|a, b| a.prefix.cmp(&b.prefix).then(b.metric.cmp(&a.metric)))
    }
}

fn prefix_matches4(ip: u32, dest: u32, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    ip & mask == dest & mask
}

fn prefix_matches6(ip: u128, dest: u128, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    ip & mask == dest & mask
}

/// A route's flags (hex), unless it rejects packets (unreachable,
/// prohibit): such a route leads nowhere, so a shorter one decides.
fn forwarding_flags(hex: &str) -> Option<u32> {
    let flags = u32::from_str_radix(hex, 16).ok()?;
    (flags & RTF_REJECT == 0).then_some(flags)
}

/// `Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT`,
/// addresses as the kernel's native-endian u32 in hex. The `MTU` column is
/// the route's advmss plus 40, not its MTU (`ip route … mtu N` shows 0
/// there): a route's own MTU is only in netlink, so it is not seen, and
/// probing finds a smaller path.
fn parse_route4(line: &str) -> Option<Route4> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [iface, dest, _gw, flags, _refcnt, _use, metric, mask, ..] = f.as_slice() else {
        return None;
    };
    forwarding_flags(flags)?;
    let dest = Ipv4Addr::from(u32::from_str_radix(dest, 16).ok()?.to_ne_bytes());
    let mask = u32::from_be_bytes(u32::from_str_radix(mask, 16).ok()?.to_ne_bytes());
    // A mask is contiguous ones; anything else is not a route we can match.
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return None;
    }
    Some(Route4 {
        iface: (*iface).to_owned(),
        dest,
        prefix: u8::try_from(mask.leading_ones()).ok()?,
        metric: metric.parse().ok()?,
    })
}

/// `dest prefix src src_prefix next_hop metric refcnt use flags iface`, in
/// hex.
fn parse_route6(line: &str) -> Option<Route6> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [
        dest,
        prefix,
        _src,
        _src_prefix,
        _next_hop,
        metric,
        _refcnt,
        _use,
        flags,
        iface,
    ] = f.as_slice()
    else {
        return None;
    };
    let flags = forwarding_flags(flags)?;
    let prefix = u8::from_str_radix(prefix, 16).ok()?;
    if prefix > 128 || dest.len() != 32 {
        return None;
    }
    Some(Route6 {
        iface: (*iface).to_owned(),
        dest: Ipv6Addr::from(u128::from_str_radix(dest, 16).ok()?),
        prefix,
        metric: u32::from_str_radix(metric, 16).ok()?,
        local: flags & RTF_LOCAL != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on the benchmark VM (eth0 at MTU 1400), plus a veth at 9000
    /// and a route with an advmss.
    const V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
veth0\t00014D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t1300\t0\t0
eth0\t0000A8C0\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    const V6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001       lo
fd000000000000000000000000000002 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000004 00000000 80200001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    fn routes() -> Routes {
        let mtus = [("eth0", 1400), ("veth0", 9000), ("lo", 65536)]
            .into_iter()
            .map(|(n, m)| (n.to_owned(), m))
            .collect();
        Routes::parse(V4, V6, mtus)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_matching_prefix_picks_the_interface() {
        let r = routes();
        assert_eq!(r.mtu_to(ip("10.77.1.2")), Some(9000), "veth subnet");
        assert_eq!(r.mtu_to(ip("192.0.2.9")), Some(1400), "eth0 subnet");
        assert_eq!(r.mtu_to(ip("8.8.8.8")), Some(1400), "default route");
        // The MTU column is advmss + 40, not a route MTU: ignored.
        assert_eq!(r.mtu_to(ip("10.9.9.9")), Some(1400));
    }

    #[test]
    fn reject_routes_lead_nowhere_and_loopback_is_lo() {
        let r = routes();
        // 192.168/16 is a reject route: the default route is used instead.
        assert_eq!(r.mtu_to(ip("192.168.1.1")), Some(1400));
        assert_eq!(r.mtu_to(ip("127.0.0.1")), Some(65536));
        assert_eq!(r.mtu_to(ip("::1")), Some(65536));
        assert_eq!(r.mtu_to(ip("::ffff:10.77.1.2")), Some(9000), "v4-mapped");
    }

    #[test]
    fn ipv6_local_addresses_go_through_lo_and_others_through_their_route() {
        let r = routes();
        assert_eq!(r.mtu_to(ip("fd00::2")), Some(65536), "our own address");
        assert!(r.via_loopback(ip("fd00::2")) && r.via_loopback(ip("::1")));
        assert!(r.via_loopback(ip("127.0.0.2")) && r.via_loopback(ip("::ffff:127.0.0.1")));
        assert!(!r.via_loopback(ip("fd00::7")) && !r.via_loopback(ip("10.77.1.2")));
        assert_eq!(r.mtu_to(ip("fd00::7")), Some(1400));
        assert_eq!(r.mtu_to(ip("2001:db8::1")), Some(1400), "default route");
    }

    #[test]
    fn payload_subtracts_the_headers_and_stays_in_quic_bounds() {
        assert_eq!(payload_for_mtu(1500, ip("10.0.0.1")), 1472);
        assert_eq!(payload_for_mtu(1500, ip("fd00::1")), 1452);
        assert_eq!(payload_for_mtu(9000, ip("10.0.0.1")), 8972);
        assert_eq!(payload_for_mtu(9001, ip("10.0.0.1")), 8973);
        // Loopback's MTU is no network path's: capped at jumbo size.
        assert_eq!(payload_for_mtu(65536, ip("127.0.0.1")), 8973);
        assert_eq!(payload_for_mtu(u32::MAX, ip("::1")), 8953);
        assert_eq!(payload_for_mtu(1000, ip("10.0.0.1")), MIN_PAYLOAD);
    }

    #[test]
    fn no_route_means_no_mtu_and_garbage_lines_are_skipped() {
        let r = Routes::parse("header\nnot a route\n", "zz 80\n", HashMap::new());
        assert_eq!(r, Routes::default());
        assert_eq!(r.mtu_to(ip("10.0.0.1")), None);
    }

    #[test]
    fn this_host_has_a_route_to_loopback() {
        // The real tables of the machine running the test.
        let routes = Routes::read().expect("/proc and /sys are readable");
        assert!(routes.mtu_to(ip("127.0.0.1")).is_some_and(|m| m >= 1280));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn v4_line(dest: Ipv4Addr, prefix: u8, metric: u32, mtu: u32) -> String {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let native = |bits: u32| u32::from_ne_bytes(bits.to_be_bytes());
            let dest = u32::from(dest) & mask;
            format!(
                "veth9\t{:08X}\t00000000\t0001\t0\t0\t{metric}\t{:08X}\t{mtu}\t0\t0",
                native(dest),
                native(mask)
            )
        }

        proptest! {
            #[test]
            fn any_text_parses_without_panicking(v4 in ".{0,300}", v6 in ".{0,300}", peer: IpAddr) {
                let r = Routes::parse(&v4, &v6, HashMap::new());
                let _ = r.mtu_to(peer);
            }

            #[test]
            fn an_ipv4_route_round_trips_and_covers_its_prefix(
                dest: Ipv4Addr, prefix in 1u8..=32, metric: u32, host: u32, iface_mtu in 1280u32..70000,
            ) {
                prop_assume!(!dest.is_loopback());
                let text = format!("header\n{}\n", v4_line(dest, prefix, metric, 0));
                let mtus = HashMap::from([("veth9".to_owned(), iface_mtu)]);
                let r = Routes::parse(&text, "", mtus);
                prop_assert_eq!(r.v4.len(), 1);
                prop_assert_eq!(r.v4[0].prefix, prefix);
                // Any address under the prefix takes the route.
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                let inside = Ipv4Addr::from((u32::from(dest) & mask) | (host & !mask));
                prop_assume!(!inside.is_loopback());
                prop_assert_eq!(r.mtu_to(IpAddr::V4(inside)), Some(iface_mtu));
            }

            #[test]
            fn an_ipv6_route_round_trips(dest: Ipv6Addr, prefix in 1u8..=128, metric: u32) {
                // Loopback is lo's; a v4-mapped address takes IPv4 routes.
                prop_assume!(!dest.is_loopback() && dest.to_ipv4_mapped().is_none());
                let line = format!(
                    "{:032x} {prefix:02x} {:032x} 00 {:032x} {metric:08x} 00000001 00000000 00000001 veth9",
                    u128::from(dest), 0u128, 0u128
                );
                let mtus = HashMap::from([("veth9".to_owned(), 9000)]);
                let r = Routes::parse("", &line, mtus);
                prop_assert_eq!(r.mtu_to(IpAddr::V6(dest)), Some(9000));
            }
        }
    }
}
