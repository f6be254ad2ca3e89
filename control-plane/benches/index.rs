//! Scale of the Kubernetes index: 10,000 Services, 100,000 endpoints (each
//! a meshed pod), 5,000 subscribed proxies.
//!
//! Run: `cargo bench -p phoenix-control-plane --features kubernetes --bench index`
//! (`-- --services N --endpoints-per-service M --proxies P` to change the scale).
//! Reports what the issue asks: memory, time of a full build, and time and
//! bytes pushed for a single-endpoint change to reach every proxy, measured
//! as the control plane's own CPU work (index commit, per-proxy delta, frame
//! encoding); sending is the QUIC stack's work and is benchmarked in benches/mesh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use phoenix_control_plane::k8s::index::{Index, Subscriber};
use phoenix_control_plane::k8s::records::{
    EndpointRecord, ObjectKey, PodRecord, ServicePort, ServiceRecord, SliceRecord,
};

struct Scale {
    services: usize,
    endpoints_per_service: usize,
    proxies: usize,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pod_ip(service: usize, endpoint: usize, per: usize) -> IpAddr {
    let n = (service * per + endpoint) as u32;
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
}

fn namespace(service: usize) -> String {
    format!("ns{}", service % 100)
}

fn slice(s: usize, per: usize, ready_except: Option<usize>) -> SliceRecord {
    let ns = namespace(s);
    SliceRecord {
        service: ObjectKey::new(&ns, &format!("svc{s}")),
        ports: vec![("http".into(), 8080)],
        endpoints: (0..per)
            .map(|e| EndpointRecord {
                addresses: vec![pod_ip(s, e, per)],
                ready: ready_except != Some(e),
                serving_terminating: false,
                pod: Some(ObjectKey::new(&ns, &format!("svc{s}-{e}"))),
            })
            .collect(),
    }
}

fn main() {
    let scale = Scale {
        services: arg("--services", 10_000),
        endpoints_per_service: arg("--endpoints-per-service", 10),
        proxies: arg("--proxies", 5_000),
    };
    let per = scale.endpoints_per_service;
    println!(
        "index scale: {} services, {} endpoints, {} proxies",
        scale.services,
        scale.services * per,
        scale.proxies
    );
    let rss_start = rss_kib();

    // Full build: every object applied, one commit.
    let t = Instant::now();
    let mut index = Index::new("cluster.local", 1);
    for s in 0..scale.services {
        let ns = namespace(s);
        for e in 0..per {
            index.apply_pod(
                ObjectKey::new(&ns, &format!("svc{s}-{e}")),
                Some(PodRecord {
                    ips: vec![pod_ip(s, e, per)],
                    service_account: format!("sa{s}"),
                    quic_port: 4143,
                }),
            );
        }
        index.apply_service(
            ObjectKey::new(&ns, &format!("svc{s}")),
            Some(ServiceRecord {
                cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(0x6400_0000 + s as u32))],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: None,
                }],
            }),
        );
        index.apply_slice(
            ObjectKey::new(&ns, &format!("svc{s}-slice")),
            Some(slice(s, per, None)),
        );
    }
    index.commit().unwrap();
    let build = t.elapsed();
    let rss_index = rss_kib();
    println!(
        "full build: {:.2} s; index memory: {} MiB RSS ({} shared resources)",
        build.as_secs_f64(),
        (rss_index - rss_start) / 1024,
        index.published_len()
    );

    // Subscribers: proxies of the first endpoint pods (so each has an inbound).
    let mut subs: Vec<Subscriber> = (0..scale.proxies)
        .map(|i| {
            let s = i % scale.services;
            let e = (i / scale.services) % per;
            Subscriber::new(&namespace(s), &format!("sa{s}"), Some(pod_ip(s, e, per)))
        })
        .collect();
    let t = Instant::now();
    let mut first_bytes = 0usize;
    for sub in subs.iter_mut() {
        let Some((frame, false)) = index.update_frame(sub) else {
            panic!("first update is a snapshot")
        };
        first_bytes = frame.len();
    }
    let initial = t.elapsed();
    let rss_subs = rss_kib();
    println!(
        "initial snapshots: {:.2} s for {} proxies ({:.2} ms each, encoded: {:.1} MiB each); subscriber state: {} MiB",
        initial.as_secs_f64(),
        scale.proxies,
        initial.as_secs_f64() * 1000.0 / scale.proxies as f64,
        first_bytes as f64 / (1024.0 * 1024.0),
        rss_subs.saturating_sub(rss_index) / 1024
    );

    // Single-endpoint changes: one endpoint of one Service turns not ready,
    // then ready again; each reaches every proxy (all may call every Service).
    let mut runs = vec![];
    for round in 0..10 {
        // Even rounds take one endpoint out, odd rounds put it back.
        let s = (round / 2 * 7919) % scale.services;
        let ns = namespace(s);
        let ready_except = (round % 2 == 0).then_some(round / 2 % per);
        let t = Instant::now();
        index.apply_slice(
            ObjectKey::new(&ns, &format!("svc{s}-slice")),
            Some(slice(s, per, ready_except)),
        );
        index.commit().unwrap();
        let mut bytes = 0usize;
        let mut reached = 0usize;
        for sub in subs.iter_mut() {
            if let Some((frame, true)) = index.update_frame(sub) {
                bytes += frame.len();
                reached += 1;
            }
        }
        runs.push((t.elapsed(), bytes, reached));
    }
    runs.sort_by_key(|r| r.0);
    let (median, bytes, reached) = runs[runs.len() / 2];
    println!(
        "single-endpoint change: median {:.1} ms CPU to compute and encode deltas for {} proxies ({} bytes in all, {} per proxy); worst {:.1} ms",
        median.as_secs_f64() * 1000.0,
        reached,
        bytes,
        bytes / reached.max(1),
        runs.last().unwrap().0.as_secs_f64() * 1000.0
    );
    println!("peak RSS: {} MiB", peak_kib() / 1024);
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
