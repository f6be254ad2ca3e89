//! `phoenix-proxy`: parse settings, then run the proxy until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use phoenix_proxy::settings::{Args, ENV_TOKEN};
use phoenix_runtime::process::{self, EXIT_CONFIG};

fn main() -> ExitCode {
    // `phoenix-proxy init` (the pod's init container) shares the binary but
    // none of the proxy's flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == "init") {
        return init();
    }
    let args = Args::parse();
    let args_threads = args.threads.max(1);
    process::init_tracing(
        process::LogFormat::resolve(args.log_format, args.log_json),
        "info",
    );
    if args.die_with_parent && !process::die_with_parent() {
        return ExitCode::FAILURE;
    }
    process::raise_fd_limit();
    let settings = match args.into_settings(std::env::var(ENV_TOKEN).ok()) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("phoenix-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut builder = if args_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args_threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("phoenix-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let on_bound = |bound: &phoenix_proxy::Bound| {
            // One JSON line on stdout: how `phoenix up` and tests learn our ports.
            if let Ok(line) = serde_json::to_string(bound) {
                println!("{line}");
            }
        };
        phoenix_proxy::run(settings, on_bound, process::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("phoenix-proxy: {}", process::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn init() -> ExitCode {
    use phoenix_proxy::init::{self, InitArgs, InitError};
    let args = InitArgs::parse_from(std::env::args_os().skip(1));
    match init::run(&args, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ InitError::NoPermission { .. }) => {
            eprintln!("phoenix-proxy init: {error}");
            ExitCode::from(init::EXIT_NO_PERMISSION)
        }
        Err(error) => {
            eprintln!("phoenix-proxy init: {}", process::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}
