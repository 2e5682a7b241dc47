//! `release create --deb`: reads each Debian package's control fields with `dpkg-deb` and
//! digests it, so the manifest names exactly what the node will hand to dpkg.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use lanpatch_protocol::{DebPackage, Hash32, RelPath, debver};
use sha2::{Digest, Sha256};

/// A `.deb` to add to a release: where it is, and what the manifest says about it.
pub struct Deb {
    pub path: PathBuf,
    pub package: DebPackage,
}

/// Every `.deb` named by `--deb`: files, and the `*.deb` files directly inside directories.
pub fn collect(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let meta = fs::metadata(a).with_context(|| format!("--deb {}: cannot read it", a.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = fs::read_dir(a)
                .with_context(|| format!("cannot list {}", a.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "deb") && p.is_file())
                .collect();
            if found.is_empty() {
                bail!("--deb {}: the directory holds no .deb file", a.display());
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn fields(path: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(path)
        .args(["Package", "Version", "Architecture", "Source"])
        .output()
        .context("cannot run dpkg-deb (apt-get install dpkg) to read a package's control fields")?;
    if !out.status.success() {
        bail!("{} is not a Debian package: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text =
        String::from_utf8(out.stdout).with_context(|| format!("{}: control fields not UTF-8", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect())
}

fn sha256(path: &Path) -> Result<Hash32> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Hash32(h.finalize().into()))
}

/// Reads one `.deb`. Its file in the release is named as apt names it:
/// `name_version_arch.deb`, with an epoch's `:` as `%3a`.
pub fn read(path: &Path) -> Result<Deb> {
    let f = fields(path)?;
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let name = get("Package").with_context(|| format!("{} has no Package field", path.display()))?;
    let version = get("Version").with_context(|| format!("{} has no Version field", path.display()))?;
    let architecture = get("Architecture").with_context(|| format!("{} has no Architecture field", path.display()))?;
    debver::parse(&version).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // `Source: name (version)` when the source version differs; absent when both equal the
    // binary package's.
    let (source, source_version) = match get("Source") {
        None => (name.clone(), version.clone()),
        Some(s) => match s.split_once('(') {
            Some((n, v)) => (n.trim().to_string(), v.trim_end_matches(')').trim().to_string()),
            None => (s.trim().to_string(), version.clone()),
        },
    };
    let file_name = format!("{name}_{}_{architecture}.deb", version.replace(':', "%3a"));
    let file: RelPath =
        file_name.parse().with_context(|| format!("{}: bad file name {file_name:?}", path.display()))?;
    let package = DebPackage { file, name, version, architecture, source, source_version, sha256: sha256(path)? };
    Ok(Deb { path: path.to_path_buf(), package })
}
