//! `phoenix inject -f deploy.yaml`: the webhook's injection, offline, as
//! `linkerd inject` does. Every workload in the manifests gets the proxy
//! (unless its pod template says `phoenix.dev/inject: disabled`); other
//! objects pass through unchanged.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use phoenix_control_plane::inject::{self, Injector};
use phoenix_runtime::process::EXIT_CONFIG;
use serde_json::Value;

/// Flags of `phoenix inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifests to inject (YAML, several documents allowed); `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The proxy image.
    #[arg(long, default_value = concat!("ghcr.io/phoenix-mesh/phoenix-proxy:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// The control plane's QUIC address as pods reach it.
    #[arg(long, default_value = "phoenix-control-plane.phoenix-system.svc:4180")]
    control_plane: String,
    /// The control plane's SPIFFE ID.
    #[arg(
        long,
        default_value = "spiffe://cluster.local/ns/phoenix-system/sa/phoenix-control-plane"
    )]
    control_plane_identity: String,
}

/// Injects every document of every file and prints the result.
pub fn run(args: &InjectArgs) -> ExitCode {
    match inject_all(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("phoenix inject: {error:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn inject_all(args: &InjectArgs) -> anyhow::Result<String> {
    use anyhow::Context;
    let injector = Injector {
        image: args.image.clone(),
        control_plane: args.control_plane.clone(),
        control_plane_identity: args.control_plane_identity.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut out = String::new();
    for file in &args.files {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read stdin")?;
            s
        } else {
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?
        };
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))?;
        for (i, mut doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            inject_one(&injector, &mut doc)
                .with_context(|| format!("{}, document {}", file.display(), i + 1))?;
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&doc).context("cannot write YAML")?);
        }
    }
    Ok(out)
}

fn inject_one(injector: &Injector, doc: &mut Value) -> anyhow::Result<()> {
    let Some(base) = doc["kind"].as_str().and_then(inject::template_path) else {
        return Ok(());
    };
    let Some(template) = doc.pointer(base) else {
        anyhow::bail!("a {} without a pod template", doc["kind"]);
    };
    let asks = inject::template_asks(template);
    if asks.get(inject::INJECT).map(String::as_str) == Some("disabled") {
        return Ok(());
    }
    if template.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)) {
        // Its rules would capture the node's TCP: left as it is, as
        // `linkerd inject` does.
        eprintln!(
            "phoenix inject: skipping {} {}: hostNetwork pods are not meshed",
            doc["kind"].as_str().unwrap_or_default(),
            doc.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        return Ok(());
    }
    let patch = injector.patch(doc, base)?;
    json_patch::patch(doc, &patch)?;
    Ok(())
}
