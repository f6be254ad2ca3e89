//! `phoenix`: the Phoenix service mesh CLI.

#[cfg(feature = "kubernetes")]
mod check;
mod demo;
mod http;
#[cfg(feature = "kubernetes")]
mod inject;
#[cfg(feature = "kubernetes")]
mod install;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use phoenix_control_plane::mesh::Mesh;

use phoenix_runtime::process::EXIT_CONFIG;

/// Phoenix: a post-quantum service mesh.
#[derive(Debug, Parser)]
#[command(name = "phoenix", version)]
#[cfg_attr(
    feature = "kubernetes",
    command(about = "Phoenix service mesh CLI: up, demo, inject, install, check")
)]
#[cfg_attr(
    not(feature = "kubernetes"),
    command(
        about = "Phoenix service mesh CLI: up, demo (built without Kubernetes: the default features add inject, install, check)"
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format of this command: `text` (coloured only on a terminal,
    /// never with `NO_COLOR`) or `json`. The processes `phoenix up` starts
    /// inherit `PHOENIX_LOG_FORMAT`.
    #[arg(long, env = "PHOENIX_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<phoenix_runtime::process::LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a mesh from a mesh file: control plane and one proxy per workload.
    Up {
        /// The mesh file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Output: `text`, or `json` (one line on stdout once ready; status on stderr).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Grace period for open connections on shutdown.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain_grace: Duration,
    },
    /// Add the Phoenix proxy to the workloads in Kubernetes manifests (the
    /// webhook's injection, offline); prints the result for `kubectl apply`.
    #[cfg(feature = "kubernetes")]
    Inject(inject::InjectArgs),
    /// Print the manifests that install Phoenix (the CRDs and the control
    /// plane, as the Helm charts render them with default values), for
    /// `kubectl apply -f -`.
    #[cfg(feature = "kubernetes")]
    Install(install::InstallArgs),
    /// Check a cluster before (`--pre`) or after installing: API and
    /// version, CRDs, control plane, webhook, MeshConfig, every proxy.
    #[cfg(feature = "kubernetes")]
    Check(check::CheckArgs),
    /// Run a built-in mesh with sample services and live traffic.
    Demo {
        /// Stop after this long (counted from ready), e.g. `20s`.
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Output: `text`, or `json` (the summary as one JSON object).
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Identities: `ecdsa-p256`, or `ml-dsa-65` for a fully post-quantum
        /// mesh (ML-DSA-65 certificates, `authPolicy: pq-only`).
        #[arg(long, default_value = "ecdsa-p256")]
        identity_algorithm: phoenix_api::tls_policy::IdentityAlgorithm,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    phoenix_api::duration::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    phoenix_runtime::process::init_tracing(cli.log_format.unwrap_or_default(), "warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("phoenix: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Up {
                file,
                output,
                drain_grace,
            } => up_command(file, output, drain_grace).await,
            #[cfg(feature = "kubernetes")]
            Command::Inject(args) => inject::run(&args),
            #[cfg(feature = "kubernetes")]
            Command::Install(args) => install::run(&args),
            #[cfg(feature = "kubernetes")]
            Command::Check(args) => check::run(&args).await,
            Command::Demo {
                duration,
                output,
                identity_algorithm,
            } => match demo::run(duration, output == Output::Json, identity_algorithm).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("phoenix demo: {error:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn up_command(file: PathBuf, output: Output, drain_grace: Duration) -> ExitCode {
    let mesh = match Mesh::load(&file) {
        Ok(m) => m,
        Err(error) => {
            eprintln!("phoenix up: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let options = up::UpOptions {
        mesh_path: file,
        drain_grace,
        forward_logs: true,
    };
    let shutdown = phoenix_runtime::process::shutdown_signal();
    tokio::pin!(shutdown);
    let started = tokio::select! {
        r = up::start(&options, &mesh) => r,
        // Children are killed as their handles drop.
        _ = &mut shutdown => return ExitCode::SUCCESS,
    };
    let mut running = match started {
        Ok(r) => r,
        Err(error) => {
            eprintln!("phoenix up: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let json = output == Output::Json;
    if json {
        match serde_json::to_string(&running.report) {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("phoenix up: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        up::print_human(&running.report, &mesh);
    }
    let report = running.report.clone();
    let code = tokio::select! {
        _ = &mut shutdown => ExitCode::SUCCESS,
        (name, status) = running.any_exit() => {
            eprintln!("phoenix up: {name} exited ({status}); stopping the mesh");
            ExitCode::FAILURE
        }
        _ = up::status_loop(report, json) => ExitCode::SUCCESS,
    };
    eprintln!("phoenix up: draining and stopping ...");
    running.shutdown(drain_grace).await;
    code
}
