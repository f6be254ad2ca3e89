//! `phoenix-proxy init`: programs the pod's network namespace so the app's
//! TCP goes through the proxy without the app knowing.
//!
//! Two chains in the `nat` table, as Linkerd's proxy-init and Istio's
//! istio-iptables do: `PHOENIX_OUTBOUND` (from `OUTPUT`) redirects the app's
//! outbound TCP to the proxy's outbound port, except the proxy's own traffic
//! (matched by UID: without it the proxy would redirect itself forever),
//! loopback, and skipped ports; `PHOENIX_INBOUND` (from `PREROUTING`)
//! redirects TCP arriving for the app to the proxy's inbound port, except
//! skipped ports (the admin port, for the kubelet's probes). UDP is not
//! touched: the proxies' QUIC goes straight through.
//!
//! The rules are computed by pure functions ([`rules`], [`restore_input`])
//! and applied with one `iptables-restore --noflush`: declaring our chains
//! flushes them, and the jumps into them are added only when absent, so
//! running init twice changes nothing.

use std::io::Write;
use std::process::{Command, Stdio};

/// Chain that `PREROUTING` jumps to.
pub const INBOUND_CHAIN: &str = "PHOENIX_INBOUND";
/// Chain that `OUTPUT` jumps to.
pub const OUTBOUND_CHAIN: &str = "PHOENIX_OUTBOUND";
/// Exit code when the process may not change the namespace's rules
/// (sysexits' `EX_NOPERM`).
pub const EXIT_NO_PERMISSION: u8 = 77;

/// Flags of `phoenix-proxy init`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "phoenix-proxy init",
    about = "Redirect the pod's TCP through the proxy (needs NET_ADMIN)"
)]
pub struct InitArgs {
    /// UID the proxy runs as: its own connections are not redirected.
    #[arg(long, env = "PHOENIX_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Port of the proxy's outbound redirect listener (`--outbound-redirect`).
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,
    /// Port of the proxy's inbound redirect listener (`--inbound-redirect`).
    #[arg(long, default_value_t = 4141)]
    pub inbound_port: u16,
    /// The proxy's admin port: never redirected, so the kubelet's probes of
    /// /ready and Prometheus reach the proxy itself, whatever else is skipped.
    #[arg(long, default_value_t = 4191)]
    pub admin_port: u16,
    /// Further inbound TCP ports not redirected, comma-separated (the app's
    /// own, e.g. a port it must serve in clear).
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound TCP ports not redirected, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// iptables backend: `auto` (the one already holding rules, else nft),
    /// `nft` or `legacy`.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    pub backend: BackendChoice,
    /// Program IPv6 too: `auto` (when IPv6 is enabled in the namespace:
    /// otherwise the app's IPv6 TCP would leave in the clear), `on`, `off`.
    #[arg(long, default_value = "auto", value_parser = parse_ipv6)]
    pub ipv6: Ipv6Choice,
    /// Print the rules without applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Whether to program ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Choice {
    /// When the namespace has IPv6 (`/proc/net/if_inet6` exists).
    Auto,
    /// Always (fails without ip6tables).
    On,
    /// Never.
    Off,
}

fn parse_ipv6(s: &str) -> Result<Ipv6Choice, String> {
    match s {
        "auto" => Ok(Ipv6Choice::Auto),
        "on" => Ok(Ipv6Choice::On),
        "off" => Ok(Ipv6Choice::Off),
        other => Err(format!(
            "`{other}` is not an IPv6 choice; use auto, on or off"
        )),
    }
}

/// Which iptables the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Detect.
    Auto,
    /// `iptables-nft-*`.
    Nft,
    /// `iptables-legacy-*`.
    Legacy,
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "nft" => Ok(BackendChoice::Nft),
        "legacy" => Ok(BackendChoice::Legacy),
        other => Err(format!(
            "`{other}` is not an iptables backend; use auto, nft or legacy"
        )),
    }
}

/// A usable iptables: the commands to read and write rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// e.g. `nft` or `legacy` (`default` for a plain `iptables`).
    pub name: &'static str,
    /// e.g. `iptables-nft-save`.
    pub save: &'static str,
    /// e.g. `iptables-nft-restore`.
    pub restore: &'static str,
    /// The IPv6 twin of `save`.
    pub save6: &'static str,
    /// The IPv6 twin of `restore`.
    pub restore6: &'static str,
}

