//! `lanpatch-signer keygen`: create an ed25519 key pair.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::keys;

#[derive(Args)]
pub struct KeygenArgs {
    /// Where to write the secret key.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: KeygenArgs) -> Result<()> {
    let public = keys::generate(&a.out)?;
    println!(
        "secret key: {} (mode 0600; a root, release, approve or enroll key stays on an offline workstation; the online timestamp key goes to the admin node (`timestamp_key` in node.toml))",
        a.out.display()
    );
    let pubf = keys::public_path(&a.out);
    println!("public key: {} = {}", pubf.display(), public);
    println!(
        "next: name it in the trust root by its public file, e.g. lanpatch-signer root init --approve-key {} ... (or root rotate to add it to an existing root)",
        pubf.display()
    );
    Ok(())
}
