//! `lanpatch-signer release create`: package files or Debian packages into a bundle with an
//! unsigned manifest.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use lanpatch_assess::{feedstore, vulns};
use lanpatch_protocol::manifest::{FeedDate, default_chunk_size};
use lanpatch_protocol::{
    Command, CveId, DebianPackages, Installer, Limits, ProductName, ReleaseManifest, Severity, SeverityLevel, Signed,
    Tag, Targets, Version,
};

use crate::bundle::{self, Bundle, check_payload, refuse_existing};
use crate::{deb, exit, time};

#[derive(Args)]
pub struct CreateArgs {
    /// Product name (lowercase, digits, . _ -).
    #[arg(long)]
    pub product: ProductName,
    /// Release sequence number; must be higher than every earlier release of the product.
    #[arg(long)]
    pub version: Version,
    /// Vendor version string shown to humans, e.g. 3.0.13-1.
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Take every regular file under this directory (names relative to it).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Add one file (named by its file name). Repeatable.
    #[arg(long = "file")]
    pub files: Vec<PathBuf>,
    /// Install command, run in a directory holding the release's files, e.g. "sh install.sh".
    /// Give this or --deb.
    #[arg(long, required_unless_present = "debs", conflicts_with = "debs")]
    pub install: Option<String>,
    /// A Debian package (.deb), or a directory of them: the node installs them with dpkg itself,
    /// upgrading only the packages a host has, keeping the ones replaced for a rollback.
    /// Repeatable. No --install, --rollback or --detect with it.
    #[arg(long = "deb", conflicts_with_all = ["rollback", "detect"])]
    pub debs: Vec<PathBuf>,
    /// With --deb: also install packages a host does not have yet.
    #[arg(long, requires = "debs")]
    pub add_new: bool,
    /// With --deb: an apt lists directory (e.g. /var/lib/apt/lists). Each package must be listed,
    /// with its SHA-256, in a Packages index whose InRelease verifies with Debian's archive
    /// keyring; the manifest records which.
    #[arg(long, requires = "debs")]
    pub apt_lists: Option<PathBuf>,
    /// Rollback command, run when install fails or on a yank with --rollback.
    #[arg(long)]
    pub rollback: Option<String>,
    /// Detect command: exit code 0 means the release is already installed.
    #[arg(long)]
    pub detect: Option<String>,
    /// Timeout for each command.
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// none, low, medium, high or critical.
    #[arg(long, default_value = "medium")]
    pub severity: SeverityLevel,
    /// A CVE id fixed by this release. Repeatable.
    #[arg(long = "cve")]
    pub cves: Vec<CveId>,
    /// CVSS base score, 0.0 to 10.0.
    #[arg(long)]
    pub cvss: Option<f64>,
    /// EPSS probability, 0 to 1.
    #[arg(long)]
    pub epss: Option<f64>,
    /// The flaw is exploited in the wild.
    #[arg(long)]
    pub known_exploited: bool,
    /// Fill --cvss, --epss and --known-exploited for the --cve ids from this feed database when
    /// not given (default: ~/.local/share/lanpatch/feeds.db, if it exists).
    #[arg(long)]
    pub feeds_db: Option<PathBuf>,
    /// With --deb and no --cve: a collector node's control socket; --cve is filled with the
    /// CVEs the fleet is exposed to (its inventories against the feed database) that these
    /// packages' versions fix.
    #[arg(long, requires = "debs", conflicts_with = "inventories")]
    pub node: Option<PathBuf>,
    /// As --node, from a file: a JSON array of inventories as `vulns --inventories` reads.
    #[arg(long, requires = "debs")]
    pub inventories: Option<PathBuf>,
    /// Install at once, ignoring maintenance windows.
    #[arg(long)]
    pub urgent: bool,
    /// Only nodes with this OS (e.g. linux). Repeatable.
    #[arg(long = "target-os")]
    pub target_os: Vec<String>,
    /// Only nodes with this architecture (e.g. x86_64). Repeatable.
    #[arg(long = "target-arch")]
    pub target_arch: Vec<String>,
    /// Only nodes with this tag. Repeatable.
    #[arg(long = "target-tag")]
    pub target_tags: Vec<Tag>,
    /// Only nodes with this hostname. Repeatable.
    #[arg(long = "target-host")]
    pub target_hosts: Vec<String>,
    /// HTTP(S) base URL the files can also be fetched from. Repeatable.
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// When the manifest expires.
    #[arg(long, default_value = "90d")]
    pub expires: String,
    /// Chunk size in bytes (default: 256 KiB, more for very large releases).
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// The bundle directory to create (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// CVSS, EPSS and known-exploited for a new release: the flags where given, else (for its CVEs)
/// the highest CVSS and EPSS the imported feeds give any of them, and KEV membership of any.
/// (CVSS, EPSS, known exploited, the feeds' dates) for a new release's manifest.
pub type Scores = (Option<f64>, Option<f64>, bool, Vec<FeedDate>);

/// Builds the bundle in a temporary directory beside `--out` and renames it into place at the
/// end, so a refused flag or a failure half-way leaves nothing behind.
pub fn create_release(a: CreateArgs, limits: &Limits, now: lanpatch_protocol::Timestamp) -> Result<()> {
    refuse_existing(&a.out)?;
    let name = a
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--out {} has no usable name", a.out.display()))?;
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = a.out.clone();
    let result = build_release(a, &tmp, limits, now);
    let result = result.and_then(|()| {
        refuse_existing(&out)?;
        std::fs::rename(&tmp, &out).with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    println!("next: lanpatch-signer release sign --key <release key> {}", out.display());
    Ok(())
}

pub fn build_release(mut a: CreateArgs, tmp: &Path, limits: &Limits, now: lanpatch_protocol::Timestamp) -> Result<()> {
    let mut sources = match &a.dir {
        Some(d) => bundle::sources_from_dir(d)?,
        None => Vec::new(),
    };
    let mut debs = deb::collect(&a.debs)?.iter().map(|p| deb::read(p)).collect::<Result<Vec<_>>>()?;
    if let Some(lists) = &a.apt_lists {
        deb::vouch(&mut debs, &deb::archive_indexes(lists)?)?;
        for d in &debs {
            if let Some(r) = &d.package.archive {
                println!(
                    "Debian's archive vouches for {} {}: {} ({}), {}",
                    d.package.name, d.package.version, r.suite, r.date, r.index
                );
            }
        }
    }
    if a.cves.is_empty() && (a.node.is_some() || a.inventories.is_some()) {
        a.cves = cves_fixed_by(&debs, &a)?;
    }
    for d in &debs {
        sources.push(bundle::source(&d.path, d.package.file.as_str())?);
    }
    for f in &a.files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable file name", f.display()))?;
        sources.push(bundle::source(f, name)?);
    }
    if sources.is_empty() {
        bail!("a release needs files: give --dir DIR, --file FILE or --deb FILE.deb");
    }
    let timeout = humantime::parse_duration(&a.timeout).with_context(|| format!("bad --timeout {:?}", a.timeout))?;
    let timeout_secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX).max(1);
    let total: u64 = sources.iter().map(|s| s.size).sum();
    let chunk_size = a.chunk_size.unwrap_or_else(|| default_chunk_size(total, limits));
    let b = Bundle::new(tmp);
    let mut files = Vec::new();
    for s in &sources {
        files.push(bundle::hash_file(s, chunk_size, Some(&b.file_path(&s.name)))?);
    }
    let score = |what: &str, v: Option<f64>, scale: f64, max: f64| -> Result<Option<u32>> {
        match v {
            None => Ok(None),
            Some(x) if (0.0..=max).contains(&x) => Ok(Some((x * scale).round() as u32)),
            Some(x) => bail!("{what} {x} is out of range 0..={max}"),
        }
    };
    let (cvss, epss, known_exploited, feed_dates) = fill_from_feeds(&a)?;
    let manifest = ReleaseManifest {
        product: a.product,
        version: a.version,
        label: a.label,
        description: a.description,
        created: now,
        expires: time::parse_time(&a.expires, now)?,
        files,
        installer: match &a.install {
            Some(install) => {
                let names: Vec<String> = sources.iter().map(|s| s.name.to_string()).collect();
                let cmd = |what: &str, text: &str| -> Result<Command> {
                    let c = parse_command(what, text, timeout_secs)?;
                    check_command_files(what, &c, &names)?;
                    Ok(c)
                };
                Installer::Commands {
                    install: cmd("install", install)?,
                    rollback: a.rollback.as_deref().map(|c| cmd("rollback", c)).transpose()?,
                    detect: a.detect.as_deref().map(|c| cmd("detect", c)).transpose()?,
                }
            }
            None => Installer::Debian(DebianPackages {
                packages: debs.iter().map(|d| d.package.clone()).collect(),
                add_new: a.add_new,
                timeout_secs,
            }),
        },
        targets: Targets { os: a.target_os, arch: a.target_arch, tags: a.target_tags, hostnames: a.target_hosts },
        severity: Severity {
            level: a.severity,
            cves: a.cves,
            cvss_tenths: score("CVSS", cvss, 10.0, 10.0)?.map(|v| v as u8),
            epss_bp: score("EPSS", epss, 10_000.0, 1.0)?.map(|v| v as u16),
            known_exploited,
            feed_dates,
        },
        urgent: a.urgent,
        origins: a.origins,
    };
    check_payload(&manifest, limits)?;
    let signed = Signed::new(manifest);
    bundle::save(&b.manifest_path(), &signed)?;
    let m = signed.value();
    println!(
        "created {} version {} in {}: {} file(s), {} bytes, {} chunks of {} KiB",
        m.product,
        m.version,
        a.out.display(),
        m.files.len(),
        m.total_bytes(),
        m.total_chunks(),
        chunk_size / 1024
    );
    println!("manifest hash: {}", signed.payload_hash());
    Ok(())
}

/// The CVEs the fleet is exposed to (inventories against the feed database) that the versions
/// of these packages fix: each finding for a package's source whose fixed version the
/// package's source version reaches.
pub fn cves_fixed_by(debs: &[deb::Deb], a: &CreateArgs) -> Result<Vec<CveId>> {
    let store = feedstore::FeedStore::open(&a.feeds_db.clone().unwrap_or_else(feedstore::default_path))?;
    if !store.feeds()?.iter().any(|f| f.feed == feedstore::Feed::Osv) {
        return Err(exit::exit(exit::Code::NotFound, "no OSV feed imported (lanpatch-signer feeds import --osv ...)"));
    }
    let hosts = crate::vulns::load_inventories(a.node.as_deref(), a.inventories.as_deref())?;
    let findings = vulns::exposures(&hosts, &store.affected_by_package()?);
    let mut fixed = std::collections::BTreeSet::new();
    for f in &findings {
        let reaches = |d: &&deb::Deb| {
            d.package.source == f.package
                && f.hosts.iter().any(|e| {
                    e.fixed.as_deref().is_some_and(|fx| {
                        lanpatch_protocol::debver::compare(&d.package.source_version, fx)
                            .is_some_and(|o| o != std::cmp::Ordering::Less)
                    })
                })
        };
        if debs.iter().any(|d| reaches(&d)) {
            fixed.insert(f.cve.clone());
        }
    }
    let cves: Vec<CveId> = fixed.iter().filter_map(|c| c.parse().ok()).collect();
    if cves.is_empty() {
        println!("--cve: no CVE the fleet is exposed to is fixed by these packages");
    } else {
        let names: Vec<&str> = cves.iter().map(|c: &CveId| c.as_str()).collect();
        println!("--cve from the fleet's exposures these packages fix: {}", names.join(" "));
    }
    Ok(cves)
}

pub fn fill_from_feeds(a: &CreateArgs) -> Result<Scores> {
    let mut out = (a.cvss, a.epss, a.known_exploited, Vec::new());
    let path = match &a.feeds_db {
        Some(p) => p.clone(),
        None => feedstore::default_path(),
    };
    if a.cves.is_empty() || (a.feeds_db.is_none() && !path.exists()) {
        return Ok(out);
    }
    let store = feedstore::FeedStore::open(&path)?;
    let max = |v: Option<f64>, w: Option<f64>| match (v, w) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let (mut cvss, mut epss, mut kev) = (None, None, false);
    for c in &a.cves {
        cvss = max(cvss, store.cvss(c.as_str())?);
        epss = max(epss, store.epss(c.as_str())?.map(|e| e.score));
        kev |= store.kev(c.as_str())?.is_some();
    }
    out.0 = out.0.or(cvss);
    out.1 = out.1.or(epss);
    out.2 |= kev;
    out.3 = store.feeds()?.into_iter().map(|f| FeedDate { feed: f.feed.as_str().to_string(), date: f.date }).collect();
    let dates: Vec<String> = out.3.iter().map(|f| format!("{} {}", f.feed, f.date)).collect();
    println!(
        "from the feeds ({}): CVSS {}, EPSS {}, known exploited {}",
        dates.join(", "),
        out.0.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
        out.1.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
        out.2
    );
    Ok(out)
}

pub fn parse_command(what: &str, s: &str, timeout_secs: u32) -> Result<Command> {
    let argv = shlex::split(s).with_context(|| format!("{what} command {s:?} has unbalanced quotes"))?;
    if argv.is_empty() {
        bail!("{what} command is empty");
    }
    Ok(Command { argv, timeout_secs })
}

/// Interpreters whose first argument that is not an option is the script they run.
pub const INTERPRETERS: &[&str] = &["sh", "bash", "dash", "python3", "python", "perl"];

/// The file of the release a command runs (`./install.sh`, or `sh install.sh`), if it names
/// one: relative to the staging directory, where the node runs it.
pub fn script_of(argv: &[String]) -> Option<&str> {
    let program = argv.first()?;
    if program.starts_with("./") {
        return Some(program.trim_start_matches("./"));
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    if !INTERPRETERS.contains(&name) {
        return None;
    }
    // `sh -c '...'` runs inline text: no file.
    for a in &argv[1..] {
        if a == "-c" {
            return None;
        }
        if !a.starts_with('-') {
            // An absolute path or one built from the environment is not checked here.
            return (!a.starts_with('/') && !a.contains('$')).then_some(a.trim_start_matches("./"));
        }
    }
    None
}

/// Refuses a command that runs a file the release does not carry (`sh instal.sh`): it would
/// fail on every node.
pub fn check_command_files(what: &str, cmd: &Command, names: &[String]) -> Result<()> {
    if let Some(script) = script_of(&cmd.argv)
        && !names.iter().any(|n| n == script)
    {
        let hint = match lanpatch_protocol::suggest::nearest(script, names.iter().map(String::as_str)) {
            Some(n) => format!("did you mean {n}?"),
            None => format!("the release's files: {}", names.join(", ")),
        };
        bail!("the {what} command runs {script}, which the release does not carry; {hint}");
    }
    Ok(())
}
