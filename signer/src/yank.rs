//! `lanpatch-signer yank`: withdraw a release, or co-sign an existing yank.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use lanpatch_protocol::{ReleaseManifest, Signed, Yank, YankAction};

use crate::bundle::{self, Bundle, check_payload};
use crate::ctx::Ctx;
use crate::keys;

#[derive(Args)]
pub struct YankArgs {
    /// The secret approve key to sign with.
    #[arg(long)]
    pub key: PathBuf,
    /// Also roll back nodes where the release is installed.
    #[arg(long)]
    pub rollback: bool,
    /// Why the release is withdrawn.
    #[arg(long)]
    pub reason: Option<String>,
    /// The trust root (default: root.lpr here), to say how many more signatures the yank needs.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The admin node's control socket, for the publish command printed as the next step.
    #[arg(long)]
    pub node: Option<PathBuf>,
    pub bundle: PathBuf,
}

pub fn run(a: YankArgs, ctx: &Ctx) -> Result<()> {
    let (limits, now, key_mode) = (&ctx.limits, ctx.now, ctx.key_mode);
    let sk = keys::load_secret(&a.key, key_mode)?;
    let b = Bundle::new(&a.bundle);
    let m = bundle::load::<ReleaseManifest>(&b.manifest_path(), limits)?;
    let path = b.yank_path();
    let mut y = if path.exists() {
        bundle::load::<Yank>(&path, limits)?
    } else {
        let Some(reason) = a.reason else {
            bail!("say why the release is withdrawn with --reason");
        };
        let value = Yank {
            manifest: m.payload_hash(),
            product: m.value().product.clone(),
            version: m.value().version,
            action: if a.rollback { YankAction::RollBack } else { YankAction::StopInstalls },
            reason,
            issued: now,
            // A yank must outlive the release it withdraws.
            expires: m.value().expires.max(now).plus_secs(365 * 86_400),
        };
        check_payload(&value, limits)?;
        Signed::new(value)
    };
    y.sign(&sk);
    bundle::save(&path, &y)?;
    println!(
        "yanked {} {} ({}); {} signature(s)",
        m.value().product,
        m.value().version,
        match y.value().action {
            YankAction::StopInstalls => "nodes stop installing it",
            YankAction::RollBack => "nodes stop installing it and roll back where it is installed",
        },
        y.envelope().signatures.len()
    );
    crate::cosign::print_next(&a.bundle, &crate::cosign::Item::Yank, a.root.as_deref(), a.node.as_deref(), limits);
    Ok(())
}
