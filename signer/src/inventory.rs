//! `lanpatch-signer inventory`: query the fleet's inventories from a collector.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::fleet;

#[derive(Args)]
pub struct InventoryArgs {
    /// The collector node's control socket.
    #[arg(long)]
    pub node: PathBuf,
    /// Only nodes with this package installed.
    #[arg(long)]
    pub package: Option<String>,
    /// With --package: only nodes where its version is lower than this (Debian ordering).
    #[arg(long, requires = "package")]
    pub below: Option<String>,
    /// Only nodes with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only nodes with this OS id (e.g. debian).
    #[arg(long)]
    pub os: Option<String>,
    /// Only nodes in this ring.
    #[arg(long)]
    pub ring: Option<String>,
    /// Print JSON for scripts.
    #[arg(long, conflicts_with = "export")]
    pub json: bool,
    /// Print the inventories whole (every package), a JSON array as `vulns --inventories` and
    /// `release create --inventories` read, for an offline workstation.
    #[arg(long)]
    pub export: bool,
}

pub fn run(a: InventoryArgs) -> Result<()> {
    fleet::inventory(
        &a.node,
        a.package.as_deref(),
        a.below.as_deref(),
        a.tag.as_deref(),
        a.os.as_deref(),
        a.ring.as_deref(),
        match (a.json, a.export) {
            (_, true) => fleet::InventoryOutput::Export,
            (true, false) => fleet::InventoryOutput::Json,
            (false, false) => fleet::InventoryOutput::Text,
        },
    )
}
