//! `phoenix-control-plane`: validate the mesh file, then serve until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use phoenix_control_plane::mesh::Mesh;
use phoenix_control_plane::{Settings, tokens};
use phoenix_runtime::process::{self, EXIT_CONFIG};

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
    /// Log format: `text` (coloured only on a terminal, never with
    /// `NO_COLOR`) or `json` (one object per line; the Helm chart sets it).
    #[arg(long, env = "PHOENIX_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<process::LogFormat>,
    /// Same as `--log-format json` (kept for earlier charts).
    #[arg(long, env = "PHOENIX_LOG_JSON", hide = true, global = true)]
    log_json: bool,
    /// Exit when the parent process dies (set by `phoenix up`).
    #[arg(long, env = "PHOENIX_DIE_WITH_PARENT", hide = true)]
    die_with_parent: bool,
}

#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Command {
    /// Rotate the mesh root (file mode): announce a new root now, let it sign
    /// after --overlap, retire the old one once its certificates expired.
    /// The running control plane picks it up within a second.
    RotateCa(RotateArgs),
    /// Print Phoenix's CustomResourceDefinitions as YAML (what `manifests/crds/` holds).
    #[cfg(feature = "kubernetes")]
    Crds,
    /// Serve the mesh of a Kubernetes cluster (in-cluster config, or KUBECONFIG).
    #[cfg(feature = "kubernetes")]
    Kubernetes(KubeArgs),
}

#[derive(Debug, clap::Args)]
struct RotateArgs {
    /// How long every proxy has to learn the new root before it signs (and
    /// at least how long the old one stays trusted after): longer than a
    /// proxy may be cut off from the control plane.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    overlap: std::time::Duration,
    /// The new root's algorithm: ecdsa-p256 or ml-dsa-65. Defaults to the
    /// mesh's identityAlgorithm (mesh file or MeshConfig): set that to
    /// ml-dsa-65 and rotate to move a running mesh to ML-DSA.
    #[arg(long)]
    identity_algorithm: Option<phoenix_api::tls_policy::IdentityAlgorithm>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    phoenix_api::duration::parse(s).map_err(|e| format!("{e} (e.g. 90s, 30m, 1h)"))
}

#[cfg(feature = "kubernetes")]
#[derive(Debug, clap::Subcommand)]
enum KubeCommand {
    /// Rotate the mesh root in the CA Secret: announce a new root now, let it
    /// sign after --overlap, retire the old one once its certificates expired.
    /// Every replica picks it up within 30 s.
    RotateCa(RotateArgs),
}

