//! `lanpatch-signer release`: package, sign and show releases.

mod create;
mod show;
mod sign;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::ctx::Ctx;

pub use create::CreateArgs;

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Package files into a release bundle with an unsigned manifest.
    Create(Box<CreateArgs>),
    /// Add one key's signature to a bundle's manifest.
    Sign {
        /// The secret key to sign with.
        #[arg(long)]
        key: PathBuf,
        /// The bundle directory.
        bundle: PathBuf,
        /// The trust root whose release role the key must be in (default: root.lpr here).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Print a bundle's manifest, severity data, approvals and signatures.
    Show {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        bundle: PathBuf,
    },
}

pub fn run(cmd: ReleaseCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        ReleaseCmd::Create(args) => create::create_release(*args, &ctx.limits, ctx.now),
        ReleaseCmd::Sign { key, bundle, root } => sign::run(&key, &bundle, root, ctx),
        ReleaseCmd::Show { bundle, json } => {
            show::show_release(&crate::bundle::Bundle::new(&bundle), &ctx.limits, json)
        }
    }
}
