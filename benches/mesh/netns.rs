//! Two network namespaces joined by a veth pair, for a run whose client and
//! server sides talk over a real (virtual) link instead of loopback.
//!
//! Names carry the bench's pid (`phxb-<pid>-a`, `phxb-<pid>-b`), so parallel
//! runs do not collide and a later run can remove what a killed one left.
//! The namespaces are deleted on drop, and by the signal handler on Ctrl-C.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// Prefix of every namespace this bench creates.
const PREFIX: &str = "phxb-";

/// A namespace pair with a veth between them; deleted on drop.
pub struct NetnsPair {
    /// Client side: the load generator, fwdA, the client proxy.
    pub a: String,
    /// Server side: the server, fwdB, the echo proxy, the control plane.
    pub b: String,
    /// Address of the veth end in `a`.
    pub ip_a: Ipv4Addr,
    /// Address of the veth end in `b`.
    pub ip_b: Ipv4Addr,
}

/// The namespace names of this process.
pub fn names(pid: u32) -> (String, String) {
    (format!("{PREFIX}{pid}-a"), format!("{PREFIX}{pid}-b"))
}

/// Why the veth runs cannot happen here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".to_owned());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip -V` failed: {}", o.status)),
        Err(e) => Some(format!("no `ip` command: {e}")),
    }
}

impl NetnsPair {
    /// Creates the pair for this process, with link MTU `mtu`.
    pub fn create(mtu: u32) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let (a, b) = names(pid);
        // A /24 per run; only these two namespaces ever see it.
        let x = u8::try_from(pid % 250 + 1).unwrap_or(1);
        let pair = Self {
            a,
            b,
            ip_a: Ipv4Addr::new(10, 77, x, 1),
            ip_b: Ipv4Addr::new(10, 77, x, 2),
        };
        // From here on, drop removes whatever part was made.
        let veth_a = format!("phxb{pid}a");
        let veth_b = format!("phxb{pid}b");
        let mtu = mtu.to_string();
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns])?;
            // No IPv6: nothing here uses it, and DAD/router solicitations
            // would only add noise. New interfaces inherit `default`.
            run(Command::new("ip")
                .args(["netns", "exec", ns, "sh", "-c"])
                .arg(
                    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
                 echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
                ))?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", &veth_a, "netns", &pair.a, "mtu", &mtu, "type", "veth", "peer", "name",
            &veth_b, "netns", &pair.b, "mtu", &mtu,
        ])?;
        for (ns, veth, addr) in [(&pair.a, &veth_a, pair.ip_a), (&pair.b, &veth_b, pair.ip_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", veth])?;
            ip(&["-n", ns, "link", "set", veth, "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        delete(&self.a);
        delete(&self.b);
    }
}

/// Deletes namespace `name` if it exists (its veth end goes with it).
pub fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

/// Removes namespaces left by bench runs whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left by an earlier run");
            delete(name);
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
