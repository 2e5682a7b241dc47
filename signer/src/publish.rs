//! `lanpatch-signer publish`: hand a signed bundle (or signed metadata) to a node on this machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::ctx::Ctx;
use crate::fleet;

pub fn publish(socket: &Path, bundle: &Path, metadata_only: bool) -> Result<()> {
    use lanpatch_protocol::control::{ControlRequest, ControlResponse, PublishMode};
    let dir = std::fs::canonicalize(bundle).with_context(|| format!("cannot find bundle {}", bundle.display()))?;
    let req = ControlRequest::Publish {
        bundle: dir.to_string_lossy().into_owned(),
        mode: if metadata_only { PublishMode::MetadataOnly } else { PublishMode::Seed },
    };
    match fleet::request(socket, &req)? {
        ControlResponse::Published { manifest, product, version, approvals, yanked } => {
            println!("published {product} {version} (manifest {manifest})");
            if !approvals.is_empty() {
                println!("approved for: {}", approvals.join(", "));
            }
            if yanked {
                println!("yank published");
            }
            println!(
                "next: watch it spread and install: lanpatch-signer status --node {} {} (or the console); lanpatch-signer pending --node {} shows what waits for signatures",
                socket.display(),
                bundle.display(),
                socket.display()
            );
            Ok(())
        }
        ControlResponse::Error { message, .. } => bail!("the node refused the bundle: {message}"),
        other => bail!("unexpected response {other:?}"),
    }
}

#[derive(Args)]
pub struct PublishArgs {
    /// The node's control socket (`<data_dir>/control.sock`).
    #[arg(long)]
    pub node: PathBuf,
    /// Only announce the release; nodes fetch its files from the manifest's origins.
    #[arg(long, conflicts_with = "metadata")]
    pub metadata_only: bool,
    /// Publish this signed metadata file (a revocation list from `revoke`) instead of a bundle.
    #[arg(long, conflicts_with = "bundle")]
    pub metadata: Option<PathBuf>,
    #[arg(required_unless_present = "metadata")]
    pub bundle: Option<PathBuf>,
}

pub fn run(a: PublishArgs, ctx: &Ctx) -> Result<()> {
    match (a.metadata, a.bundle) {
        (Some(file), _) => crate::revoke::publish_metadata(&a.node, &file, &ctx.limits),
        (None, Some(bundle)) => publish(&a.node, &bundle, a.metadata_only),
        (None, None) => bail!("give a bundle directory or --metadata FILE"),
    }
}
