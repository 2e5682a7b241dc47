//! Releases of Debian packages: the node installs them itself with dpkg, with no command of the
//! admin's.
//!
//! - **Plan.** Only the binary packages the host has are upgraded (unless the release adds new
//!   ones); a host at or above every version already counts as installed, a host with none of
//!   them is not targeted.
//! - **Dependencies first.** `Depends` and `Pre-Depends` of every package are checked against
//!   what the host will have; a missing one refuses the install, naming it, before dpkg runs.
//! - **Keep what is replaced.** Each package about to be upgraded is kept: apt's cached `.deb`
//!   when its control fields match what is installed, else one rebuilt with `dpkg-repack`. A
//!   rollback reinstalls the kept packages and removes the ones the release added.
//! - **Non-interactive.** `DEBIAN_FRONTEND=noninteractive`, and for conffiles
//!   `--force-confdef --force-confold`: a locally changed configuration file is kept, an
//!   unchanged one takes the package's new version.
//! - **Locked.** dpkg's frontend lock is held for the whole install or rollback (see [`lock`]).
//! - **Audited.** `dpkg --audit` must be empty after every outcome.

pub mod lock;
pub mod relations;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lanpatch_protocol::{Command, DebPackage, DebianPackages, debver};
use serde::{Deserialize, Serialize};

use relations::Present;

/// A package in this host's dpkg database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPackage {
    pub name: String,
    pub arch: String,
    pub version: String,
    /// Fully installed (`ii`), not only unpacked, half-configured or removed with its config.
    pub installed: bool,
    pub provides: Vec<(String, Option<String>)>,
    /// Its `Conflicts` and `Breaks` fields, as dpkg has them.
    pub conflicts: String,
    pub breaks: String,
}

/// How long a query of dpkg's database may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment of every dpkg run: nothing of the node's own.
pub fn dpkg_env() -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("DEBIAN_FRONTEND", "noninteractive".to_string()),
        ("DPKG_FRONTEND_LOCKED", "1".to_string()),
    ]
}

/// Runs a query and returns its standard output; a non-zero exit is an error with its stderr.
async fn query(argv: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(dpkg_env()).kill_on_drop(true);
    let out = tokio::time::timeout(QUERY_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{} ran past {} s", argv.join(" "), QUERY_TIMEOUT.as_secs()))?
        .with_context(|| format!("cannot run {}", argv[0]))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{} failed ({}): {}", argv.join(" "), out.status, err.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed something that is not UTF-8", argv[0]))
}

/// This host's packages, as dpkg knows them.
pub async fn host_packages() -> Result<Vec<HostPackage>> {
    let text = query(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\t${Provides}\t${Conflicts}\t${Breaks}\n",
    ])
    .await?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, arch, version, status) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(HostPackage {
                name: name.to_string(),
                arch: arch.to_string(),
                version: version.to_string(),
                installed: status.starts_with("ii"),
                provides: relations::parse_provides(f.next().unwrap_or("")),
                conflicts: f.next().unwrap_or("").to_string(),
                breaks: f.next().unwrap_or("").to_string(),
            })
        })
        .collect())
}

/// dpkg's native architecture (`amd64`, ...).
pub async fn native_arch() -> Result<String> {
    Ok(query(&["dpkg", "--print-architecture"]).await?.trim().to_string())
}

/// What [`plan`] needs of this host: its packages and dpkg's native architecture.
pub async fn host() -> Result<(Vec<HostPackage>, String)> {
    Ok((host_packages().await?, native_arch().await?))
}

/// What a Debian release means for this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Every package of the release that the host has is at or above the release's version.
    /// Human text: `name version` of each.
    AlreadyAt(Vec<String>),
    /// The host has none of the release's packages, and the release adds none.
    NotHere,
    Install(Install),
}

/// The packages to unpack: upgrades (with the version they replace) and additions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub upgrade: Vec<(DebPackage, String)>,
    pub add: Vec<DebPackage>,
}

impl Install {
    pub fn packages(&self) -> impl Iterator<Item = &DebPackage> {
        self.upgrade.iter().map(|(p, _)| p).chain(self.add.iter())
    }
}

fn on_host<'a>(p: &DebPackage, host: &'a [HostPackage], native: &str) -> Option<&'a HostPackage> {
    // The same architecture, or `all` on one side and the native one on the other (a package
    // that moved between `all` and the native architecture is the same package to dpkg).
    let arch_matches = |h: &HostPackage| {
        h.arch == p.architecture
            || (p.architecture == "all" && h.arch == native)
            || (h.arch == "all" && p.architecture == native)
    };
    host.iter().find(|h| h.installed && h.name == p.name && arch_matches(h))
}

