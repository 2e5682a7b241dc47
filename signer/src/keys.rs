//! Key files. A secret key file holds one line, `lanpatch-secret-key-v1 <64 hex digits>`, and is
//! created with mode 0600 and never overwritten; the public key sits beside it in `<file>.pub`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use lanpatch_protocol::PublicKey;

use lanpatch_protocol::keyfile::{self, SECRET_PREFIX};

pub fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Creates a new key pair. Refuses to touch existing files.
pub fn generate(out: &Path) -> Result<PublicKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public = PublicKey(key.verifying_key().to_bytes());
    let pub_path = public_path(out);
    if pub_path.exists() {
        bail!("{} already exists; refusing to overwrite a key", pub_path.display());
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).with_context(|| match out.exists() {
        true => format!("{} already exists; refusing to overwrite a key", out.display()),
        false => format!("cannot create {}", out.display()),
    })?;
    f.write_all(keyfile::format_secret(&seed).as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    f.sync_all()?;
    let mut p = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .with_context(|| format!("cannot create {}", pub_path.display()))?;
    writeln!(p, "{}", public.to_hex())?;
    Ok(public)
}

/// Whether a secret key file that others may read is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// Refuse a secret key file whose mode gives its group or others any access.
    Strict,
    /// Use it anyway, with a warning (`--allow-insecure-key-mode`).
    AllowInsecure,
}

/// Reads a secret key file. Its mode must keep it private (no group or other bits) unless
/// `mode` says otherwise: a key others could read is a key others may have copied.
pub fn load_secret(path: &Path, mode: KeyMode) -> Result<SigningKey> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read key {}", path.display()))?;
    // A public key file given where the secret goes: say so, not that its mode is too open.
    if meta.len() < 4096
        && let Ok(text) = std::fs::read_to_string(path)
        && !text.trim_start().starts_with(SECRET_PREFIX)
        && text.trim().parse::<PublicKey>().is_ok()
    {
        let secret = path.to_string_lossy().strip_suffix(".pub").map(str::to_string);
        bail!(
            "{} is a public key; --key takes the secret key file{}",
            path.display(),
            secret.map(|s| format!(" ({s})")).unwrap_or_default()
        );
    }
    let bits = meta.permissions().mode() & 0o777;
    if bits & 0o077 != 0 {
        match mode {
            KeyMode::Strict => bail!(
                "secret key {} has mode {bits:03o}: others can read it. Fix it with `chmod 600 {}` (and consider the key \
                 exposed), or pass --allow-insecure-key-mode",
                path.display(),
                path.display()
            ),
            KeyMode::AllowInsecure => {
                eprintln!(
                    "warning: secret key {} has mode {bits:03o} (readable by others); using it as asked",
                    path.display()
                )
            }
        }
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    let seed = keyfile::parse_secret(&text).with_context(|| format!("{}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key given as 64 hex digits, or as the path of a `.pub` (or secret key) file.
pub fn parse_public(arg: &str) -> Result<PublicKey> {
    if let Ok(k) = arg.parse::<PublicKey>() {
        return Ok(k);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{arg:?} is neither 64 hex digits nor a readable public key file"))?;
    if text.trim_start().starts_with(SECRET_PREFIX) {
        let sk = load_secret(path, KeyMode::AllowInsecure)?;
        return Ok(PublicKey(sk.verifying_key().to_bytes()));
    }
    text.trim().parse::<PublicKey>().with_context(|| format!("{}: expected 64 hex digits", path.display()))
}
