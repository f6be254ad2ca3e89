//! `phoenix-control-plane`: validate the mesh file, then serve until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use phoenix_control_plane::mesh::Mesh;
use phoenix_control_plane::{Settings, tokens};

/// Exit code for bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Phoenix control plane (file mode).
#[derive(Debug, Parser)]
#[command(name = "phoenix-control-plane", version)]
struct Args {
    /// The mesh file.
    #[arg(long, short = 'f', env = "PHOENIX_MESH")]
    mesh: PathBuf,
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_json);
    if args.die_with_parent {
        let parent = rustix::process::getppid();
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
        if rustix::process::getppid() != parent {
            return ExitCode::FAILURE;
        }
    }
    let mesh = match Mesh::load(&args.mesh) {
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
        mesh_path: args.mesh,
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
        phoenix_control_plane::run(
            settings,
            mesh,
            |bound| {
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
            let mut msg = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(e) = source {
                msg.push_str(&format!(": {e}"));
                source = e.source();
            }
            eprintln!("phoenix-control-plane: {msg}");
            ExitCode::FAILURE
        }
    }
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