/// Decides what to do on this host: pure, from the host's packages.
pub fn plan(d: &DebianPackages, host: &[HostPackage], native: &str) -> Plan {
    let mut at = Vec::new();
    let (mut upgrade, mut add) = (Vec::new(), Vec::new());
    for p in &d.packages {
        match on_host(p, host, native) {
            Some(h) => match debver::compare(&h.version, &p.version) {
                Some(std::cmp::Ordering::Less) => upgrade.push((p.clone(), h.version.clone())),
                // A version dpkg holds but that does not parse here is replaced, never trusted.
                None => upgrade.push((p.clone(), h.version.clone())),
                Some(_) => at.push(format!("{} {}", h.name, h.version)),
            },
            None if d.add_new && (p.architecture == "all" || p.architecture == native) => add.push(p.clone()),
            None => {}
        }
    }
    match (upgrade.is_empty() && add.is_empty(), at.is_empty()) {
        (true, false) => Plan::AlreadyAt(at),
        (true, true) => Plan::NotHere,
        (false, _) => Plan::Install(Install { upgrade, add }),
    }
}

/// Reads control fields of a `.deb` (`Name: value` lines, continuation lines folded).
async fn control_fields(deb: &Path, names: &[&str]) -> Result<Vec<(String, String)>> {
    let path = deb.to_str().context("a package path that is not UTF-8")?;
    let mut argv = vec!["dpkg-deb", "--field", path];
    argv.extend_from_slice(names);
    let text = query(&argv).await?;
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    // With a single name dpkg-deb prints only the value.
    if names.len() == 1 && fields.iter().all(|(k, _)| k != names[0]) {
        return Ok(vec![(names[0].to_string(), text.trim().to_string())]);
    }
    Ok(fields)
}

/// What stands in the way of unpacking a release's packages on a host, each named with the
/// package whose relation it is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Obstacles {
    /// `Depends`/`Pre-Depends` that nothing on the host (after the install) satisfies.
    pub missing: Vec<String>,
    /// `Conflicts`/`Breaks` of a package to unpack against the host's packages, or of a package
    /// that stays on the host against the ones to unpack. dpkg would refuse, or remove or
    /// deconfigure a package the release does not name: lanpatch does neither.
    pub conflicts: Vec<String>,
}

/// Checks the relations of the packages to unpack against the host after the install.
pub async fn obstacles(stage: &Path, install: &Install, host: &[HostPackage]) -> Result<Obstacles> {
    let replaced: Vec<&str> = install.upgrade.iter().map(|(p, _)| p.name.as_str()).collect();
    let staying: Vec<&HostPackage> =
        host.iter().filter(|h| h.installed && !replaced.contains(&h.name.as_str())).collect();
    let mut after: Vec<Present> = staying
        .iter()
        .map(|h| Present { name: h.name.clone(), version: h.version.clone(), provides: h.provides.clone() })
        .collect();
    let mut new = Vec::new();
    let mut fields_of = Vec::new();
    for p in install.packages() {
        let deb = p.file.components().fold(stage.to_path_buf(), |d, c| d.join(c));
        let fields = control_fields(&deb, &["Depends", "Pre-Depends", "Provides", "Conflicts", "Breaks"]).await?;
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let present = Present {
            name: p.name.clone(),
            version: p.version.clone(),
            provides: relations::parse_provides(&get("Provides")),
        };
        new.push(present.clone());
        after.push(present);
        fields_of.push((
            p.name.clone(),
            format!("{}, {}", get("Pre-Depends"), get("Depends")),
            get("Conflicts"),
            get("Breaks"),
        ));
    }
    let mut found = Obstacles::default();
    for (name, needs, conflicts, breaks) in fields_of {
        let unmet = relations::unmet(&needs, &after).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        found.missing.extend(unmet.into_iter().map(|m| format!("{name} needs {m}")));
        // A package may conflict with what it provides itself (Debian's rename pattern).
        let others: Vec<Present> = after.iter().filter(|p| p.name != name).cloned().collect();
        for (field, verb) in [(&conflicts, "conflicts with"), (&breaks, "breaks")] {
            let hit = relations::clashes(field, &others).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            found.conflicts.extend(hit.into_iter().map(|c| format!("{name} {verb} {c}")));
        }
    }
    for h in staying {
        for (field, verb) in [(&h.conflicts, "conflicts with"), (&h.breaks, "breaks")] {
            // dpkg accepts (with a warning) relations it cannot fully read in installed
            // packages; one of them must not block every release: skipped, said.
            match relations::clashes(field, &new) {
                Ok(hit) => {
                    found.conflicts.extend(hit.into_iter().map(|c| format!("{} (installed) {verb} {c}", h.name)))
                }
                Err(e) => tracing::warn!("ignoring an unreadable relation of installed {}: {e}", h.name),
            }
        }
    }
    Ok(found)
}

