//! `lanpatch-signer`: the admin's tool for keys, trust roots, releases, approvals and yanks.

mod bundle;
mod deb;
mod enroll;
mod exit;
mod fleet;
mod keys;
mod report;
mod revoke;
mod time;
mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lanpatch_protocol::manifest::{FeedDate, default_chunk_size};
use lanpatch_protocol::{
    Approval, Command, CveId, DebianPackages, Installer, Limits, ProductName, PublicKey, ReleaseManifest, RingName,
    Role, RoleKeys, Root, Severity, SeverityLevel, Signed, Tag, Targets, Version, Yank, YankAction, fleet_id,
};

use crate::bundle::Bundle;
use lanpatch_assess::{feeds, feedstore, vulns};

#[derive(Parser)]
#[command(name = "lanpatch-signer", version, about = "Sign and approve lanpatch releases", long_about = None)]
struct Cli {
    /// Use secret key files even when their mode lets others read them (prints a warning).
    #[arg(long, global = true)]
    allow_insecure_key_mode: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an ed25519 key pair: FILE (secret, mode 0600) and FILE.pub. Never overwrites.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create, sign, rotate and show trust roots.
    #[command(subcommand)]
    Root(RootCmd),
    /// Package, sign and show releases.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Approve a release for a ring (or co-sign an existing approval for that ring).
    Approve(ApproveArgs),
    /// Withdraw a release (or co-sign an existing yank).
    Yank(YankArgs),
    /// Check a bundle offline against a trust root and say exactly what is wrong, or that it is valid.
    Verify(VerifyArgs),
    /// Show the fleet's install results (from a collector node), per ring and state, with the
    /// failing nodes and their error output.
    Status {
        /// The collector node's control socket.
        #[arg(long)]
        node: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Only this release (a bundle directory).
        bundle: Option<PathBuf>,
    },
    /// Query the fleet's inventory (from a collector node): which nodes have package P below
    /// version V, and nodes per tag, OS or ring.
    Inventory(InventoryArgs),
    /// Hand a signed bundle to a running node on this machine, which verifies it, seeds its files
    /// and gossips its manifest, approvals and yank to the fleet; or (--metadata) one signed file
    /// such as a revocation list, which the node verifies, keeps and gossips.
    Publish {
        /// The node's control socket (`<data_dir>/control.sock`).
        #[arg(long)]
        node: PathBuf,
        /// Only announce the release; nodes fetch its files from the manifest's origins.
        #[arg(long, conflicts_with = "metadata")]
        metadata_only: bool,
        /// Publish this signed metadata file (a revocation list from `revoke`) instead of a bundle.
        #[arg(long, conflicts_with = "bundle")]
        metadata: Option<PathBuf>,
        #[arg(required_unless_present = "metadata")]
        bundle: Option<PathBuf>,
    },
    /// Enroll nodes: issue, co-sign and show node certificates (signed by the root's enroll role).
    #[command(subcommand)]
    Enroll(enroll::EnrollCmd),
    /// Revoke node keys (or take them off the list): write a new signed revocation list.
    Revoke(revoke::RevokeArgs),
    /// Import vulnerability feeds (OSV Debian records, EPSS CSV, CISA KEV JSON) from local files,
    /// or show what is imported.
    #[command(subcommand)]
    Feeds(FeedsCmd),
    /// Which hosts are exposed to which CVEs (the collector's inventories against the imported
    /// feeds), most urgent first: known exploited, then EPSS, then CVSS.
    Vulns(VulnsArgs),
    /// Print shell completions to stdout (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (roff) for lanpatch-signer and each subcommand into a directory.
    Man {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum FeedsCmd {
    /// Parse every given file, then replace each given feed in the database (one transaction
    /// each). A malformed file is refused naming the file and the line or record, and nothing
    /// of any given file is imported.
    Import {
        /// The feed database (default ~/.local/share/lanpatch/feeds.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// OSV records of the Debian ecosystem: a record .json, a directory of them, or all.zip.
        #[arg(long)]
        osv: Option<PathBuf>,
        /// The EPSS daily CSV (plain or .gz).
        #[arg(long)]
        epss: Option<PathBuf>,
        /// The CISA Known Exploited Vulnerabilities catalogue (JSON).
        #[arg(long)]
        kev: Option<PathBuf>,
    },
    /// The imported feeds: each one's date, source file and size.
    Show {
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct VulnsArgs {
    /// The feed database (default ~/.local/share/lanpatch/feeds.db).
    #[arg(long)]
    db: Option<PathBuf>,
    /// The collector node's control socket (its inventories).
    #[arg(long, required_unless_present = "inventories", conflicts_with = "inventories")]
    node: Option<PathBuf>,
    /// Inventories from a file instead: a JSON array as the collector's control socket returns
    /// them (for an offline workstation).
    #[arg(long)]
    inventories: Option<PathBuf>,
    /// Only this host (hostname or node id).
    #[arg(long)]
    host: Option<String>,
    /// Only this package (source or binary name).
    #[arg(long)]
    package: Option<String>,
    /// Only the CVEs this release bundle lists (`release create --cve`): the hosts it would fix.
    /// With --node, also per CVE the hosts the release fixed, the ones still pending, and the
    /// ones where it failed (from the collector's reports).
    #[arg(long)]
    fixed_by: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Print how long loading, matching and ranking took (to stderr).
    #[arg(long)]
    timings: bool,
}

#[derive(Args)]
struct RoleFlags {
    /// A root key (hex, or a .pub file). Repeat for each key.
    #[arg(long = "root-key")]
    root_keys: Vec<String>,
    /// How many root keys must sign a new root.
    #[arg(long)]
    root_threshold: Option<u32>,
    /// A release key. Repeat for each key.
    #[arg(long = "release-key")]
    release_keys: Vec<String>,
    /// How many release keys must sign a manifest.
    #[arg(long)]
    release_threshold: Option<u32>,
    /// An approve key. Repeat for each key.
    #[arg(long = "approve-key")]
    approve_keys: Vec<String>,
    /// How many approve keys must sign an approval or yank.
    #[arg(long)]
    approve_threshold: Option<u32>,
    /// A timestamp key (online, on the admin workstation's node: `timestamp_key` in its
    /// node.toml). Repeat for each key. With it, nodes install only under a fresh statement.
    #[arg(long = "timestamp-key")]
    timestamp_keys: Vec<String>,
    /// How many timestamp keys must sign a statement.
    #[arg(long)]
    timestamp_threshold: Option<u32>,
    /// An enroll key: signs node certificates and revocation lists (`enroll`, `revoke`). May be
    /// an online key on the admin workstation. Repeat for each key. Without an enroll role,
    /// nodes start only with `enrollment = "off"`.
    #[arg(long = "enroll-key")]
    enroll_keys: Vec<String>,
    /// How many enroll keys must sign a node certificate or revocation list.
    #[arg(long)]
    enroll_threshold: Option<u32>,
    /// When the root expires: a duration (365d) or a date.
    #[arg(long, default_value = "365d")]
    expires: String,
}

#[derive(Subcommand)]
enum RootCmd {
    /// Create version 1 of a trust root (unsigned: then `root sign` with a threshold of root keys).
    Init {
        #[command(flatten)]
        roles: RoleFlags,
        /// Where to write the root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Add one key's signature to a root file.
    Sign {
        /// The secret key to sign with.
        #[arg(long)]
        key: PathBuf,
        /// The root file.
        file: PathBuf,
    },
    /// Create the next root version from the current one. Roles given replace the current ones;
    /// roles not given are kept. It must then be signed by a threshold of the old AND new root keys.
    Rotate {
        /// The current root file.
        #[arg(long)]
        current: PathBuf,
        #[command(flatten)]
        roles: RoleFlags,
        /// Where to write the new root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a root's contents and signatures.
    Show {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReleaseCmd {
    /// Package files into a release bundle with an unsigned manifest.
    Create(Box<CreateArgs>),
    /// Add one key's signature to a bundle's manifest.
    Sign {
        /// The secret key to sign with.
        #[arg(long)]
        key: PathBuf,
        /// The bundle directory.
        bundle: PathBuf,
        /// The trust root whose release role the key must be in (default: root.lpr here).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Print a bundle's manifest, severity data, approvals and signatures.
    Show {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        bundle: PathBuf,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// Product name (lowercase, digits, . _ -).
    #[arg(long)]
    product: ProductName,
    /// Release sequence number; must be higher than every earlier release of the product.
    #[arg(long)]
    version: Version,
    /// Vendor version string shown to humans, e.g. 3.0.13-1.
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, default_value = "")]
    description: String,
    /// Take every regular file under this directory (names relative to it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Add one file (named by its file name). Repeatable.
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// Install command, run in a directory holding the release's files, e.g. "sh install.sh".
    /// Give this or --deb.
    #[arg(long, required_unless_present = "debs", conflicts_with = "debs")]
    install: Option<String>,
    /// A Debian package (.deb), or a directory of them: the node installs them with dpkg itself,
    /// upgrading only the packages a host has, keeping the ones replaced for a rollback.
    /// Repeatable. No --install, --rollback or --detect with it.
    #[arg(long = "deb", conflicts_with_all = ["rollback", "detect"])]
    debs: Vec<PathBuf>,
    /// With --deb: also install packages a host does not have yet.
    #[arg(long, requires = "debs")]
    add_new: bool,
    /// With --deb: an apt lists directory (e.g. /var/lib/apt/lists). Each package must be listed,
    /// with its SHA-256, in a Packages index whose InRelease verifies with Debian's archive
    /// keyring; the manifest records which.
    #[arg(long, requires = "debs")]
    apt_lists: Option<PathBuf>,
    /// Rollback command, run when install fails or on a yank with --rollback.
    #[arg(long)]
    rollback: Option<String>,
    /// Detect command: exit code 0 means the release is already installed.
    #[arg(long)]
    detect: Option<String>,
    /// Timeout for each command.
    #[arg(long, default_value = "10m")]
    timeout: String,
    /// none, low, medium, high or critical.
    #[arg(long, default_value = "medium")]
    severity: SeverityLevel,
    /// A CVE id fixed by this release. Repeatable.
    #[arg(long = "cve")]
    cves: Vec<CveId>,
    /// CVSS base score, 0.0 to 10.0.
    #[arg(long)]
    cvss: Option<f64>,
    /// EPSS probability, 0 to 1.
    #[arg(long)]
    epss: Option<f64>,
    /// The flaw is exploited in the wild.
    #[arg(long)]
    known_exploited: bool,
    /// Fill --cvss, --epss and --known-exploited for the --cve ids from this feed database when
    /// not given (default: ~/.local/share/lanpatch/feeds.db, if it exists).
    #[arg(long)]
    feeds_db: Option<PathBuf>,
    /// With --deb and no --cve: a collector node's control socket; --cve is filled with the
    /// CVEs the fleet is exposed to (its inventories against the feed database) that these
    /// packages' versions fix.
    #[arg(long, requires = "debs", conflicts_with = "inventories")]
    node: Option<PathBuf>,
    /// As --node, from a file: a JSON array of inventories as `vulns --inventories` reads.
    #[arg(long, requires = "debs")]
    inventories: Option<PathBuf>,
    /// Install at once, ignoring maintenance windows.
    #[arg(long)]
    urgent: bool,
    /// Only nodes with this OS (e.g. linux). Repeatable.
    #[arg(long = "target-os")]
    target_os: Vec<String>,
    /// Only nodes with this architecture (e.g. x86_64). Repeatable.
    #[arg(long = "target-arch")]
    target_arch: Vec<String>,
    /// Only nodes with this tag. Repeatable.
    #[arg(long = "target-tag")]
    target_tags: Vec<Tag>,
    /// Only nodes with this hostname. Repeatable.
    #[arg(long = "target-host")]
    target_hosts: Vec<String>,
    /// HTTP(S) base URL the files can also be fetched from. Repeatable.
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// When the manifest expires.
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Chunk size in bytes (default: 256 KiB, more for very large releases).
    #[arg(long)]
    chunk_size: Option<u32>,
    /// The bundle directory to create (must not exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ApproveArgs {
    /// The secret approve key to sign with.
    #[arg(long)]
    key: PathBuf,
    /// The ring this approval is for.
    #[arg(long)]
    ring: RingName,
    /// Nodes wait until this time (default: now).
    #[arg(long)]
    not_before: Option<String>,
    /// After this time nodes install at once, even outside maintenance windows.
    #[arg(long)]
    deadline: Option<String>,
    /// When the approval expires.
    #[arg(long)]
    expires: Option<String>,
    /// Replace an existing approval for this ring instead of co-signing it.
    #[arg(long)]
    replace: bool,
    /// A collector node's control socket: approving a ring after the first needs the previous
    /// ring's results from it.
    #[arg(long)]
    node: Option<PathBuf>,
    /// The rollout order of rings; each ring is gated on the one before it.
    #[arg(long, value_delimiter = ',', default_value = "canary,pilot,broad")]
    rings: Vec<RingName>,
    /// Successful installs the previous ring needs (and no failures).
    #[arg(long, default_value_t = 1)]
    min_success: usize,
    /// Halt the ring when more than this share of its counted outcomes failed ("5%", "5" or
    /// "0.5%"). Signed into the approval; every node of the ring checks it.
    #[arg(long, default_value = "5%")]
    max_failure_rate: String,
    /// Outcomes (installed or failed) before the failure rate counts; also the reports from the
    /// ring a node must hold before it installs past the first wave.
    #[arg(long, default_value_t = 3)]
    min_reports: u32,
    /// A wave of the ring: PERCENT[:SOAK[:MIN_SUCCESS]], cumulative percent of the ring's nodes,
    /// how long the next wave waits after this one reached MIN_SUCCESS installs (e.g. 2h;
    /// default 0), installs needed (default 1). Repeat; the last must be 100. Default: one wave.
    #[arg(long = "wave")]
    waves: Vec<String>,
    /// Sign no rollout rules: no failure-rate halt, no waves.
    #[arg(long)]
    no_rules: bool,
    /// How many more attempts a node makes after a transient failure (download, full disk,
    /// timeout, interruption); 0: none. A failing install command is not retried: a newer
    /// approval (--replace) tries it again.
    #[arg(long, default_value_t = 3)]
    retries: u8,
    /// How long after a transient failure the next attempt starts.
    #[arg(long, default_value = "10m")]
    retry_spacing: String,
    /// Approve although the previous ring's results are below policy. Needs --reason, which is
    /// recorded in the signed approval.
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why the gate was overridden.
    #[arg(long)]
    reason: Option<String>,
    /// The trust root (default: root.lpr in the current directory, if it exists). With an enroll
    /// role, the gate counts a report only when its author's node certificate enrolls it in the
    /// previous ring. Without any root the collector must run with enrollment = "off".
    #[arg(long)]
    root: Option<PathBuf>,
    bundle: PathBuf,
}

#[derive(Args)]
struct InventoryArgs {
    /// The collector node's control socket.
    #[arg(long)]
    node: PathBuf,
    /// Only nodes with this package installed.
    #[arg(long)]
    package: Option<String>,
    /// With --package: only nodes where its version is lower than this (Debian ordering).
    #[arg(long, requires = "package")]
    below: Option<String>,
    /// Only nodes with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only nodes with this OS id (e.g. debian).
    #[arg(long)]
    os: Option<String>,
    /// Only nodes in this ring.
    #[arg(long)]
    ring: Option<String>,
    /// Print JSON for scripts.
    #[arg(long, conflicts_with = "export")]
    json: bool,
    /// Print the inventories whole (every package), a JSON array as `vulns --inventories` and
    /// `release create --inventories` read, for an offline workstation.
    #[arg(long)]
    export: bool,
}

#[derive(Args)]
struct YankArgs {
    /// The secret approve key to sign with.
    #[arg(long)]
    key: PathBuf,
    /// Also roll back nodes where the release is installed.
    #[arg(long)]
    rollback: bool,
    /// Why the release is withdrawn.
    #[arg(long)]
    reason: Option<String>,
    bundle: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    /// The trust root. Repeat to give a rotation chain, oldest (version 1) first.
    #[arg(long = "root", required = true)]
    roots: Vec<PathBuf>,
    /// Also require a valid approval for this ring.
    #[arg(long)]
    ring: Option<RingName>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    bundle: PathBuf,
}

/// CVSS, EPSS and known-exploited for a new release: the flags where given, else (for its CVEs)
/// the highest CVSS and EPSS the imported feeds give any of them, and KEV membership of any.
/// (CVSS, EPSS, known exploited, the feeds' dates) for a new release's manifest.
type Scores = (Option<f64>, Option<f64>, bool, Vec<FeedDate>);

/// The fleet's inventories: from a collector node, or from a file.
fn load_inventories(
    node: Option<&Path>,
    file: Option<&Path>,
) -> Result<Vec<lanpatch_protocol::control::InventoryView>> {
    match (node, file) {
        (_, Some(file)) => {
            let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a JSON array of inventories", file.display()))
        }
        // A refusal (not a collector: exit 3) is mapped by fleet::request.
        (Some(node), None) => fleet::inventories(node),
        (None, None) => bail!("give --node or --inventories"),
    }
}

/// The CVEs the fleet is exposed to (inventories against the feed database) that the versions
/// of these packages fix: each finding for a package's source whose fixed version the
/// package's source version reaches.
fn cves_fixed_by(debs: &[deb::Deb], a: &CreateArgs) -> Result<Vec<CveId>> {
    let store = feedstore::FeedStore::open(&a.feeds_db.clone().unwrap_or_else(feedstore::default_path))?;
    if !store.feeds()?.iter().any(|f| f.feed == feedstore::Feed::Osv) {
        return Err(exit::exit(exit::Code::NotFound, "no OSV feed imported (lanpatch-signer feeds import --osv ...)"));
    }
    let hosts = load_inventories(a.node.as_deref(), a.inventories.as_deref())?;
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

/// `--retries` and `--retry-spacing` as the approval signs them.
fn retry_rule(count: u8, spacing: &str) -> Result<Option<lanpatch_protocol::Retry>> {
    if count == 0 {
        return Ok(None);
    }
    if count > lanpatch_protocol::approval::MAX_RETRIES {
        bail!("--retries {count}: at most {}", lanpatch_protocol::approval::MAX_RETRIES);
    }
    let d = humantime::parse_duration(spacing).with_context(|| format!("bad --retry-spacing {spacing:?}"))?;
    let spacing_secs = u32::try_from(d.as_secs()).ok().filter(|s| (1..=7 * 86_400).contains(s));
    let Some(spacing_secs) = spacing_secs else { bail!("--retry-spacing {spacing:?}: between 1s and 7d") };
    Ok(Some(lanpatch_protocol::Retry { count, spacing_secs }))
}

fn fill_from_feeds(a: &CreateArgs) -> Result<Scores> {
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

fn feeds_import(db: Option<PathBuf>, osv: Option<PathBuf>, epss: Option<PathBuf>, kev: Option<PathBuf>) -> Result<()> {
    if osv.is_none() && epss.is_none() && kev.is_none() {
        bail!("give at least one of --osv, --epss, --kev");
    }
    // Everything is parsed before anything is written: one bad file imports nothing.
    let osv = osv.map(|p| feeds::parse_osv(&p).map(|f| (p, f))).transpose()?;
    let epss = epss.map(|p| feeds::parse_epss(&p).map(|f| (p, f))).transpose()?;
    let kev = kev.map(|p| feeds::parse_kev(&p).map(|f| (p, f))).transpose()?;
    let path = db.unwrap_or_else(feedstore::default_path);
    let mut store = feedstore::FeedStore::open(&path)?;
    if let Some((p, f)) = &osv {
        store.replace_osv(f, p)?;
        println!(
            "osv: {} records ({} withdrawn, ignored), {} affected ranges, dated {}",
            f.records,
            f.withdrawn,
            f.affected.len(),
            f.date
        );
    }
    if let Some((p, f)) = &epss {
        store.replace_epss(f, p)?;
        println!("epss: {} CVEs, model {}, dated {}", f.rows.len(), f.model_version, f.date);
    }
    if let Some((p, f)) = &kev {
        store.replace_kev(f, p)?;
        println!("kev: {} CVEs, catalogue {}, dated {}", f.entries.len(), f.catalog_version, f.date);
    }
    println!("feed database: {}", path.display());
    Ok(())
}

fn vulns_cmd(a: VulnsArgs, limits: &Limits) -> Result<()> {
    use lanpatch_protocol::control::InventoryView;
    let store = feedstore::FeedStore::open(&a.db.unwrap_or_else(feedstore::default_path))?;
    if !store.feeds()?.iter().any(|f| f.feed == feedstore::Feed::Osv) {
        return Err(exit::exit(exit::Code::NotFound, "no OSV feed imported (lanpatch-signer feeds import --osv ...)"));
    }
    let t0 = std::time::Instant::now();
    let invs: Vec<InventoryView> = load_inventories(a.node.as_deref(), a.inventories.as_deref())?;
    if invs.is_empty() {
        return Err(exit::exit(exit::Code::NotFound, "the collector holds no inventories yet"));
    }
    let hosts: Vec<InventoryView> =
        invs.into_iter().filter(|h| a.host.as_deref().is_none_or(|x| h.hostname == x || h.node == x)).collect();
    let by_package = store.affected_by_package()?;
    let t1 = std::time::Instant::now();
    let mut found = vulns::exposures(&hosts, &by_package);
    let t2 = std::time::Instant::now();
    if let Some(p) = &a.package {
        found.retain(|f| f.package == *p || f.hosts.iter().any(|h| h.installed == *p));
    }
    let mut release = None;
    let mut rollout = None;
    if let Some(b) = &a.fixed_by {
        let m = bundle::load::<ReleaseManifest>(&Bundle::new(b).manifest_path(), limits)?;
        let v = m.value();
        if v.severity.cves.is_empty() {
            bail!("{} lists no CVEs (release create --cve)", b.display());
        }
        let cves: Vec<&str> = v.severity.cves.iter().map(|c| c.as_str()).collect();
        found.retain(|f| cves.contains(&f.cve.as_str()));
        release = Some(format!("{} {}", v.product, v.version));
        if let Some(node) = &a.node {
            let hash = m.payload_hash().to_hex();
            let reports: Vec<_> = fleet::reports(node)?.into_iter().filter(|r| r.manifest == hash).collect();
            rollout = Some(vulns::cve_rollout(&v.severity.cves, &found, &reports.iter().collect::<Vec<_>>()));
        }
    }
    let found = vulns::prioritise(&store, found)?;
    if a.timings {
        let packages: usize = hosts.iter().map(|h| h.packages.len()).sum();
        eprintln!(
            "timings: load {} hosts ({packages} packages) and {} ranges {:.2} s, match {:.2} s, rank {:.2} s",
            hosts.len(),
            by_package.values().map(Vec::len).sum::<usize>(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        );
    }
    if a.json {
        // The findings, each with its CVE's rollout when there is one (`rollout`).
        let mut v = serde_json::to_value(&found)?;
        if let (Some(rollout), Some(items)) = (&rollout, v.as_array_mut()) {
            for item in items {
                let r = rollout.iter().find(|r| item["cve"] == r.cve.as_str());
                if let (Some(r), Some(obj)) = (r, item.as_object_mut()) {
                    obj.insert("rollout".into(), serde_json::to_value(r)?);
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(r) = &release {
        let mut hosts: Vec<&str> = found.iter().flat_map(|f| f.hosts.iter().map(|h| h.hostname.as_str())).collect();
        hosts.sort();
        hosts.dedup();
        println!("release {r} fixes {} exposure(s) on {} host(s): {}", found.len(), hosts.len(), hosts.join(", "));
    }
    report::print_findings(&found);
    if let (Some(r), Some(rollout)) = (&release, &rollout) {
        report::print_rollout(r, rollout);
    }
    Ok(())
}

/// One page for the command and one per subcommand (`lanpatch-signer-release.1`, ...).
fn write_man_pages(cmd: clap::Command, out: &std::path::Path) -> Result<()> {
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

/// `lanpatch-signer ... | head`: when the reader closes stdout, the command ends quietly with exit 0
/// (Rust ignores SIGPIPE, so `println!` would panic with "failed printing to stdout").
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(exit::code_of(&e))
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let limits = Limits::default();
    let key_mode = if cli.allow_insecure_key_mode { keys::KeyMode::AllowInsecure } else { keys::KeyMode::Strict };
    let now = time::now();
    match cli.cmd {
        Cmd::Keygen { out } => {
            let public = keys::generate(&out)?;
            println!(
                "secret key: {} (mode 0600; a root, release, approve or enroll key stays on an offline workstation; the online timestamp key goes to the admin node (`timestamp_key` in node.toml))",
                out.display()
            );
            println!("public key: {} = {}", keys::public_path(&out).display(), public);
        }
        Cmd::Root(RootCmd::Init { roles, out }) => {
            refuse_existing(&out)?;
            let root = Root {
                version: Version(1),
                fleet: None,
                expires: time::parse_time(&roles.expires, now)?,
                roles: role_map(&roles, None)?,
            };
            let signed = Signed::new(root);
            check_payload(signed.value(), &limits)?;
            bundle::save(&out, &signed)?;
            println!("wrote trust root version 1 to {} (unsigned)", out.display());
            println!("fleet id: {}", fleet_id(signed.value(), &signed.envelope().payload));
            println!("next: lanpatch-signer root sign --key <root key> {}", out.display());
        }
        Cmd::Root(RootCmd::Sign { key, file }) => {
            let sk = keys::load_secret(&key, key_mode)?;
            let mut root = bundle::load::<Root>(&file, &limits)?;
            let public = PublicKey(sk.verifying_key().to_bytes());
            root.sign(&sk);
            bundle::save(&file, &root)?;
            let rk = root.value().keys(Role::Root);
            let count = root.envelope().count_signatures(&rk);
            println!(
                "signed {} with {}; {} of {} required root signatures by this root's own keys",
                file.display(),
                public.short(),
                count.valid,
                rk.threshold
            );
            if !rk.keys.contains(&public) {
                println!(
                    "note: {} is not a root key of this version (fine for the old keys of a rotation)",
                    public.short()
                );
            }
        }
        Cmd::Root(RootCmd::Rotate { current, roles, out }) => {
            refuse_existing(&out)?;
            let cur = bundle::load::<Root>(&current, &limits)?;
            let c = cur.value();
            let next = Root {
                version: Version(c.version.0 + 1),
                fleet: Some(fleet_id(c, &cur.envelope().payload)),
                expires: time::parse_time(&roles.expires, now)?,
                roles: role_map(&roles, Some(c))?,
            };
            let signed = Signed::new(next);
            check_payload(signed.value(), &limits)?;
            bundle::save(&out, &signed)?;
            println!("wrote trust root version {} to {} (unsigned)", signed.value().version, out.display());
            println!(
                "it must be signed by {} of the current root keys and {} of its own",
                c.keys(Role::Root).threshold,
                signed.value().keys(Role::Root).threshold
            );
        }
        Cmd::Root(RootCmd::Show { file, json }) => {
            let root = bundle::load::<Root>(&file, &limits)?;
            if json {
                print_json(&root_json(&root))?;
            } else {
                print_root(&root);
            }
        }
        Cmd::Release(ReleaseCmd::Create(args)) => create_release(*args, &limits, now)?,
        Cmd::Release(ReleaseCmd::Sign { key, bundle, root }) => {
            let sk = keys::load_secret(&key, key_mode)?;
            let b = Bundle::new(&bundle);
            let mut m = bundle::load::<ReleaseManifest>(&b.manifest_path(), &limits)?;
            // A key outside the release role would add a signature no node counts.
            let root_path = root.unwrap_or_else(|| PathBuf::from("root.lpr"));
            match bundle::load::<Root>(&root_path, &limits) {
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
        }
        Cmd::Release(ReleaseCmd::Show { bundle, json }) => show_release(&Bundle::new(&bundle), &limits, json)?,
        Cmd::Approve(args) => approve(args, &limits, now, key_mode)?,
        Cmd::Yank(args) => yank(args, &limits, now, key_mode)?,
        Cmd::Status { node, bundle, json } => fleet::status(&node, bundle.as_deref(), &limits, json)?,
        Cmd::Inventory(a) => fleet::inventory(
            &a.node,
            a.package.as_deref(),
            a.below.as_deref(),
            a.tag.as_deref(),
            a.os.as_deref(),
            a.ring.as_deref(),
            match (a.json, a.export) {
                (_, true) => fleet::InventoryOutput::Export,
                (true, false) => fleet::InventoryOutput::Json,
                (false, false) => fleet::InventoryOutput::Text,
            },
        )?,
        Cmd::Publish { node, metadata: Some(file), .. } => revoke::publish_metadata(&node, &file, &limits)?,
        Cmd::Publish { node, metadata_only, bundle: Some(bundle), metadata: None } => {
            publish(&node, &bundle, metadata_only)?
        }
        Cmd::Publish { bundle: None, metadata: None, .. } => bail!("give a bundle directory or --metadata FILE"),
        Cmd::Enroll(cmd) => enroll::run(cmd, &limits, now, key_mode)?,
        Cmd::Revoke(args) => revoke::run(args, &limits, now, key_mode)?,
        Cmd::Feeds(FeedsCmd::Import { db, osv, epss, kev }) => feeds_import(db, osv, epss, kev)?,
        Cmd::Feeds(FeedsCmd::Show { db, json }) => {
            let store = feedstore::FeedStore::open(&db.unwrap_or_else(feedstore::default_path))?;
            let list = store.feeds()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no feeds imported yet (lanpatch-signer feeds import)");
            }
            if !json {
                for f in &list {
                    println!(
                        "{}: dated {}, {} rows, from {} (imported at {})",
                        f.feed.as_str(),
                        f.date,
                        f.rows,
                        f.source,
                        time::show(lanpatch_protocol::Timestamp(f.imported_at))
                    );
                }
            }
        }
        Cmd::Vulns(a) => vulns_cmd(a, &limits)?,
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lanpatch-signer", &mut std::io::stdout());
        }
        Cmd::Man { out } => write_man_pages(<Cli as clap::CommandFactory>::command(), &out)?,
        Cmd::Verify(args) => {
            let ok = verify::verify_bundle(
                &args.roots,
                &Bundle::new(&args.bundle),
                args.ring.as_ref(),
                &limits,
                now,
                args.json,
            )?;
            return Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) });
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        bail!("{} already exists; refusing to overwrite it", path.display());
    }
    Ok(())
}

fn check_payload<T: lanpatch_protocol::Payload>(value: &T, limits: &Limits) -> Result<()> {
    value.validate(limits).map_err(|e| anyhow::anyhow!("{} is not valid: {e}", T::NAME))
}

/// Builds the role map from flags; roles without keys on the command line are taken from `base`.
fn role_map(flags: &RoleFlags, base: Option<&Root>) -> Result<BTreeMap<Role, RoleKeys>> {
    let specs = [
        (Role::Root, &flags.root_keys, flags.root_threshold),
        (Role::Release, &flags.release_keys, flags.release_threshold),
        (Role::Approve, &flags.approve_keys, flags.approve_threshold),
        (Role::Timestamp, &flags.timestamp_keys, flags.timestamp_threshold),
        (Role::Enroll, &flags.enroll_keys, flags.enroll_threshold),
    ];
    let mut map = BTreeMap::new();
    for (role, keys, threshold) in specs {
        // The timestamp and enroll roles are optional: kept from the base root, or absent.
        let optional = matches!(role, Role::Timestamp | Role::Enroll);
        if optional && keys.is_empty() && base.is_none_or(|b| !b.roles.contains_key(&role)) {
            if threshold.is_some() {
                bail!("--{role}-threshold needs --{role}-key (repeatable)");
            }
            match role {
                Role::Timestamp => eprintln!(
                    "note: no --timestamp-key: nodes cannot detect a freeze (withheld updates); see docs/THREAT-MODEL.md"
                ),
                _ => eprintln!(
                    "note: no --enroll-key: nodes refuse to start unless node.toml sets enrollment = \"off\"; see docs/OPERATIONS.md"
                ),
            }
            continue;
        }
        let rk = if keys.is_empty() {
            let Some(base) = base else {
                bail!("no {role} keys given: use --{role}-key (repeatable) and --{role}-threshold");
            };
            let mut rk = base.keys(role);
            if let Some(t) = threshold {
                rk.threshold = t;
            }
            rk
        } else {
            let keys = keys.iter().map(|k| keys::parse_public(k)).collect::<Result<Vec<_>>>()?;
            let threshold = threshold.unwrap_or(1);
            RoleKeys { keys, threshold }
        };
        map.insert(role, rk);
    }
    Ok(map)
}

fn parse_command(what: &str, s: &str, timeout_secs: u32) -> Result<Command> {
    let argv = shlex::split(s).with_context(|| format!("{what} command {s:?} has unbalanced quotes"))?;
    if argv.is_empty() {
        bail!("{what} command is empty");
    }
    Ok(Command { argv, timeout_secs })
}

/// Interpreters whose first argument that is not an option is the script they run.
const INTERPRETERS: &[&str] = &["sh", "bash", "dash", "python3", "python", "perl"];

/// The file of the release a command runs (`./install.sh`, or `sh install.sh`), if it names
/// one: relative to the staging directory, where the node runs it.
fn script_of(argv: &[String]) -> Option<&str> {
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
fn check_command_files(what: &str, cmd: &Command, names: &[String]) -> Result<()> {
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

/// Builds the bundle in a temporary directory beside `--out` and renames it into place at the
/// end, so a refused flag or a failure half-way leaves nothing behind.
fn create_release(a: CreateArgs, limits: &Limits, now: lanpatch_protocol::Timestamp) -> Result<()> {
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

fn build_release(mut a: CreateArgs, tmp: &Path, limits: &Limits, now: lanpatch_protocol::Timestamp) -> Result<()> {
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

fn approve(a: ApproveArgs, limits: &Limits, now: lanpatch_protocol::Timestamp, key_mode: keys::KeyMode) -> Result<()> {
    let sk = keys::load_secret(&a.key, key_mode)?;
    let b = Bundle::new(&a.bundle);
    let m = bundle::load::<ReleaseManifest>(&b.manifest_path(), limits)?;
    if m.value().expires <= now {
        bail!(
            "the release manifest expired at {}: nodes will not install it; make a new release",
            time::show(m.value().expires)
        );
    }
    let path = b.approval_path(&a.ring);
    let timing_given = a.not_before.is_some() || a.deadline.is_some() || a.expires.is_some();
    let mut approval = if path.exists() && !a.replace {
        if timing_given {
            bail!(
                "an approval for ring {} already exists in {}; run without --not-before/--deadline/--expires to co-sign it, or add --replace",
                a.ring,
                path.display()
            );
        }
        let existing = bundle::load::<Approval>(&path, limits)?;
        if existing.value().manifest != m.payload_hash() {
            bail!("{} approves a different manifest; use --replace", path.display());
        }
        existing
    } else {
        let not_before = match &a.not_before {
            Some(t) => time::parse_time(t, now)?,
            None => now,
        };
        let deadline = a.deadline.as_deref().map(|t| time::parse_time(t, now)).transpose()?;
        let expires = match &a.expires {
            Some(t) => time::parse_time(t, now)?,
            None => m.value().expires,
        };
        if expires <= now {
            bail!("--expires {} is in the past", time::show(expires));
        }
        if not_before >= expires || not_before >= m.value().expires {
            bail!(
                "--not-before {} lies at or after the expiry of the approval ({}) or of the release ({}): nodes could never install it",
                time::show(not_before),
                time::show(expires),
                time::show(m.value().expires)
            );
        }
        if let Some(d) = deadline
            && d > expires
        {
            bail!("--deadline {} lies after the approval's expiry {}", time::show(d), time::show(expires));
        }
        let gate = fleet::Gate {
            ring: &a.ring,
            order: &a.rings,
            node: a.node.as_deref(),
            manifest: &m.payload_hash(),
            min_success: a.min_success,
            root: a.root.as_deref(),
            limits,
            now,
        };
        let forced_reason = fleet::ring_gate(&gate, a.force, a.reason.as_deref())?;
        // A replacement must be strictly newer than the approval it replaces (nodes keep the
        // latest by issue time, in seconds), even when made within the same second.
        let issued = match bundle::load::<Approval>(&path, limits) {
            Ok(old) if path.exists() => now.max(old.value().issued.plus_secs(1)),
            _ => now,
        };
        let rules = if a.no_rules { None } else { Some(rollout_rules(&a.max_failure_rate, a.min_reports, &a.waves)?) };
        let value = Approval {
            manifest: m.payload_hash(),
            product: m.value().product.clone(),
            version: m.value().version,
            ring: a.ring.clone(),
            issued,
            not_before,
            deadline,
            expires,
            forced_reason,
            rules,
            retry: retry_rule(a.retries, &a.retry_spacing)?,
        };
        check_payload(&value, limits)?;
        Signed::new(value)
    };
    approval.sign(&sk);
    bundle::save(&path, &approval)?;
    if let Some(r) = &approval.value().rules {
        println!("rollout rules: {}", r.describe());
    }
    println!(
        "approved {} {} for ring {} (not before {}{}); {} signature(s)",
        m.value().product,
        m.value().version,
        a.ring,
        time::show(approval.value().not_before),
        approval.value().deadline.map(|d| format!(", deadline {}", time::show(d))).unwrap_or_default(),
        approval.envelope().signatures.len()
    );
    Ok(())
}

fn yank(a: YankArgs, limits: &Limits, now: lanpatch_protocol::Timestamp, key_mode: keys::KeyMode) -> Result<()> {
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
        "yanked {} {} ({:?}); {} signature(s)",
        m.value().product,
        m.value().version,
        y.value().action,
        y.envelope().signatures.len()
    );
    Ok(())
}

fn print_root(root: &Signed<Root>) {
    let r = root.value();
    println!("trust root version {}, expires {}", r.version, time::show(r.expires));
    println!("fleet id: {}", fleet_id(r, &root.envelope().payload));
    for (role, rk) in &r.roles {
        println!("  {role}: {} of {} keys", rk.threshold, rk.keys.len());
        for k in &rk.keys {
            println!("    {k}");
        }
    }
    println!("signatures: {}", root.envelope().signatures.iter().map(|s| s.key.short()).collect::<Vec<_>>().join(", "));
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn root_json(root: &Signed<Root>) -> serde_json::Value {
    let r = root.value();
    serde_json::json!({
        "version": r.version,
        "expires": r.expires.0,
        "fleet_id": fleet_id(r, &root.envelope().payload).to_hex(),
        "roles": r.roles.iter().map(|(role, rk)| (role.to_string(), serde_json::json!({
            "threshold": rk.threshold,
            "keys": rk.keys.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
        "signatures": root.envelope().signatures.iter().map(|s| s.key.to_hex()).collect::<Vec<_>>(),
    })
}

fn release_json(signed: &Signed<ReleaseManifest>) -> serde_json::Value {
    let m = signed.value();
    let s = &m.severity;
    let cmd = |c: &Command| serde_json::json!({ "argv": c.argv, "timeout_secs": c.timeout_secs });
    serde_json::json!({
        "manifest": signed.payload_hash().to_hex(),
        "product": m.product.to_string(),
        "version": m.version.0,
        "label": m.label,
        "description": m.description,
        "created": m.created.0,
        "expires": m.expires.0,
        "severity": {
            "level": format!("{:?}", s.level).to_lowercase(),
            "cves": s.cves.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "cvss": s.cvss_tenths.map(|c| f64::from(c) / 10.0),
            "epss": s.epss_bp.map(|e| f64::from(e) / 10_000.0),
            "known_exploited": s.known_exploited,
            "feed_dates": s.feed_dates.iter().map(|f| serde_json::json!({"feed": f.feed, "date": f.date})).collect::<Vec<_>>(),
        },
        "urgent": m.urgent,
        "installer": match &m.installer {
            Installer::Commands { install, rollback, detect } => serde_json::json!({
                "install": cmd(install), "rollback": rollback.as_ref().map(cmd), "detect": detect.as_ref().map(cmd),
            }),
            Installer::Debian(d) => serde_json::json!({
                "debian": {
                    "add_new": d.add_new,
                    "timeout_secs": d.timeout_secs,
                    "packages": d.packages.iter().map(|p| serde_json::json!({
                        "file": p.file.to_string(), "name": p.name, "version": p.version,
                        "architecture": p.architecture, "source": p.source, "source_version": p.source_version,
                        "sha256": p.sha256.to_hex(),
                        "archive": p.archive.as_ref().map(|r| serde_json::json!({
                            "suite": r.suite, "date": r.date, "index": r.index,
                        })),
                    })).collect::<Vec<_>>(),
                },
            }),
        },
        "targets": {
            "os": m.targets.os,
            "arch": m.targets.arch,
            "tags": m.targets.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "hostnames": m.targets.hostnames,
        },
        "origins": m.origins,
        "files": m.files.iter().map(|f| serde_json::json!({
            "path": f.path.to_string(), "size": f.size, "chunks": f.chunks.len(), "hash": f.hash.to_hex(),
            "executable": f.executable,
        })).collect::<Vec<_>>(),
        "signatures": signed.envelope().signatures.iter().map(|s| s.key.to_hex()).collect::<Vec<_>>(),
    })
}

fn show_release(b: &Bundle, limits: &Limits, json: bool) -> Result<()> {
    let signed = bundle::load::<ReleaseManifest>(&b.manifest_path(), limits)?;
    if json {
        return print_json(&release_json(&signed));
    }
    let m = signed.value();
    println!("{} version {} {}", m.product, m.version, m.label);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("manifest hash: {}", signed.payload_hash());
    println!("created {}, expires {}", time::show(m.created), time::show(m.expires));
    let s = &m.severity;
    println!(
        "severity: {:?}{}{}{}{}",
        s.level,
        s.cvss_tenths.map(|c| format!(", CVSS {:.1}", f64::from(c) / 10.0)).unwrap_or_default(),
        s.epss_bp.map(|e| format!(", EPSS {:.4}", f64::from(e) / 10_000.0)).unwrap_or_default(),
        if s.known_exploited { ", known exploited" } else { "" },
        if m.urgent { ", URGENT" } else { "" },
    );
    if !s.cves.is_empty() {
        println!("CVEs: {}", s.cves.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" "));
    }
    if !s.feed_dates.is_empty() {
        let d: Vec<String> = s.feed_dates.iter().map(|f| format!("{} {}", f.feed, f.date)).collect();
        println!("scores from the feeds: {}", d.join(", "));
    }
    match &m.installer {
        Installer::Commands { install, rollback, detect } => {
            println!("install: {:?} (timeout {}s)", install.argv, install.timeout_secs);
            if let Some(c) = rollback {
                println!("rollback: {:?}", c.argv);
            }
            if let Some(c) = detect {
                println!("detect: {:?}", c.argv);
            }
        }
        Installer::Debian(d) => {
            let how = if d.add_new { "upgrades and adds" } else { "upgrades only what a host has" };
            println!("Debian packages, installed by the node with dpkg ({how}; timeout {}s):", d.timeout_secs);
            for p in &d.packages {
                println!(
                    "  {} {} {} (source {} {}), sha256 {}",
                    p.name,
                    p.version,
                    p.architecture,
                    p.source,
                    p.source_version,
                    p.sha256.to_hex()
                );
                match &p.archive {
                    Some(r) => println!("    listed by Debian's archive: {} ({}), {}", r.suite, r.date, r.index),
                    None => println!("    not checked against Debian's archive (no --apt-lists)"),
                }
            }
        }
    }
    let t = &m.targets;
    println!(
        "targets: os {:?} arch {:?} tags {:?} hosts {:?}",
        t.os,
        t.arch,
        t.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        t.hostnames
    );
    for o in &m.origins {
        println!("origin: {o}");
    }
    for f in &m.files {
        println!("  {} {} bytes, {} chunk(s), {}", f.path, f.size, f.chunks.len(), f.hash.short());
    }
    println!(
        "signatures: {}",
        signed.envelope().signatures.iter().map(|s| s.key.short()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn publish(socket: &Path, bundle: &Path, metadata_only: bool) -> Result<()> {
    use lanpatch_protocol::control::{ControlRequest, ControlResponse, PublishMode};
    let dir = std::fs::canonicalize(bundle).with_context(|| format!("cannot find bundle {}", bundle.display()))?;
    let req = ControlRequest::Publish {
        bundle: dir.to_string_lossy().into_owned(),
        mode: if metadata_only { PublishMode::MetadataOnly } else { PublishMode::Seed },
    };
    match fleet::request(socket, &req)? {
        ControlResponse::Published { manifest, product, version, approvals, yanked } => {
            println!("published {product} {version} (manifest {manifest})");
            if !approvals.is_empty() {
                println!("approved for: {}", approvals.join(", "));
            }
            if yanked {
                println!("yank published");
            }
            Ok(())
        }
        ControlResponse::Error { message, .. } => bail!("the node refused the bundle: {message}"),
        other => bail!("unexpected response {other:?}"),
    }
}

/// The rollout rules from `approve`'s flags.
fn rollout_rules(
    max_failure_rate: &str,
    min_reports: u32,
    waves: &[String],
) -> Result<lanpatch_protocol::RolloutRules> {
    use lanpatch_protocol::Wave;
    let bad = |what: &str, why: String| exit::exit(exit::Code::BadInput, format!("bad {what}: {why}"));
    let pct: f64 = max_failure_rate
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| bad("--max-failure-rate", format!("{max_failure_rate:?} is not a percentage such as 5%")))?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(bad("--max-failure-rate", format!("{pct} is not between 0 and 100 %")));
    }
    let mut list = Vec::new();
    for w in waves {
        let mut parts = w.split(':');
        let percent: u8 = parts
            .next()
            .unwrap_or("")
            .trim_end_matches('%')
            .parse()
            .map_err(|_| bad("--wave", format!("{w:?}: the percent must be 1 to 100")))?;
        let min_soak_secs = match parts.next() {
            None | Some("") | Some("0") => 0,
            Some(d) => {
                humantime::parse_duration(d).map_err(|e| bad("--wave", format!("{w:?}: soak {d:?}: {e}")))?.as_secs()
            }
        };
        let min_success = match parts.next() {
            None | Some("") => 1,
            Some(n) => n.parse().map_err(|_| bad("--wave", format!("{w:?}: installs {n:?} is not a number")))?,
        };
        if parts.next().is_some() {
            return Err(bad("--wave", format!("{w:?} is not PERCENT[:SOAK[:MIN_SUCCESS]]")));
        }
        list.push(Wave { percent, min_soak_secs, min_success });
    }
    if list.is_empty() {
        list.push(Wave { percent: 100, min_soak_secs: 0, min_success: 1 });
    }
    let rules =
        lanpatch_protocol::RolloutRules { max_failure_bp: (pct * 100.0).round() as u16, min_reports, waves: list };
    rules.validate().map_err(|e| bad("rollout rules", e.to_string()))?;
    Ok(rules)
}
