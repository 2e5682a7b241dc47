//! What this machine is and has installed: OS, kernel, architecture, OS packages (dpkg or rpm)
//! and the releases lanpatch installed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lanpatch_protocol::report::{InstalledRelease, Package};

/// `(os id, version)` from /etc/os-release, e.g. ("debian", "12").
pub fn os_release(text: &str) -> (String, String) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let id = get("ID");
    (if id.is_empty() { std::env::consts::OS.to_string() } else { id }, get("VERSION_ID"))
}

/// Installed packages from a dpkg status file: stanzas whose Status ends in "installed".
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut source = None;
        let mut source_version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Source: ") {
                // "Source: openssh" or "Source: glibc (2.36-9+deb12u3)"
                let (n, rest) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
                source = Some(n);
                source_version = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).map(str::trim);
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        let cap = |s: &str| s.chars().take(128).collect::<String>();
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.push(Package {
                name: cap(n),
                version: cap(v),
                source: source.filter(|s| *s != n).map(cap),
                source_version: source_version.filter(|s| *s != v).map(cap),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A file as `stat` sees it: dpkg writes its status file anew and renames it over the old one
/// on every change, so the same identity means the same contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileId { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
}

/// The last parse of a dpkg status file and the file's identity then. The inventory looks every
/// 30 s; parsing a server's status file (a few MB) each time was a visible share of an idle
/// node's CPU, a `stat` is not.
pub struct DpkgCache {
    last: Mutex<Option<(FileId, Vec<Package>)>>,
    parses: AtomicUsize,
}

impl DpkgCache {
    pub const fn new() -> DpkgCache {
        DpkgCache { last: Mutex::new(None), parses: AtomicUsize::new(0) }
    }

    /// The installed packages of the status file at `path`, parsed again only when the file
    /// changed; `None` when it cannot be read.
    pub fn packages(&self, path: &Path) -> Option<Vec<Package>> {
        let id = file_id(path)?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, pkgs)) = last.as_ref()
            && *seen == id
        {
            return Some(pkgs.clone());
        }
        let text = std::fs::read_to_string(path).ok()?;
        self.parses.fetch_add(1, Ordering::Relaxed);
        let pkgs = parse_dpkg_status(&text);
        // Kept only when the file did not change while it was read.
        *last = (file_id(path) == Some(id)).then(|| (id, pkgs.clone()));
        Some(pkgs)
    }

    /// How many times a file was read and parsed.
    pub fn parses(&self) -> usize {
        self.parses.load(Ordering::Relaxed)
    }
}

impl Default for DpkgCache {
    fn default() -> Self {
        DpkgCache::new()
    }
}

static DPKG: DpkgCache = DpkgCache::new();

/// The machine's packages: dpkg where present, else rpm, else none.
pub fn packages() -> Vec<Package> {
    if let Some(pkgs) = DPKG.packages(Path::new("/var/lib/dpkg/status")) {
        return pkgs;
    }
    let rpm = std::process::Command::new("rpm").args(["-qa", "--qf", "%{NAME}\\t%{VERSION}-%{RELEASE}\\n"]).output();
    if let Ok(out) = rpm
        && out.status.success()
    {
        let mut pkgs: Vec<Package> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, v)| Package {
                name: n.chars().take(128).collect(),
                version: v.chars().take(128).collect(),
                source: None,
                source_version: None,
            })
            .collect();
        pkgs.sort_by(|a, b| a.name.cmp(&b.name));
        return pkgs;
    }
    Vec::new()
}

pub struct Machine {
    pub os: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub packages: Vec<Package>,
    pub reboot_required: Option<Vec<String>>,
}

/// Debian's reboot flag: `/run/reboot-required` exists (written by packages' postinst through
/// update-notifier-common or by unattended-upgrades), and `/run/reboot-required.pkgs` lists the
/// packages that asked (one per line). Read at most 64 KiB, 256 names of 128 bytes.
pub fn reboot_required(run: &Path) -> Option<Vec<String>> {
    use std::io::Read;
    std::fs::symlink_metadata(run.join("reboot-required")).ok()?;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(run.join("reboot-required.pkgs")) {
        let _ = f.take(64 * 1024).read_to_string(&mut text);
    }
    let mut pkgs: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.len() <= 128 && !l.chars().any(char::is_control))
        .map(str::to_string)
        .collect();
    pkgs.sort();
    pkgs.dedup();
    pkgs.truncate(256);
    Some(pkgs)
}

/// Reads the machine's facts. Blocking (reads files, may run rpm).
pub fn machine() -> Machine {
    let (os, os_version) = os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
    Machine {
        os,
        os_version,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        packages: packages(),
        reboot_required: reboot_required(Path::new("/run")),
    }
}

/// Sorted, for a stable "did it change" comparison.
pub fn sorted_releases(mut r: Vec<InstalledRelease>) -> Vec<InstalledRelease> {
    r.sort_by(|a, b| (&a.product, a.version).cmp(&(&b.product, b.version)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_dpkg_status_file_is_not_parsed_again_and_a_replaced_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        std::fs::write(&path, "Package: bash\nStatus: install ok installed\nVersion: 5.2\n").unwrap();
        let cache = DpkgCache::new();
        assert_eq!(cache.packages(&path).unwrap()[0].version, "5.2");
        assert_eq!(cache.packages(&path).unwrap()[0].version, "5.2");
        assert_eq!(cache.parses(), 1, "the unchanged file was parsed again");
        // As dpkg does: a new file renamed over the old one.
        let new = dir.path().join("status-new");
        std::fs::write(&new, "Package: bash\nStatus: install ok installed\nVersion: 5.3\n").unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_eq!(cache.packages(&path).unwrap()[0].version, "5.3");
        assert_eq!(cache.parses(), 2);
        assert!(cache.packages(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn dpkg_status_keeps_installed_packages_only() {
        let text = "Package: bash\nStatus: install ok installed\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b2\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: apt\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.6.1\n";
        let p = parse_dpkg_status(text);
        assert_eq!(
            p,
            vec![
                Package { name: "apt".into(), version: "2.6.1".into(), source: None, source_version: None },
                Package {
                    name: "bash".into(),
                    version: "5.2.15-2+b2".into(),
                    source: None,
                    source_version: Some("5.2.15-2".into())
                }
            ]
        );
    }

    #[test]
    fn reboot_required_is_read_with_the_packages_that_asked_for_it() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(reboot_required(run.path()), None);
        std::fs::write(run.path().join("reboot-required"), "*** System restart required ***\n").unwrap();
        assert_eq!(reboot_required(run.path()), Some(vec![]));
        std::fs::write(run.path().join("reboot-required.pkgs"), "linux-image-6.1.0-30-amd64\nlibc6\nlibc6\n").unwrap();
        assert_eq!(
            reboot_required(run.path()),
            Some(vec!["libc6".to_string(), "linux-image-6.1.0-30-amd64".to_string()])
        );
    }

    #[test]
    fn os_release_reads_id_and_version() {
        assert_eq!(
            os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"),
            ("debian".into(), "12".into())
        );
    }
}
