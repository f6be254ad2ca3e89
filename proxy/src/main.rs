//! `phoenix-proxy`: parse settings, then run the proxy until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use phoenix_proxy::settings::{Args, ENV_TOKEN};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    if args.die_with_parent {
        die_with_parent();
    }
    phoenix_proxy::raise_fd_limit();
    let settings = match args.into_settings(std::env::var(ENV_TOKEN).ok()) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("phoenix-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("phoenix-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        phoenix_proxy::run(
            settings,
            |bound| {
                // One JSON line on stdout: how `phoenix up` and tests learn our ports.
                if let Ok(line) = serde_json::to_string(bound) {
                    println!("{line}");
                }
            },
            shutdown_signal(),
        )
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("phoenix-proxy: {error}: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(": ")
}

/// Resolves on SIGTERM or SIGINT. Handlers are installed at the call, so a
/// signal during startup is not fatal: it starts a clean shutdown instead.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHOENIX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Asks the kernel to send SIGTERM when our parent dies, so `phoenix up`
/// leaves no proxy behind even when it is killed with SIGKILL.
fn die_with_parent() {
    let parent = rustix::process::getppid();
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The parent may have died before the request took effect.
    if rustix::process::getppid() != parent {
        std::process::exit(1);
    }
}
