//! The results as Markdown tables on stdout (ready for benches/README.md),
//! with each figure's ratio to direct TCP and the targets from the issue.

use crate::{Link, LinkResult, Options, Sizes};

/// Throughput target: share of direct TCP over loopback.
const TARGET_THROUGHPUT_SHARE: f64 = 0.25;
/// Latency target: p50 added by the proxy pair over direct, µs.
const TARGET_ADDED_P50_US: f64 = 120.0;
/// Idle proxy RSS target: 10 MB, in KiB (decimal megabytes, the strict reading).
const TARGET_IDLE_KIB: f64 = 10_000_000.0 / 1024.0;
/// Per idle tunnelled connection: 8 KB, in KiB.
const TARGET_PER_CONN_KIB: f64 = 8_000.0 / 1024.0;
/// Full PQ handshakes per server CPU-second.
const TARGET_HANDSHAKES_PER_CORE: f64 = 1_500.0;

/// What the results were measured on.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub commit: String,
}

impl Machine {
    /// Reads /proc and asks git.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name")?
                        .split_once(':')
                        .map(|(_, v)| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(env!("CARGO_MANIFEST_DIR"))
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let mut commit =
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
        if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
            commit.push_str(" (with uncommitted changes)");
        }
        // `benches/run --baseline REV`: the proxies are another commit's.
        if let Ok(binaries) = std::env::var("PHOENIX_BENCH_BIN_COMMIT") {
            commit = format!("{binaries} (proxy binaries; bench harness at {commit})");
        }
        Self {
            cpu,
            cores,
            kernel,
            commit,
        }
    }
}

/// The run's conditions, printed first.
pub fn header(m: &Machine, opts: &Options, sizes: &Sizes) {
    println!(
        "# Phoenix mesh bench ({})",
        if opts.check {
            "--check: every path delivered every byte unchanged; figures at these sizes are not measurements"
        } else if opts.quick {
            "--quick"
        } else {
            "full"
        }
    );
    println!();
    println!(
        "commit {}; {} cores, {}; Linux {}; proxies with --max-udp-payload {}",
        m.commit,
        m.cores,
        m.cpu,
        m.kernel,
        opts.max_udp_payload.map_or_else(
            || format!("auto (path MTU discovery; veth MTU {})", opts.veth_mtu),
            |n| n.to_string()
        )
    );
    println!(
        "throughput: {} stream(s) at once, {} MiB (in all) or {} s, whichever first, {} run(s) per path taking turns (median shown); \
         ping-pong: {} B, {} × {} round trips per path taking turns, after {} warm-up; \
         {} idle tunnelled connections; {} handshakes, {} at a time",
        opts.streams,
        sizes.throughput_bytes >> 20,
        sizes.throughput_secs,
        sizes.throughput_runs,
        crate::MESSAGE_SIZE,
        sizes.pingpong_blocks,
        sizes.pingpong_rounds,
        sizes.pingpong_warmup,
        sizes.idle_connections,
        sizes.handshakes,
        sizes.handshake_concurrency
    );
    println!();
}