/// Where a kept package came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeptFrom {
    /// apt's cache (`/var/cache/apt/archives`), its control fields checked.
    AptCache,
    /// Rebuilt from the installed files with `dpkg-repack`.
    DpkgRepack,
}

/// A package the node kept before replacing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptPackage {
    pub name: String,
    pub arch: String,
    pub version: String,
    /// File name inside the kept directory.
    pub file: String,
    pub from: KeptFrom,
}

/// What undoes one install: the packages it replaced, and the ones it added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub packages: Vec<KeptPackage>,
    /// `name:arch` of each package the release added.
    pub added: Vec<String>,
}

const KEPT_FILE: &str = "kept.json";

/// The `.deb` name apt gives a package in its cache (`:` of an epoch as `%3a`).
fn cache_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// Keeps every package the install replaces, in `dir` (created 0700), and records how.
pub async fn keep_previous(dir: &Path, install: &Install, host: &[HostPackage], native: &str) -> Result<Kept> {
    crate::fsmode::create_dir(dir, crate::fsmode::DIR)?;
    let mut kept = Kept {
        added: install.add.iter().map(|p| format!("{}:{}", p.name, p.architecture)).collect(),
        ..Kept::default()
    };
    for (p, old) in &install.upgrade {
        let arch = on_host(p, host, native).map_or(p.architecture.clone(), |h| h.arch.clone());
        let file = cache_name(&p.name, old, &arch);
        let cached = PathBuf::from("/var/cache/apt/archives").join(&file);
        let from = if matches_installed(&cached, &p.name, old, &arch).await {
            copy_kept(&cached, &dir.join(&file))?;
            KeptFrom::AptCache
        } else {
            repack(dir, &p.name, &arch, old, &file).await?;
            KeptFrom::DpkgRepack
        };
        kept.packages.push(KeptPackage { name: p.name.clone(), arch, version: old.clone(), file, from });
    }
    let json = serde_json::to_vec_pretty(&kept)?;
    crate::fsmode::write_private(&dir.join(KEPT_FILE), &json)?;
    Ok(kept)
}

