//! Child processes of the bench: placed in a network namespace when asked,
//! stdio piped, the announced stdout lines on a channel, stderr kept for
//! error messages, and killed when the handle drops.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Keep this much of a child's stderr for error messages.
const STDERR_KEEP: usize = 16 * 1024;

/// Pids of the children alive now, for the signal handler.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills and reaps every child still alive (on Ctrl-C, where no destructor
/// runs; children would die with us anyway, but be left unreaped).
pub fn kill_all() {
    use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
    let pids = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    for pid in pids {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        let _ = kill_process(pid, Signal::KILL);
        let _ = waitpid(Some(pid), WaitOptions::empty());
    }
}

/// A running child process; dropping it kills it.
pub struct Child {
    /// Name for messages.
    pub name: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Child {
    /// Starts `program` with `args` and `envs`, inside network namespace
    /// `netns` when given (`ip netns exec` execs it: the pid is the program's).
    pub fn spawn(
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[OsString],
        envs: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child.id());
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 2 * STDERR_KEEP {
                        let cut = s.len() - STDERR_KEEP;
                        let cut = (cut..s.len())
                            .find(|i| s.is_char_boundary(*i))
                            .unwrap_or(s.len());
                        s.drain(..cut);
                    }
                }
            });
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            stderr,
        })
    }

    /// The process id (the program's own, also through `ip netns exec`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => return Ok(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.exit_status();
                    bail!(
                        "{} closed its stdout ({status}); stderr:\n{}",
                        self.name,
                        self.stderr_tail()
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} printed nothing within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{} has no stdin", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "{} stopped reading; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                )
            })
    }

    /// The end of what the child wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        let start = s.len().saturating_sub(4096);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_owned()
    }

    fn exit_status(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_owned(),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let pid = self.child.id();
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| *p != pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
