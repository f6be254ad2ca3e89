//! The `phoenix` CLI as a user runs it: the demo, `up`'s JSON contract,
//! bad mesh files, and no process left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

#[path = "support/harness.rs"]
mod harness;

use std::process::Command;
use std::time::Duration;

use harness::{Proc, bin, client_echo_mesh, echo_server, eventually};

#[test]
fn the_demo_runs_a_fully_post_quantum_mesh_on_request() {
    let out = Command::new(bin("phoenix"))
        .args([
            "demo",
            "--for",
            "3s",
            "-o",
            "json",
            "--identity-algorithm",
            "ml-dsa-65",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stderr}",
        out.status
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok_hs = s["handshakes"]["ok"].as_u64().unwrap();
    assert!(ok_hs >= 1);
    assert_eq!(s["handshakes"]["failed"], 0);
    // Every tunnel handshake: ML-KEM key exchange and an ML-DSA-65 server.
    assert_eq!(s["kxGroups"]["X25519MLKEM768"].as_u64(), Some(ok_hs));
    assert_eq!(
        s["sigSchemes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["ML_DSA_65"]
    );
    assert_eq!(s["sigSchemes"]["ML_DSA_65"].as_u64(), Some(ok_hs));
    assert!(s["requests"]["ok"].as_u64().unwrap() > 10);
    // A bad value is refused with the accepted ones named.
    let bad = Command::new(bin("phoenix"))
        .args(["demo", "--identity-algorithm", "rsa"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("ecdsa-p256 or ml-dsa-65"), "{stderr}");
}

#[test]
fn demo_runs_real_traffic_and_reports_json() {
    let out = Command::new(bin("phoenix"))
        .args(["demo", "--for", "10s", "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds exactly the summary: {stdout}");
    let s: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(s["version"], 1);
    let secs = s["durationSeconds"].as_f64().unwrap();
    assert!((9.5..12.0).contains(&secs), "ran {secs}s");
    let groups = s["kxGroups"].as_object().unwrap();
    assert_eq!(
        groups.keys().collect::<Vec<_>>(),
        vec!["X25519MLKEM768"],
        "only PQ handshakes"
    );
    let ok_hs = s["handshakes"]["ok"].as_u64().unwrap();
    assert!(ok_hs >= 1);
    assert_eq!(groups["X25519MLKEM768"].as_u64().unwrap(), ok_hs);
    // Classical identities by default: the summary says so.
    assert_eq!(
        s["sigSchemes"]["ECDSA_NISTP256_SHA256"].as_u64().unwrap(),
        ok_hs
    );
    assert_eq!(s["handshakes"]["failed"], 0);
    let ok = s["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 100, "only {ok} requests in 10s");
    assert_eq!(s["requests"]["failed"], 0);
    assert_eq!(s["bytes"]["sent"].as_u64().unwrap(), ok * 1024);
    assert_eq!(s["bytes"]["received"], s["bytes"]["sent"]);
    let (p50, p99) = (
        s["latencyMicros"]["p50"].as_u64().unwrap(),
        s["latencyMicros"]["p99"].as_u64().unwrap(),
    );
    assert!(p50 > 0 && p50 <= p99, "p50 {p50} p99 {p99}");
    // The UDP game: a move every 10 ms for 10 s, answered through the
    // mesh as QUIC datagrams (UDP may lose one on a loaded machine; the
    // demo counts it, never stalls on it).
    let moves = s["calls"]["game"]["ok"].as_u64().unwrap();
    let lost = s["calls"]["game"]["failed"].as_u64().unwrap();
    assert!(moves > 300, "only {moves} game moves answered");
    assert!(lost * 100 <= moves, "{lost} of {moves} moves unanswered");
    // The HTTP and gRPC services: the clients' counts agree with the
    // golden metrics the client's proxy kept (a call in flight at the stop
    // may be counted by one and not the other).
    for service in ["web", "grpc"] {
        let calls = s["calls"][service]["ok"].as_u64().unwrap();
        let golden = &s["services"][service];
        let requests = golden["requests"].as_u64().unwrap();
        assert!(calls > 100, "{service}: only {calls} calls");
        assert_eq!(s["calls"][service]["failed"], 0, "{service}");
        assert!(
            requests.abs_diff(calls) <= 4,
            "{service}: proxy {requests}, client {calls}"
        );
        assert_eq!(golden["successRate"], 1.0, "{service}");
        let (p50, p99) = (
            golden["p50Ms"].as_f64().unwrap(),
            golden["p99Ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{service}: p50 {p50} p99 {p99}");
        let rps = golden["rps"].as_f64().unwrap();
        // Over the run's length (the summary shows it rounded to 0.1 s).
        let expected = requests as f64 / secs;
        assert!(
            (rps - expected).abs() <= expected * 0.02,
            "{service}: {rps} req/s, {expected} expected"
        );
    }
}

/// Runs `phoenix up -f` on `yaml`: exit code and stderr.
fn up_refusal(path: &std::path::Path, yaml: &str) -> (Option<i32>, String) {
    std::fs::write(path, yaml).unwrap();
    let out = Command::new(bin("phoenix"))
        .args(["up", "-f"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_mesh_file_exits_64_naming_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let (code, err) = up_refusal(
        &path,
        "trustDomain: phoenix.local\nworkloads:\n  - name: web\n    upstream: []\n",
    );
    assert_eq!(code, Some(64));
    assert!(
        err.contains("line 4") && err.contains("unknown field `upstream`"),
        "{err}"
    );

    let (code, err) = up_refusal(
        &path,
        "trustDomain: phoenix.local\nworkloads:\n  - name: web\n    upstreams: [{service: db, listen: \"127.0.0.1:0\"}]\n",
    );
    assert_eq!(code, Some(64));
    assert!(
        err.contains("line 4")
            && err.contains("workloads[0].upstreams[0].service")
            && err.contains("no workload serves service `db`"),
        "{err}"
    );
    // The same validation guards the binaries themselves.
    let out = Command::new(bin("phoenix-control-plane"))
        .arg("--mesh")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn proxy_flags_are_checked_before_anything_starts() {
    let out = Command::new(bin("phoenix-proxy"))
        .args([
            "--control-plane",
            "127.0.0.1:1",
            "--control-plane-identity",
            "not-an-id",
        ])
        .args(["--trust-anchor", "/nonexistent/ca.crt"])
        .env("PHOENIX_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-anchor"));
    let out = Command::new(bin("phoenix-proxy"))
        .args([
            "--control-plane",
            "127.0.0.1:1",
            "--control-plane-identity",
            "x",
            "--trust-anchor",
            "x",
            "--key-exchange",
            "classic",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap rejects the flag");
    assert!(String::from_utf8_lossy(&out.stderr).contains("use pq-only or pq-preferred"));
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's bookkeeping remains.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn up(yaml: &str) -> (tempfile::TempDir, Proc, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(bin("phoenix"));
    cmd.args(["up", "-o", "json", "--drain-grace", "1s", "-f"])
        .arg(&path);
    let p = Proc::spawn("phoenix up", cmd);
    let report: serde_json::Value = serde_json::from_str(&p.line(Duration::from_secs(60))).unwrap();
    (dir, p, report)
}

#[test]
fn up_json_is_one_stable_line() {
    let (_dir, p, r) = up(&client_echo_mesh(echo_server(), ""));
    assert_eq!(r["version"], 1);
    assert!(
        r["controlPlane"]["control"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(r["controlPlane"]["admin"].as_str().is_some());
    let proxies = r["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    let client = proxies.iter().find(|p| p["workload"] == "client").unwrap();
    assert_eq!(
        client["identity"],
        "spiffe://phoenix.local/ns/default/sa/client"
    );
    assert!(client["pid"].as_u64().unwrap() > 0);
    assert_eq!(client["outbound"][0]["service"], "echo");
    assert_ne!(
        client["outbound"][0]["listen"], "127.0.0.1:0",
        "the bound port is reported"
    );
    // Nothing else on stdout afterwards: status goes to stderr.
    assert!(p.try_line(Duration::from_millis(300)).is_none());
}

#[test]
fn killing_up_leaves_no_process_behind() {
    let (_dir, mut p, r) = up(&client_echo_mesh(echo_server(), ""));
    let pids: Vec<u32> = r["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    assert!(pids.iter().all(|pid| alive(*pid)));
    p.child.kill().unwrap(); // SIGKILL: no chance to clean up
    p.child.wait().unwrap();
    eventually(
        Duration::from_secs(10),
        "children gone after SIGKILL of phoenix up",
        || pids.iter().all(|pid| !alive(*pid)).then_some(()),
    );
}

#[test]
fn sigterm_stops_up_cleanly() {
    let (_dir, mut p, r) = up(&client_echo_mesh(echo_server(), ""));
    let pids: Vec<u32> = r["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    p.terminate();
    let status = p.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "children stopped before up exited"
    );
}

/// `phoenix inject` is the webhook's injection, offline: the golden patch's
/// containers appear in the output, other objects pass unchanged, and
/// injecting the output again changes nothing.
#[cfg(feature = "kubernetes")]
#[test]
fn inject_adds_the_proxy_to_workloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("control-plane/tests/golden/inject/deployment.yaml");
    let service = dir.path().join("svc.yaml");
    std::fs::write(
        &service,
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}]}\n",
    )
    .unwrap();
    let inject = |files: &[&std::path::Path]| {
        let mut cmd = Command::new(bin("phoenix"));
        cmd.arg("inject");
        for f in files {
            cmd.arg("-f").arg(f);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let once = inject(&[&manifests, &service]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&once).unwrap();
    assert_eq!(docs.len(), 2);
    let init: Vec<&str> = docs[0]["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["phoenix-init", "phoenix-proxy", "migrate"]);
    assert_eq!(docs[1]["kind"], "Service");
    assert!(
        docs[1].get("spec").is_some() && !once.split("---\n").nth(2).unwrap().contains("phoenix")
    );
    let injected = dir.path().join("injected.yaml");
    std::fs::write(&injected, &once).unwrap();
    assert_eq!(
        inject(&[&injected]),
        once,
        "injecting twice changes nothing"
    );
    // A missing file is a config error with its name.
    let out = Command::new(bin("phoenix"))
        .args(["inject", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml"));
}

#[test]
fn help_lists_every_command_and_each_one_answers() {
    let out = Command::new(bin("phoenix")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["up", "demo", "inject", "install", "check"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`phoenix --help` lists {command}:\n{help}"
        );
        let sub = Command::new(bin("phoenix"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(
            sub.status.success(),
            "phoenix {command} --help: {}",
            String::from_utf8_lossy(&sub.stderr)
        );
    }
}

/// The control plane's stderr while it starts and stops, with `env` set.
fn control_plane_logs(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, client_echo_mesh(echo_server(), "")).unwrap();
    let mut cmd = Command::new(bin("phoenix-control-plane"));
    cmd.arg("--mesh")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .env_remove("PHOENIX_LOG_FORMAT")
        .env_remove("PHOENIX_LOG_JSON")
        .envs(env.iter().copied());
    let mut p = Proc::spawn("control-plane", cmd);
    // Bound: it has logged its start (CA root, listeners).
    p.line(Duration::from_secs(30));
    p.terminate();
    p.stderr_at_exit(Duration::from_secs(10))
}

#[test]
fn logs_are_plain_text_in_a_pipe_and_json_lines_on_request() {
    let text = control_plane_logs(&[]);
    assert!(!text.trim().is_empty(), "the control plane logs its start");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {text:?}"
    );
    let json = control_plane_logs(&[("PHOENIX_LOG_FORMAT", "json")]);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