#[cfg(feature = "kubernetes")]
#[derive(Debug, clap::Args)]
struct KubeArgs {
    #[command(subcommand)]
    command: Option<KubeCommand>,
    /// Our namespace (CA Secret); the chart sets it from the downward API.
    #[arg(long, env = "PHOENIX_NAMESPACE", default_value = "phoenix-system")]
    namespace: String,
    /// Our ServiceAccount (our identity).
    #[arg(
        long,
        env = "PHOENIX_SERVICE_ACCOUNT",
        default_value = "phoenix-control-plane"
    )]
    service_account: String,
    /// SPIFFE trust domain; fixed at install, MeshConfig must agree.
    #[arg(long, env = "PHOENIX_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Name of the Secret holding the mesh root CA (created when absent).
    #[arg(long, env = "PHOENIX_CA_SECRET", default_value = "phoenix-ca")]
    ca_secret: String,
    /// QUIC listen address for proxies.
    #[arg(long, env = "PHOENIX_CONTROL_LISTEN", default_value = "0.0.0.0:4180")]
    listen: SocketAddr,
    /// Admin listen address (/live, /ready, /metrics, /config).
    #[arg(long, env = "PHOENIX_CONTROL_ADMIN", default_value = "0.0.0.0:9990")]
    admin: SocketAddr,
    /// Where the root certificate is written for local readers.
    #[arg(long, env = "PHOENIX_STATE_DIR", default_value = "/var/run/phoenix")]
    state_dir: PathBuf,
    /// Our name in the leader Lease (the chart passes the pod name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// HTTPS address of the sidecar-injection webhook.
    #[arg(long, env = "PHOENIX_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// Serve no injection webhook.
    #[arg(long)]
    no_webhook: bool,
    /// Our Service (the webhook certificate's DNS names, and the address
    /// injected proxies reach us at: <service>.<namespace>.svc:<listen port>).
    #[arg(long, env = "PHOENIX_SERVICE", default_value = "phoenix-control-plane")]
    service: String,
    /// The MutatingWebhookConfiguration whose caBundle we keep current.
    #[arg(
        long,
        env = "PHOENIX_WEBHOOK_CONFIG",
        default_value = "phoenix-proxy-injector"
    )]
    webhook_config: String,
    /// The proxy image injected into pods.
    #[arg(long, env = "PHOENIX_PROXY_IMAGE", default_value = concat!("ghcr.io/phoenix-mesh/phoenix-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rotate = match args.command {
        #[cfg(feature = "kubernetes")]
        Some(Command::Crds) => return print_crds(),
        #[cfg(feature = "kubernetes")]
        Some(Command::Kubernetes(k)) => {
            return run_kubernetes(
                k,
                process::LogFormat::resolve(args.log_format, args.log_json),
                args.die_with_parent,
            );
        }
        Some(Command::RotateCa(r)) => Some(r),
        None => None,
    };
    let Some(mesh_path) = args.mesh else {
        eprintln!("phoenix-control-plane: no mesh file: pass --mesh FILE (or set PHOENIX_MESH)");
        return ExitCode::from(EXIT_CONFIG);
    };
    process::init_tracing(
        process::LogFormat::resolve(args.log_format, args.log_json),
        "info",
    );
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
    if let Some(rotate) = rotate {
        return rotate_files(&state_dir, &mesh, &rotate);
    }
    let settings = Settings {
        tokens_path: args
            .tokens
            .unwrap_or_else(|| state_dir.join(tokens::TOKENS_FILE)),
        listen: args.listen.unwrap_or(mesh.control_listen),
        admin: args.admin.unwrap_or(mesh.control_admin),
        mesh_path,
        state_dir,
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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

/// Announces a new root in `state_dir` (file mode).
fn rotate_files(state_dir: &std::path::Path, mesh: &Mesh, rotate: &RotateArgs) -> ExitCode {
    let overlap = rotate.overlap;
    let algorithm = rotate.identity_algorithm.unwrap_or(mesh.identity_algorithm);
    use phoenix_control_plane::ca::Ca;
    use phoenix_control_plane::roots::Schedule;
    // The control plane re-reads the schedule every second: it must see
    // the announcement well before the activation.
    if overlap < std::time::Duration::from_secs(2) {
        eprintln!(
            "phoenix-control-plane: rotate-ca: --overlap must be at least 2s (file mode), and longer than any proxy may be cut off from the control plane"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = (|| -> anyhow::Result<Schedule> {
        let (ca, _) = Ca::load_or_create(state_dir, &mesh.trust_domain, algorithm)?;
        let schedule = Schedule::load(state_dir, std::sync::Arc::new(ca))?;
        let next = schedule.rotate(
            std::time::SystemTime::now(),
            overlap,
            mesh.certificate_lifetime,
            Ca::generate_with(&mesh.trust_domain, algorithm)?,
        )?;
        next.save(state_dir)?;
        Ok(next)
    })();
    rotation_outcome(result)
}

/// Prints what a rotation scheduled (exit 0), or why it was refused (exit 64).
fn rotation_outcome(result: anyhow::Result<phoenix_control_plane::roots::Schedule>) -> ExitCode {
    match result {
        Ok(next) => {
            print_rotation(&next);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("phoenix-control-plane: rotate-ca: {}", chain(&error));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// What a rotation scheduled, for the operator.
fn print_rotation(schedule: &phoenix_control_plane::roots::Schedule) {
    if let Some(new) = schedule.roots().last() {
        let at = new
            .activates_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        println!(
            "announced root {:?} ({}): trusted now, signs from {} (Unix seconds); the previous root is retired once the certificates it signed have expired",
            new.ca.name(),
            new.ca.algorithm(),
            at
        );
    }
}

fn chain(error: &anyhow::Error) -> String {
    error
        .chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
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

#[cfg(feature = "kubernetes")]
fn run_kubernetes(
    args: KubeArgs,
    log_format: process::LogFormat,
    die_with_parent: bool,
) -> ExitCode {
    use phoenix_control_plane::k8s::run::{self, KubeSettings};
    process::init_tracing(log_format, "info");
    if die_with_parent && !process::die_with_parent() {
        return ExitCode::FAILURE;
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Some(KubeCommand::RotateCa(rotate)) = &args.command {
        return runtime.block_on(rotate_secret(&args, rotate));
    }
    let settings = KubeSettings {
        namespace: args.namespace,
        service_account: args.service_account,
        trust_domain: args.trust_domain,
        ca_secret: args.ca_secret,
        listen: args.listen,
        admin: args.admin,
        state_dir: args.state_dir,
        webhook_listen: (!args.no_webhook).then_some(args.webhook_listen),
        service: args.service,
        webhook_config: args.webhook_config,
        proxy_image: args.proxy_image,
        holder: args.pod_name.unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        }),
    };
    let result = runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(error) => {
                eprintln!(
                    "phoenix-control-plane: no Kubernetes configuration: {}; run in a pod or set KUBECONFIG",
                    process::error_chain(&error)
                );
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        };
        let on_bound = |bound: &phoenix_control_plane::Bound| {
            if let Ok(line) = serde_json::to_string(bound) {
                println!("{line}");
            }
        };
        run::run(settings, client, on_bound, process::shutdown_signal())
            .await
            .map_err(|error| {
                eprintln!("phoenix-control-plane: {}", process::error_chain(&error));
                ExitCode::FAILURE
            })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Announces a new root in the CA Secret (Kubernetes mode), with the
/// certificate lifetime of the MeshConfig `default`.
#[cfg(feature = "kubernetes")]
async fn rotate_secret(args: &KubeArgs, rotate: &RotateArgs) -> ExitCode {
    let overlap = rotate.overlap;
    use phoenix_control_plane::crd::MeshConfig;
    use phoenix_control_plane::k8s::ca_secret;
    use phoenix_control_plane::k8s::policy::{MESH_CONFIG_NAME, MeshRecord};
    // Every replica re-reads the Secret every 30 s: all must see the
    // announcement before the activation.
    if overlap < std::time::Duration::from_secs(120) {
        eprintln!(
            "phoenix-control-plane: rotate-ca: --overlap must be at least 2m in a cluster (replicas re-read the Secret every 30s), and longer than any proxy may be cut off"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = async {
        let client = kube::Client::try_default().await?;
        let configs: kube::Api<MeshConfig> = kube::Api::all(client.clone());
        let mesh = match configs.get_opt(MESH_CONFIG_NAME).await? {
            Some(mc) => MeshRecord::validate(MESH_CONFIG_NAME, &mc.spec, &args.trust_domain)?,
            None => MeshRecord::defaults(&args.trust_domain),
        };
        let next = ca_secret::rotate(
            client,
            &args.namespace,
            &args.ca_secret,
            &args.trust_domain,
            rotate.identity_algorithm.unwrap_or(mesh.identity_algorithm),
            overlap,
            mesh.certificate_lifetime,
        )
        .await?;
        anyhow::Ok(next)
    }
    .await;
    rotation_outcome(result)
}

/// The multi-threaded runtime both modes run on.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("phoenix-control-plane: cannot start the runtime: {error}");
            ExitCode::FAILURE
        })
}
