//! Process plumbing shared by the Phoenix binaries: logging, signals,
//! parent-death, file-descriptor limits.

/// Exit code for bad configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// How a binary writes its logs (`--log-format`, `PHOENIX_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors (what the injector and
    /// the Helm chart set).
    Json,
}

impl LogFormat {
    /// The format asked for: `--log-format`, or JSON when the older
    /// `--log-json` / `PHOENIX_LOG_JSON` says so (charts and pods of earlier
    /// releases set it).
    pub fn resolve(format: Option<LogFormat>, legacy_json: bool) -> LogFormat {
        match (format, legacy_json) {
            (Some(format), _) => format,
            (None, true) => LogFormat::Json,
            (None, false) => LogFormat::Text,
        }
    }
}

/// Logs to stderr, filtered by `PHOENIX_LOG` (default `default_level`).
///
/// Text is coloured only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>): tracing-subscriber colours by default
/// whatever the output is, which filled `kubectl logs` and files written
/// through `phoenix up` with escape codes.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHOENIX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(use_colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .init(),
    }
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything non-empty.
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn the_format_flag_wins_over_the_legacy_json_switch() {
        assert_eq!(LogFormat::resolve(None, false), LogFormat::Text);
        assert_eq!(LogFormat::resolve(None, true), LogFormat::Json);
        assert_eq!(
            LogFormat::resolve(Some(LogFormat::Text), true),
            LogFormat::Text
        );
    }
}
