//! `lanpatch-signer release sign`: add one release key's signature to a bundle's manifest.

use std::path::{Path, PathBuf};

use anyhow::Result;
use lanpatch_protocol::{PublicKey, ReleaseManifest, Role, Root};

use crate::bundle::{self, Bundle};
use crate::ctx::Ctx;
use crate::{exit, keys};

pub fn run(key: &Path, bundle: &Path, root: Option<PathBuf>, ctx: &Ctx) -> Result<()> {
    let sk = keys::load_secret(key, ctx.key_mode)?;
    let b = Bundle::new(bundle);
    let mut m = bundle::load::<ReleaseManifest>(&b.manifest_path(), &ctx.limits)?;
    // A key outside the release role would add a signature no node counts.
    let root_path = root.clone().unwrap_or_else(|| PathBuf::from("root.lpr"));
    match bundle::load::<Root>(&root_path, &ctx.limits) {
        Ok(r) => {
            let me = PublicKey(sk.verifying_key().to_bytes());
            let role = r.value().roles.get(&Role::Release);
            if !role.is_some_and(|k| k.keys.contains(&me)) {
                return Err(exit::exit(
                    exit::Code::Refused,
                    format!(
                        "{} ({}) is not a key of the release role in {} (release keys: {}); sign with one of those",
                        key.display(),
                        me.short(),
                        root_path.display(),
                        role.map(|k| k.keys.iter().map(|k| k.short()).collect::<Vec<_>>().join(", "))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Err(_) => eprintln!(
            "warning: no root at {} to check the key against (give --root): a key outside the release role signs in vain",
            root_path.display()
        ),
    }
    m.sign(&sk);
    bundle::save(&b.manifest_path(), &m)?;
    println!(
        "signed {} {} with {}; the manifest now has {} signature(s)",
        m.value().product,
        m.value().version,
        PublicKey(sk.verifying_key().to_bytes()).short(),
        m.envelope().signatures.len()
    );
    crate::cosign::print_next(bundle, &crate::cosign::Item::Manifest, root.as_deref(), None, &ctx.limits);
    Ok(())
}