const NFT: Backend = Backend {
    name: "nft",
    save: "iptables-nft-save",
    restore: "iptables-nft-restore",
    save6: "ip6tables-nft-save",
    restore6: "ip6tables-nft-restore",
};
const LEGACY: Backend = Backend {
    name: "legacy",
    save: "iptables-legacy-save",
    restore: "iptables-legacy-restore",
    save6: "ip6tables-legacy-save",
    restore6: "ip6tables-legacy-restore",
};
const PLAIN: Backend = Backend {
    name: "default",
    save: "iptables-save",
    restore: "iptables-restore",
    save6: "ip6tables-save",
    restore6: "ip6tables-restore",
};

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// No iptables command is installed.
    #[error(
        "no iptables found (looked for iptables-nft-save, iptables-legacy-save, iptables-save); install iptables in the init image"
    )]
    NoIptables,
    /// IPv6 is on but ip6tables is missing.
    #[error(
        "IPv6 is enabled in this network namespace but {command} is missing, so the app's IPv6 TCP would bypass the proxy; install ip6tables, or pass --ipv6 off if the pod has no IPv6"
    )]
    NoIp6tables {
        /// The command looked for.
        command: &'static str,
    },
    /// The process lacks the right to change rules.
    #[error(
        "{command} was refused: the init container needs the NET_ADMIN capability (and NET_RAW) or root; the injector adds them"
    )]
    NoPermission {
        /// The command refused.
        command: &'static str,
    },
    /// An iptables command failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command.
        command: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// An iptables command could not be run.
    #[error("cannot run {command}")]
    Spawn {
        /// The command.
        command: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Our chains' rules, in `iptables-save` syntax (without the `-A CHAIN`
/// jumps into them).
pub fn rules(args: &InitArgs) -> Vec<String> {
    let mut r = Vec::new();
    let mut skipped = vec![args.admin_port];
    for port in &args.skip_inbound_ports {
        if !skipped.contains(port) {
            skipped.push(*port);
        }
    }
    for port in &skipped {
        r.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    r.push(format!(
        "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    r.push(format!(
        "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    ));
    r.push(format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"));
    for port in &args.skip_outbound_ports {
        r.push(format!(
            "-A {OUTBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
        ));
    }
    r.push(format!(
        "-A {OUTBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    r
}

/// The jumps into our chains, as `iptables-save` prints them.
pub fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"),
        format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
    ]
}

/// Input for `iptables-restore --noflush`, given the `nat` table as it is
/// now (`iptables-save -t nat`): our chains are declared (so flushed and
/// refilled) and the jumps added only when `current` lacks them.
pub fn restore_input(args: &InitArgs, current: &str) -> String {
    let mut out = String::from("*nat\n");
    out.push_str(&format!(":{INBOUND_CHAIN} - [0:0]\n"));
    out.push_str(&format!(":{OUTBOUND_CHAIN} - [0:0]\n"));
    for jump in jumps() {
        if !current.lines().any(|l| l.trim() == jump) {
            out.push_str(&jump);
            out.push('\n');
        }
    }
    for rule in rules(args) {
        out.push_str(&rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Rules (`-A` lines) in an `iptables-save` output.
fn rule_count(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Picks the backend: the one asked for, else the one that already holds
/// rules (the node's kube-proxy or CNI chose it), else nft.
pub fn detect(choice: BackendChoice) -> Result<Backend, InitError> {
    let installed = |b: &Backend| which(b.save) && which(b.restore);
    match choice {
        BackendChoice::Nft if installed(&NFT) => return Ok(NFT),
        BackendChoice::Legacy if installed(&LEGACY) => return Ok(LEGACY),
        BackendChoice::Nft | BackendChoice::Legacy => return Err(InitError::NoIptables),
        BackendChoice::Auto => {}
    }
    let count = |b: &Backend| {
        installed(b)
            .then(|| save(b).ok().map(|s| rule_count(&s)))
            .flatten()
    };
    match (count(&LEGACY), count(&NFT)) {
        (Some(l), Some(0)) if l > 0 => Ok(LEGACY),
        (_, Some(_)) => Ok(NFT),
        (Some(_), None) => Ok(LEGACY),
        (None, None) if installed(&NFT) => Ok(NFT),
        (None, None) if installed(&LEGACY) => Ok(LEGACY),
        (None, None) if installed(&PLAIN) => Ok(PLAIN),
        (None, None) => Err(InitError::NoIptables),
    }
}

/// Whether this network namespace has IPv6 (the kernel has it and it is
/// not disabled here).
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
            .map_or(true, |v| v.trim() != "1")
}

fn which(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(command).is_file()))
}

fn refused(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied") || s.contains("operation not permitted")
}

/// The `nat` table now.
pub fn save(backend: &Backend) -> Result<String, InitError> {
    save_with(backend.save)
}

fn save_with(command: &'static str) -> Result<String, InitError> {
    let out = Command::new(command)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn { command, source })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(if refused(&stderr) {
            InitError::NoPermission { command }
        } else {
            InitError::Command { command, stderr }
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn restore(command: &'static str, input: &str) -> Result<(), InitError> {
    let spawn_error = |source| InitError::Spawn { command, source };
    let mut child = Command::new(command)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(())
    } else if refused(&stderr) {
        Err(InitError::NoPermission { command })
    } else {
        Err(InitError::Command { command, stderr })
    }
}

/// Runs init: prints what it applies (or would, with `--dry-run`) on `out`.
pub fn run(args: &InitArgs, out: &mut impl Write) -> Result<(), InitError> {
    let backend = detect(args.backend)?;
    let ipv6 = match args.ipv6 {
        Ipv6Choice::On => true,
        Ipv6Choice::Off => false,
        Ipv6Choice::Auto => ipv6_enabled(),
    };
    if ipv6 && !(which(backend.save6) && which(backend.restore6)) {
        return Err(InitError::NoIp6tables {
            command: backend.restore6,
        });
    }
    let mut families = vec![("IPv4", backend.save, backend.restore)];
    if ipv6 {
        families.push(("IPv6", backend.save6, backend.restore6));
    }
    for (family, save_cmd, restore_cmd) in families {
        let current = match save_with(save_cmd) {
            Ok(s) => s,
            // A dry run shows the rules even where it may not read them.
            Err(InitError::NoPermission { .. }) if args.dry_run => String::new(),
            Err(e) => return Err(e),
        };
        let input = restore_input(args, &current);
        let _ = writeln!(
            out,
            "# phoenix-proxy init: {family}, iptables backend {} ({restore_cmd}){}",
            backend.name,
            if args.dry_run { ", dry run" } else { "" }
        );
        let _ = out.write_all(input.as_bytes());
        if !args.dry_run {
            restore(restore_cmd, &input)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> InitArgs {
        let mut argv = vec!["phoenix-proxy init"];
        argv.extend_from_slice(extra);
        InitArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_proxy_loopback_and_skipped_ports_are_never_redirected() {
        let r = rules(&args(&["--skip-outbound-ports", "22,3306"]));
        let outbound: Vec<&String> = r.iter().filter(|l| l.contains(OUTBOUND_CHAIN)).collect();
        // Order matters: every exception comes before the REDIRECT.
        assert_eq!(
            outbound,
            [
                "-A PHOENIX_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
                "-A PHOENIX_OUTBOUND -o lo -j RETURN",
                "-A PHOENIX_OUTBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A PHOENIX_OUTBOUND -p tcp -m tcp --dport 3306 -j RETURN",
                "-A PHOENIX_OUTBOUND -p tcp -j REDIRECT --to-ports 4140",
            ]
        );
        assert_eq!(
            r.iter()
                .filter(|l| l.contains(INBOUND_CHAIN))
                .collect::<Vec<_>>(),
            [
                "-A PHOENIX_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
                "-A PHOENIX_INBOUND -p tcp -j REDIRECT --to-ports 4141",
            ]
        );
        // Skipping app ports keeps the admin port skipped (listed once).
        let r = rules(&args(&["--skip-inbound-ports", "9100,4191"]));
        assert_eq!(
            r.iter()
                .filter(|l| l.contains(INBOUND_CHAIN))
                .collect::<Vec<_>>(),
            [
                "-A PHOENIX_INBOUND -p tcp -m tcp --dport 4191 -j RETURN",
                "-A PHOENIX_INBOUND -p tcp -m tcp --dport 9100 -j RETURN",
                "-A PHOENIX_INBOUND -p tcp -j REDIRECT --to-ports 4141",
            ]
        );
    }

    #[test]
    fn jumps_are_added_once() {
        let a = args(&[]);
        let fresh = restore_input(&a, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        for jump in jumps() {
            assert_eq!(fresh.matches(jump.as_str()).count(), 1, "{fresh}");
        }
        // After a first run the jumps exist: a second run only refills our chains.
        let applied = format!("*nat\n{}\nCOMMIT\n", jumps().join("\n"));
        let again = restore_input(&a, &applied);
        for jump in jumps() {
            assert!(!again.contains(jump.as_str()), "{again}");
        }
        assert!(again.contains(":PHOENIX_OUTBOUND - [0:0]"));
    }

    #[test]
    fn bad_flags_name_the_fix() {
        let e = InitArgs::try_parse_from(["init", "--backend", "xt"]).unwrap_err();
        assert!(e.to_string().contains("use auto, nft or legacy"), "{e}");
        assert!(InitArgs::try_parse_from(["init", "--skip-inbound-ports", "http"]).is_err());
    }
}
