//! Process plumbing shared by the Phoenix binaries: logging, signals,
//! parent-death, file-descriptor limits.

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Logs to stderr, filtered by `PHOENIX_LOG` (default `default_level`), as
/// JSON lines when `json`.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHOENIX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called (inside a runtime), not when it is first polled, so a signal during
/// startup starts a clean shutdown instead of killing the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Asks the kernel for SIGTERM when our parent dies, so `phoenix up` leaves
/// no process behind even when it is killed with SIGKILL. Returns false when
/// the parent is already gone.
pub fn die_with_parent() -> bool {
    let parent = rustix::process::getppid();
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The parent may have died before the request took effect.
    rustix::process::getppid() == parent
}

/// Every tunnelled connection holds a socket on each side: raises the soft
/// file-descriptor limit to the hard one, as Envoy and Linkerd do.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// `error: cause: cause ...` on one line, for exit messages.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut msg = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        source = e.source();
    }
    msg
}
