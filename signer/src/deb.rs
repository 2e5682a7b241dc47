//! `release create --deb`: reads each Debian package's control fields with `dpkg-deb` and
//! digests it, so the manifest names exactly what the node will hand to dpkg.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use lanpatch_protocol::{ArchiveIndex, DebPackage, Hash32, RelPath, debver};
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
    let package =
        DebPackage { file, name, version, architecture, source, source_version, sha256: sha256(path)?, archive: None };
    Ok(Deb { path: path.to_path_buf(), package })
}

/// Debian's archive keyring (package debian-archive-keyring).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A `Packages` index file whose release file verified, and what to record about it.
pub struct Index {
    pub record: ArchiveIndex,
    pub path: PathBuf,
}

/// The text a release file (`InRelease`) signs, if it verifies with Debian's archive keyring.
fn verified_release(path: &Path) -> Result<String> {
    let out = Command::new("gpgv")
        .args(["--keyring", ARCHIVE_KEYRING, "--output", "-"])
        .arg(path)
        .output()
        .context("cannot run gpgv (apt-get install gpgv debian-archive-keyring)")?;
    if !out.status.success() {
        bail!(
            "{} does not verify with Debian's archive keyring ({ARCHIVE_KEYRING}): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{}: signed text is not UTF-8", path.display()))
}

/// Seconds since the epoch of a release file's date field, in the form the archive writes
/// (`Sat, 11 Jul 2026 10:16:37 UTC`; the weekday optional, zone UTC, GMT or +0000).
fn release_date(text: &str) -> Option<u64> {
    let mut f: Vec<&str> = text.split_whitespace().collect();
    if f.first().is_some_and(|w| w.ends_with(',')) {
        f.remove(0);
    }
    let [day, month, year, clock, zone] = f[..] else { return None };
    if !matches!(zone, "UTC" | "GMT" | "UT" | "Z" | "+0000") {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = MONTHS.iter().position(|x| *x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = clock.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, sec] = hms[..] else { return None };
    if !(1..=31).contains(&d) || !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..=60).contains(&sec) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()
}

/// Every uncompressed `Packages` index in an apt lists directory (`/var/lib/apt/lists`) whose
/// `InRelease` verifies with Debian's archive keyring and whose SHA-256 and size are the ones
/// that release file lists. A release file that does not verify, or an index that does not
/// match it, is an error naming the file.
pub fn archive_indexes(dir: &Path) -> Result<Vec<Index>> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("--apt-lists {}: cannot list it", dir.display()))?;
    let mut releases: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_InRelease")))
        .collect();
    releases.sort();
    for rel in releases {
        let text = verified_release(&rel)?;
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix(':')).map(str::trim);
        let suite = format!("{} {}", field("Origin").unwrap_or("?"), field("Suite").unwrap_or("?"));
        let date = field("Date").unwrap_or("?").to_string();
        if let Some(until) = field("Valid-Until") {
            let Some(t) = release_date(until) else {
                bail!("{}: cannot read its Valid-Until {until:?}", rel.display());
            };
            if crate::time::now().0 > t {
                bail!(
                    "{}: expired at {until} (Valid-Until): an old release file, as a replay would present; run apt-get update",
                    rel.display()
                );
            }
        }
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let prefix = name.trim_end_matches("InRelease");
        // The SHA256 section: " <hash> <size> <path>" lines.
        let section = text.lines().skip_while(|l| !l.starts_with("SHA256:")).skip(1).take_while(|l| l.starts_with(' '));
        for line in section {
            let mut f = line.split_whitespace();
            let (Some(hash), Some(size), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
            if !path.ends_with("/Packages") {
                continue;
            }
            let file = dir.join(format!("{prefix}{}", path.replace('/', "_")));
            if !file.is_file() {
                continue;
            }
            let len = fs::metadata(&file)?.len();
            if size.parse::<u64>().ok() != Some(len) || !sha256(&file)?.to_hex().eq_ignore_ascii_case(hash) {
                bail!("{} does not match the SHA-256 and size that {} lists for {path}", file.display(), rel.display());
            }
            let record = ArchiveIndex { suite: suite.clone(), date: date.clone(), index: path.to_string() };
            out.push(Index { record, path: file });
        }
    }
    if out.is_empty() {
        bail!(
            "--apt-lists {}: no uncompressed Packages index with a verified InRelease (apt keeps them uncompressed unless Acquire::GzipIndexes is set)",
            dir.display()
        );
    }
    Ok(out)
}

/// Records in each package where Debian's archive lists it with the same SHA-256; a package no
/// verified index lists, or lists with another digest, is an error naming it.
pub fn vouch(debs: &mut [Deb], indexes: &[Index]) -> Result<()> {
    use std::io::BufRead;
    let mut found: Vec<Option<ArchiveIndex>> = vec![None; debs.len()];
    for idx in indexes {
        let f = fs::File::open(&idx.path).with_context(|| format!("cannot open {}", idx.path.display()))?;
        let (mut name, mut version, mut arch, mut sum) = (String::new(), String::new(), String::new(), String::new());
        for line in std::io::BufReader::new(f).lines().chain(std::iter::once(Ok(String::new()))) {
            let line = line.with_context(|| format!("cannot read {}", idx.path.display()))?;
            if line.is_empty() {
                for (i, d) in debs.iter().enumerate() {
                    let p = &d.package;
                    if p.name == name && p.version == version && p.architecture == arch {
                        if !sum.eq_ignore_ascii_case(&p.sha256.to_hex()) {
                            bail!(
                                "{}: Debian's archive ({}, {}) lists {} {} {} with SHA-256 {sum}, this file has {}",
                                d.path.display(),
                                idx.record.suite,
                                idx.record.index,
                                p.name,
                                p.version,
                                p.architecture,
                                p.sha256.to_hex()
                            );
                        }
                        found[i] = Some(idx.record.clone());
                    }
                }
                (name, version, arch, sum) = (String::new(), String::new(), String::new(), String::new());
                continue;
            }
            if let Some((k, v)) = line.split_once(": ") {
                match k {
                    "Package" => name = v.to_string(),
                    "Version" => version = v.to_string(),
                    "Architecture" => arch = v.to_string(),
                    "SHA256" => sum = v.to_string(),
                    _ => {}
                }
            }
        }
    }
    for (d, f) in debs.iter_mut().zip(found) {
        let Some(record) = f else {
            bail!(
                "{}: {} {} {} is in none of the verified Debian archive indexes",
                d.path.display(),
                d.package.name,
                d.package.version,
                d.package.architecture
            );
        };
        d.package.archive = Some(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_read_as_the_archive_writes_them_and_anything_else_is_refused() {
        assert_eq!(release_date("Sat, 11 Jul 2026 10:16:37 UTC"), Some(1_783_764_997));
        assert_eq!(release_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(release_date("29 Feb 2024 23:59:59 +0000"), Some(1_709_251_199));
        assert_eq!(release_date("Sat, 11 Jul 2026 10:16:37 CEST"), None);
        assert_eq!(release_date("Sat, 11 Juli 2026 10:16:37 UTC"), None);
        assert_eq!(release_date("Sat, 11 Jul 2026 25:16:37 UTC"), None);
        assert_eq!(release_date(""), None);
    }
}