/// Every table, then the targets.
pub fn print(results: &[LinkResult], notes: &[String], sizes: &Sizes) {
    println!("## Throughput and latency");
    println!();
    println!(
        "| link | path | Gbit/s | runs | × direct | machine CPU busy | p50 µs | p99 µs | p50 × direct | p50 added µs |"
    );
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for r in results {
        let direct = &r.direct;
        let mut paths: Vec<(std::borrow::Cow<'static, str>, &crate::PathResult)> = vec![
            ("direct TCP".into(), &r.direct),
            ("TCP forwarder pair".into(), &r.forwarder),
            ("Phoenix proxy pair".into(), &r.phoenix),
        ];
        if let Some(tls) = &r.tls {
            paths.push(("TLS-over-TCP pair (stunnel)".into(), &tls.path));
        }
        for (v, f) in &r.variants {
            paths.push((format!("Phoenix proxy pair {}", v.label()).into(), &f.path));
        }
        for (name, p) in paths {
            let runs: Vec<String> = p.runs_gbps().iter().map(|g| format!("{g:.2}")).collect();
            println!(
                "| {} | {name} | {:.2} | {} | {:.2} | {:.2} of {cores} | {:.1} | {:.1} | {:.2} | {} |",
                r.link.name(),
                p.gbps(),
                runs.join(", "),
                p.gbps() / direct.gbps(),
                p.machine_busy,
                p.latency.p50_us,
                p.latency.p99_us,
                p.latency.p50_us / direct.latency.p50_us,
                if std::ptr::eq(p, direct) {
                    "–".to_owned()
                } else {
                    format!("{:+.1}", p.latency.p50_us - direct.latency.p50_us)
                }
            );
        }
    }
    println!();
    println!("## Efficiency: the two encrypting proxy pairs");
    println!();
    println!(
        "Phoenix (PQ mutual TLS over QUIC) beside a TLS-over-TCP pair (stunnel 5, OpenSSL 3.0: TLS 1.3, mutual authentication, X25519, AES-256-GCM), same client, same server, same run."
    );
    println!();
    println!(
        "| link | pair | Gbit/s | pair CPU during throughput (cores) | busiest thread, client / server side (cores) | Gbit per pair CPU-second | p50 added µs | pair CPU per round trip µs |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let mut pairs: Vec<(std::borrow::Cow<'static, str>, &crate::PathResult, _, _, _)> = vec![(
            "Phoenix proxy pair".into(),
            &r.phoenix,
            r.throughput_cpu,
            r.round_trip_cpu_us,
            r.busiest_thread,
        )];
        for (name, f) in r
            .tls
            .iter()
            .map(|f| (std::borrow::Cow::from("TLS-over-TCP pair (stunnel)"), f))
            .chain(
                r.variants
                    .iter()
                    .map(|(v, f)| (format!("Phoenix proxy pair {}", v.label()).into(), f)),
            )
        {
            pairs.push((
                name,
                &f.path,
                f.throughput_cpu,
                f.round_trip_cpu_us,
                f.busiest_thread,
            ));
        }
        for (name, p, cpu, rt, busiest) in pairs {
            let cores = cpu.client + cpu.echo;
            // stunnel runs each connection on a thread of its own, gone
            // by the time the run ends: no busiest thread to show.
            let busiest = if busiest.client + busiest.echo > 0.0 {
                format!("{:.2} / {:.2}", busiest.client, busiest.echo)
            } else {
                "–".to_owned()
            };
            println!(
                "| {} | {name} | {:.2} | {:.2} | {busiest} | {:.2} | {:+.1} | {:.0} |",
                r.link.name(),
                p.gbps(),
                cores,
                p.gbps() / cores,
                p.latency.p50_us - r.direct.latency.p50_us,
                rt.client + rt.echo
            );
        }
    }
    println!();
    println!("## Phoenix proxy CPU");
    println!();
    println!(
        "| link | proxy | CPU during the throughput runs (1.00 = one core) | CPU per ping-pong round trip µs |"
    );
    println!("|---|---|---:|---:|");
    for r in results {
        println!(
            "| {} | client proxy | {:.2} | {:.0} |",
            r.link.name(),
            r.throughput_cpu.client,
            r.round_trip_cpu_us.client
        );
        println!(
            "| {} | echo proxy | {:.2} | {:.0} |",
            r.link.name(),
            r.throughput_cpu.echo,
            r.round_trip_cpu_us.echo
        );
    }
    println!();
    for r in results {
        println!(
            "- {} (MTU {}): the client proxy's peer connection sent {} UDP payloads after the throughput runs{}",
            r.link.name(),
            r.mtu,
            r.udp_payload
                .map_or_else(|| "unreported".to_owned(), |p| format!("{p}-byte")),
            if r.udp_payload.is_some() {
                " (path MTU discovery, or the fixed --max-udp-payload)"
            } else {
                " (a proxy from before /config reported it)"
            }
        );
    }
    for r in results {
        let (dropped, received) = r.udp_drops;
        println!(
            "- {}: during the Phoenix throughput runs the kernel dropped {dropped} of {} UDP datagrams ({:.3}%)",
            r.link.name(),
            received + dropped,
            dropped as f64 * 100.0 / (received + dropped).max(1) as f64
        );
    }
    println!();
    println!("## Phoenix proxy memory (VmRSS)");
    println!();
    println!(
        "| link | proxy | idle MiB | with {} idle connections MiB | KiB per idle connection | after the run MiB |",
        sizes.idle_connections
    );
    println!("|---|---|---:|---:|---:|---:|");
    for r in results {
        let m = &r.memory;
        for (name, idle, loaded, after) in [
            (
                "client proxy",
                m.idle.client,
                m.loaded.client,
                m.after.client,
            ),
            ("echo proxy", m.idle.echo, m.loaded.echo, m.after.echo),
        ] {
            println!(
                "| {} | {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.link.name(),
                mib(idle),
                mib(loaded),
                per_conn_kib(idle, loaded, m.connections),
                mib(after)
            );
        }
    }
    println!();
    println!("## Full PQ handshakes (mutual TLS, X25519MLKEM768, no resumption) at the echo proxy");
    println!();
    println!(
        "| link | completed | failed | X25519MLKEM768 | wall s | echo proxy CPU s | per server CPU-second | server CPU per handshake ms | server counter +N |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let h = &r.handshakes;
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.3} | {:.0} {} |",
            r.link.name(),
            h.result.ok,
            h.result.failed,
            h.result.pq,
            h.result.secs,
            h.server_cpu_secs,
            per_cpu_second(r),
            h.server_cpu_secs * 1e3 / f64::from(h.result.ok.max(1)),
            h.metric_delta,
            if h.metric_delta == f64::from(h.result.ok) && h.result.failed == 0 {
                "(= N)"
            } else {
                "(≠ N!)"
            }
        );
        if let Some(e) = &h.result.first_error {
            println!("\nfirst handshake failure ({}): {e}", r.link.name());
        }
    }
    println!();
    println!("## Conditions");
    println!();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in results {
        let c = r.cpu_shares;
        let share = c.foreign / (c.wall * cores).max(1e-9);
        println!(
            "- {}: other processes used {:.1} CPU-s during the {:.0} s run ({:.1}% of all cores){}; \
             kernel threads {:.1} CPU-s and interrupts {:.1} CPU-s (packet processing, mostly ours)",
            r.link.name(),
            c.foreign,
            c.wall,
            share * 100.0,
            if share > 0.05 {
                " — the machine was not quiet: these figures are depressed"
            } else {
                ""
            },
            c.kernel_threads,
            c.irq
        );
    }
    println!();
    targets(results);
    for n in notes {
        println!();
        println!("Note: {n}");
    }
}

