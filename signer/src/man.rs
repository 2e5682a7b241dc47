//! `lanpatch-signer man`: man pages for the command and each subcommand.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// One page for the command and one per subcommand (`lanpatch-signer-release.1`, ...).
pub fn write_man_pages(cmd: clap::Command, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let name = cmd.get_name().to_string();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let full = format!("{name}-{}", sub.get_name());
        pages.push((full.clone(), sub.clone().name(full)));
    }
    for (page, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let path = out.join(format!("{page}.1"));
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[derive(Args)]
pub struct ManArgs {
    #[arg(long)]
    pub out: PathBuf,
}
