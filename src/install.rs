//! `phoenix install`: the manifests the Helm charts render with default
//! values (a test compares them with the real `helm template`), for
//! `kubectl apply`. No key is ever printed: the control plane creates its
//! CA root Secret and fills in the webhook's `caBundle` itself.

use std::process::ExitCode;

use phoenix_control_plane::k8s::install::{self, Values};

/// Flags of `phoenix install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Namespace of the control plane (create it first).
    #[arg(long, short = 'n', default_value = "phoenix-system")]
    namespace: String,
    /// Only the CRDs (`charts/phoenix-crds`).
    #[arg(long, conflicts_with = "skip_crds")]
    crds_only: bool,
    /// Everything but the CRDs (`charts/phoenix`).
    #[arg(long)]
    skip_crds: bool,
}

/// Prints the manifests.
pub fn run(args: &InstallArgs) -> ExitCode {
    let values = Values {
        namespace: args.namespace.clone(),
        ..Values::default()
    };
    let mut objects = Vec::new();
    if !args.skip_crds {
        objects.extend(install::crds());
    }
    if !args.crds_only {
        objects.extend(install::control_plane(&values));
    }
    match install::to_yaml(&objects) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("phoenix install: cannot write YAML: {error}");
            ExitCode::FAILURE
        }
    }
}