fn targets(results: &[LinkResult]) {
    println!("## Targets");
    println!();
    let links: Vec<&str> = results.iter().map(|r| r.link.name()).collect();
    println!("| target | {} |", links.join(" | "));
    println!("|---|{}", "---|".repeat(links.len()));
    let row = |name: &str, cell: &dyn Fn(&LinkResult) -> String| {
        let cells: Vec<String> = results.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    row(
        "throughput ≥ 25% of direct TCP (official: loopback)",
        &|r| {
            let share = r.phoenix.gbps() / r.direct.gbps();
            format!(
                "{:.0}% {}",
                share * 100.0,
                verdict(share >= TARGET_THROUGHPUT_SHARE)
            )
        },
    );
    row("p50 added by the proxy pair ≤ 120 µs", &|r| {
        let added = r.phoenix.latency.p50_us - r.direct.latency.p50_us;
        format!("{added:+.0} µs {}", verdict(added <= TARGET_ADDED_P50_US))
    });
    row("idle proxy RSS ≤ 10 MB (each proxy)", &|r| {
        let worst = r.memory.idle.client.max(r.memory.idle.echo) as f64;
        format!(
            "{:.1} MB {}",
            worst * 1024.0 / 1e6,
            verdict(worst <= TARGET_IDLE_KIB)
        )
    });
    row(
        "≤ 8 KB per idle tunnelled connection (each proxy)",
        &|r| {
            let m = &r.memory;
            let worst = per_conn_kib(m.idle.client, m.loaded.client, m.connections)
                .max(per_conn_kib(m.idle.echo, m.loaded.echo, m.connections));
            format!(
                "{:.1} KB {}",
                worst * 1.024,
                verdict(worst <= TARGET_PER_CONN_KIB)
            )
        },
    );
    row("≥ 1,500 full PQ handshakes/s per core", &|r| {
        let rate = per_cpu_second(r);
        format!(
            "{rate:.0}/s {}",
            verdict(rate >= TARGET_HANDSHAKES_PER_CORE)
        )
    });
    if results.iter().any(|r| r.link == Link::Veth) {
        println!();
        println!("(veth throughput share is against direct TCP over the same veth.)");
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn per_conn_kib(idle: u64, loaded: u64, connections: u32) -> f64 {
    (loaded as f64 - idle as f64) / f64::from(connections.max(1))
}

fn per_cpu_second(r: &LinkResult) -> f64 {
    f64::from(r.handshakes.result.ok) / r.handshakes.server_cpu_secs.max(1e-9)
}
