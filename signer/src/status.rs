//! `lanpatch-signer status`: the fleet's install results from a collector, per ring and state.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::ctx::Ctx;
use crate::fleet;

#[derive(Args)]
pub struct StatusArgs {
    /// The collector node's control socket.
    #[arg(long)]
    pub node: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Only this release (a bundle directory).
    pub bundle: Option<PathBuf>,
}

pub fn run(a: StatusArgs, ctx: &Ctx) -> Result<()> {
    fleet::status(&a.node, a.bundle.as_deref(), &ctx.limits, a.json)
}
