//! The container images, built by `scripts/images` with umoci (no Docker
//! daemon): their OCI config (entrypoint, non-root user, labels), and that
//! they run with nothing but what they carry: each binary starts in a
//! chroot of its unpacked image as its non-root user, and the proxy image's
//! `phoenix-proxy init` programs a network namespace with its own iptables.
//! Needs root and umoci (scripts/test installs it); built from the debug
//! binaries here, from release ones by `scripts/images` by default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

#[path = "support/harness.rs"]
mod harness;

use harness::run_ok;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blob(layout: &Path, digest: &str) -> Value {
    let (algo, hex) = digest.split_once(':').unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs").join(algo).join(hex)).unwrap())
        .unwrap()
}

#[test]
fn images_are_small_non_root_and_run_with_what_they_carry() {
    assert!(
        rustix::process::geteuid().is_root(),
        "building and unpacking images keeps file owners: run as root (CI does)"
    );
    let out = tempfile::tempdir().unwrap();
    let printed = run_ok(
        Command::new(repo().join("scripts/images"))
            .args(["--profile", "debug", "--tag", "test"])
            .arg("--out")
            .arg(out.path()),
    );
    let version = env!("CARGO_PKG_VERSION");
    for (name, uid) in [("phoenix-proxy", "2102"), ("phoenix-control-plane", "2103")] {
        assert!(printed.contains(&format!("{name}:test")), "{printed}");
        let layout = out.path().join(name);
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest = blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
        let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        let c = &config["config"];
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{name}")])
        );
        assert_eq!(c["User"], format!("{uid}:{uid}"), "{name} runs as non-root");
        assert_eq!(c["Labels"]["org.opencontainers.image.version"], "test");
        // Small: the compressed layers.
        let size: u64 = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        assert!(size < 40 * 1024 * 1024, "{name}: {size} bytes of layers");

        // The binary runs in a chroot of the image, as its user: every
        // library it needs is in the image.
        let bundle = out.path().join(format!("{name}-bundle"));
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:test", layout.display()))
                .arg(&bundle),
        );
        let rootfs = bundle.join("rootfs");
        let printed = run_ok(
            Command::new("chroot")
                .arg(format!("--userspec={uid}:{uid}"))
                .arg(&rootfs)
                .arg(format!("/usr/local/bin/{name}"))
                .arg("--version"),
        );
        assert!(printed.contains(version), "{name} --version: {printed}");
    }

    // The proxy image's own iptables programs a pod's namespace. A container
    // runtime gives the container /dev; the chroot gets /dev/null by hand.
    let rootfs = out.path().join("phoenix-proxy-bundle/rootfs");
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    run_ok(
        Command::new("mknod")
            .arg(rootfs.join("dev/null"))
            .args(["c", "1", "3"]),
    );
    run_ok(
        Command::new("chmod")
            .arg("666")
            .arg(rootfs.join("dev/null")),
    );
    let ns = format!("phx-img-{:06x}", rand::random::<u32>() & 0xff_ffff);
    run_ok(Command::new("ip").args(["netns", "add", &ns]));
    let result = Command::new("ip")
        .args(["netns", "exec", &ns, "chroot"])
        .arg(&rootfs)
        .args(["/usr/local/bin/phoenix-proxy", "init"])
        .output()
        .unwrap();
    let rules = Command::new("ip")
        .args(["netns", "exec", &ns, "iptables-nft-save", "-t", "nat"])
        .output()
        .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    assert!(
        result.status.success(),
        "init in the image: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-A PHOENIX_OUTBOUND -p tcp -j REDIRECT --to-ports 4140"),
        "{rules}"
    );
}
