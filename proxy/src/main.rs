//! `phoenix-proxy`: parse settings, then run the proxy until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use phoenix_proxy::process::{self, EXIT_CONFIG};
use phoenix_proxy::settings::{Args, ENV_TOKEN};

fn main() -> ExitCode {
    let args = Args::parse();
    process::init_tracing(args.log_json, "info");
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
