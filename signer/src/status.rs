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
    /// The rollout order (as `approve --rings`), for the resume commands of a halted ring.
    #[arg(long, value_delimiter = ',', default_value = "canary,pilot,broad")]
    pub rings: Vec<lanpatch_protocol::RingName>,
    /// As `approve --min-success`, for the resume commands of a halted ring.
    #[arg(long, default_value_t = 1)]
    pub min_success: usize,
    /// Only this release (a bundle directory).
    pub bundle: Option<PathBuf>,
}

pub fn run(a: StatusArgs, ctx: &Ctx) -> Result<()> {
    let order = fleet::Order { rings: &a.rings, min_success: a.min_success };
    fleet::status(&a.node, a.bundle.as_deref(), &order, &ctx.limits, a.json)
}