/// What [`keep_previous`] recorded in `dir`; `None` when it recorded nothing (this node never
/// replaced a package for the release).
pub fn load_kept(dir: &Path) -> Result<Option<Kept>> {
    let path = dir.join(KEPT_FILE);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if len > 1 << 20 {
        bail!("{} is {len} bytes, more than a record of kept packages can be", path.display());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let kept: Kept = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a record of kept packages", path.display()))?;
    // Only plain file names inside `dir` are ever handed to dpkg.
    if let Some(k) =
        kept.packages.iter().find(|k| k.file.contains('/') || k.file.starts_with('.') || !k.file.ends_with(".deb"))
    {
        bail!("{}: {:?} is not a plain .deb file name", path.display(), k.file);
    }
    Ok(Some(kept))
}

async fn matches_installed(deb: &Path, name: &str, version: &str, arch: &str) -> bool {
    if !std::fs::symlink_metadata(deb).is_ok_and(|m| m.file_type().is_file()) {
        return false;
    }
    let Ok(f) = control_fields(deb, &["Package", "Version", "Architecture"]).await else { return false };
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    get("Package") == Some(name) && get("Version") == Some(version) && get("Architecture") == Some(arch)
}

fn copy_kept(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Rebuilds the installed `name:arch` with dpkg-repack into `dir`, named `file`.
async fn repack(dir: &Path, name: &str, arch: &str, version: &str, file: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("dpkg-repack");
    cmd.arg(format!("{name}:{arch}")).current_dir(dir).env_clear().envs(dpkg_env()).kill_on_drop(true);
    let out = tokio::time::timeout(QUERY_TIMEOUT, cmd.output())
        .await
        .context("dpkg-repack ran too long")?
        .context("cannot keep the package it replaces: it is not in apt's cache and dpkg-repack is not installed (apt-get install dpkg-repack)")?;
    if !out.status.success() {
        bail!("dpkg-repack {name}:{arch} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // dpkg-repack names its output as apt does, except for the epoch.
    let made = dir.join(format!("{name}_{}_{arch}.deb", version.split_once(':').map_or(version, |(_, v)| v)));
    if made != dir.join(file) {
        std::fs::rename(&made, dir.join(file)).with_context(|| format!("dpkg-repack made no {}", made.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `dpkg --install` of the release's packages to unpack, from the staging directory.
pub fn install_command(stage: &Path, install: &Install, timeout_secs: u32) -> Command {
    let mut argv: Vec<String> = ["dpkg", "--force-confdef", "--force-confold", "--install"].map(String::from).into();
    for p in install.packages() {
        argv.push(p.file.components().fold(stage.to_path_buf(), |d, c| d.join(c)).display().to_string());
    }
    Command { argv, timeout_secs }
}

/// The commands that undo an install: reinstall the kept packages, then purge added ones.
pub fn rollback_commands(dir: &Path, kept: &Kept, timeout_secs: u32) -> Vec<Command> {
    let mut cmds = Vec::new();
    if !kept.packages.is_empty() {
        let mut argv: Vec<String> =
            ["dpkg", "--force-confdef", "--force-confold", "--install"].map(String::from).into();
        argv.extend(kept.packages.iter().map(|k| dir.join(&k.file).display().to_string()));
        cmds.push(Command { argv, timeout_secs });
    }
    if !kept.added.is_empty() {
        let mut argv: Vec<String> = ["dpkg", "--purge"].map(String::from).into();
        argv.extend(kept.added.iter().cloned());
        cmds.push(Command { argv, timeout_secs });
    }
    cmds
}

/// What `dpkg --audit` reports: empty when every package is in a sane state.
pub async fn audit() -> Result<String> {
    Ok(query(&["dpkg", "--audit"]).await?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanpatch_protocol::{Hash32, RelPath};

    fn pkg(name: &str, version: &str, arch: &str) -> DebPackage {
        DebPackage {
            file: format!("{name}.deb").parse::<RelPath>().unwrap(),
            name: name.into(),
            version: version.into(),
            architecture: arch.into(),
            source: name.into(),
            source_version: version.into(),
            sha256: Hash32([0; 32]),
            archive: None,
        }
    }

    fn host(name: &str, version: &str, arch: &str) -> HostPackage {
        HostPackage {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
            installed: true,
            provides: vec![],
            conflicts: String::new(),
            breaks: String::new(),
        }
    }

    fn release(add_new: bool) -> DebianPackages {
        DebianPackages {
            packages: vec![pkg("libssl3", "3.0.17-1~deb12u1", "amd64"), pkg("openssl", "3.0.17-1~deb12u1", "amd64")],
            add_new,
            timeout_secs: 600,
        }
    }

    #[test]
    fn only_the_packages_the_host_has_are_upgraded() {
        let h = [host("libssl3", "3.0.15-1~deb12u1", "amd64")];
        let Plan::Install(i) = plan(&release(false), &h, "amd64") else { panic!("expected an install") };
        assert_eq!(i.upgrade.len(), 1);
        assert_eq!(i.upgrade[0].1, "3.0.15-1~deb12u1");
        assert!(i.add.is_empty());
        let Plan::Install(i) = plan(&release(true), &h, "amd64") else { panic!("expected an install") };
        assert_eq!(i.add.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["openssl"]);
    }

    #[test]
    fn a_host_at_or_above_every_version_counts_as_already_installed() {
        let h = [host("libssl3", "3.0.17-1~deb12u1", "amd64"), host("openssl", "3.0.18-1~deb12u1", "amd64")];
        assert_eq!(
            plan(&release(false), &h, "amd64"),
            Plan::AlreadyAt(vec!["libssl3 3.0.17-1~deb12u1".into(), "openssl 3.0.18-1~deb12u1".into()])
        );
    }

    #[test]
    fn a_host_without_any_of_the_packages_is_not_targeted_and_a_removed_one_does_not_count() {
        let mut removed = host("libssl3", "3.0.15-1~deb12u1", "amd64");
        removed.installed = false;
        assert_eq!(plan(&release(false), &[removed], "amd64"), Plan::NotHere);
        assert_eq!(plan(&release(false), &[host("libssl3", "3.0.15-1", "arm64")], "arm64"), Plan::NotHere);
    }

    #[test]
    fn apt_cache_names_carry_the_epoch_as_percent_3a() {
        assert_eq!(cache_name("bash", "1:5.2-1", "amd64"), "bash_1%3a5.2-1_amd64.deb");
    }
}
