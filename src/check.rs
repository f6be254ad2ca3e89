//! `phoenix check`: pre- and post-install checks against the current
//! cluster (KUBECONFIG), printed as Linkerd prints its own; exit 1 when any
//! check fails.

use std::process::ExitCode;

use phoenix_control_plane::k8s::check;

/// Flags of `phoenix check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only what must hold before installing.
    #[arg(long)]
    pre: bool,
    /// Namespace of the control plane.
    #[arg(long, short = 'n', default_value = "phoenix-system")]
    namespace: String,
    /// Print the outcomes as one JSON array.
    #[arg(long)]
    json: bool,
}

/// Runs the checks and prints them.
pub async fn run(args: &CheckArgs) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(error) => {
            eprintln!("phoenix check: no Kubernetes configuration: {error}; set KUBECONFIG");
            return ExitCode::FAILURE;
        }
    };
    let report = check::run(client, &args.namespace, args.pre).await;
    if args.json {
        match serde_json::to_string(&report.outcomes) {
            Ok(line) => println!("{line}"),
            Err(error) => eprintln!("phoenix check: {error}"),
        }
    } else {
        print!("{}", report.render());
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
