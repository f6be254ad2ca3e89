//! `phoenix-control-plane`: validate the mesh file, then serve until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use phoenix_control_plane::mesh::Mesh;
use phoenix_control_plane::{Settings, tokens};
use phoenix_proxy::process::{self, EXIT_CONFIG};

/// Phoenix control plane (file mode).
#[derive(Debug, Parser)]
#[command(name = "phoenix-control-plane", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The mesh file (file mode).
    #[arg(long, short = 'f', env = "PHOENIX_MESH")]
    mesh: Option<PathBuf>,
    /// Bootstrap tokens file (default: <stateDir>/tokens.json).
    #[arg(long, env = "PHOENIX_TOKENS")]
    tokens: Option<PathBuf>,
    /// QUIC listen address (overrides controlPlane.listen).
    #[arg(long, env = "PHOENIX_CONTROL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listen address (overrides controlPlane.admin).
    #[arg(long, env = "PHOENIX_CONTROL_ADMIN")]
    admin: Option<SocketAddr>,
    /// State directory (overrides stateDir).
    #[arg(long, env = "PHOENIX_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "PHOENIX_LOG_JSON")]
    log_json: bool,
    /// Exit when the parent process dies (set by `phoenix up`).
    #[arg(long, env = "PHOENIX_DIE_WITH_PARENT", hide = true)]
    die_with_parent: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print Phoenix's CustomResourceDefinitions as YAML (what `manifests/crds/` holds).
    #[cfg(feature = "kubernetes")]
    Crds,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        #[cfg(feature = "kubernetes")]
        Some(Command::Crds) => return print_crds(),
        None => {}
    }
    let Some(mesh_path) = args.mesh else {
        eprintln!("phoenix-control-plane: no mesh file: pass --mesh FILE (or set PHOENIX_MESH)");
        return ExitCode::from(EXIT_CONFIG);
    };
    process::init_tracing(args.log_json, "info");
    if args.die_with_parent && !process::die_with_parent() {
        return ExitCode::FAILURE;
    }
    let mesh = match Mesh::load(&mesh_path) {
        Ok(m) => m,
        Err(error) => {
            eprintln!("phoenix-control-plane: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let state_dir = args.state_dir.unwrap_or_else(|| mesh.state_dir.clone());
    let settings = Settings {
        tokens_path: args
            .tokens
            .unwrap_or_else(|| state_dir.join(tokens::TOKENS_FILE)),
        listen: args.listen.unwrap_or(mesh.control_listen),
        admin: args.admin.unwrap_or(mesh.control_admin),
        mesh_path,
        state_dir,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("phoenix-control-plane: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let on_bound = |bound: &phoenix_control_plane::Bound| {
            if let Ok(line) = serde_json::to_string(bound) {
                println!("{line}");
            }
        };
        phoenix_control_plane::run(settings, mesh, on_bound, process::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("phoenix-control-plane: {}", process::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "kubernetes")]
fn print_crds() -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for crd in phoenix_control_plane::crd::all() {
        let yaml = match phoenix_control_plane::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(error) => {
                eprintln!("phoenix-control-plane: cannot render a CRD: {error}");
                return ExitCode::FAILURE;
            }
        };
        // A closed pipe (`| head`) ends the output quietly.
        if write!(out, "---\n{yaml}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
