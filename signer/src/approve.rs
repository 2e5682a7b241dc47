//! `lanpatch-signer approve`: approve a release for a ring after the ring gate, or co-sign an
//! existing approval.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use lanpatch_protocol::{Approval, ReleaseManifest, RingName, Signed};

use crate::bundle::{self, Bundle, check_payload};
use crate::ctx::Ctx;
use crate::{exit, fleet, keys, time};

#[derive(Args)]
pub struct ApproveArgs {
    /// The secret approve key to sign with.
    #[arg(long)]
    pub key: PathBuf,
    /// The ring this approval is for.
    #[arg(long)]
    pub ring: RingName,
    /// Nodes wait until this time (default: now).
    #[arg(long)]
    pub not_before: Option<String>,
    /// After this time nodes install at once, even outside maintenance windows.
    #[arg(long)]
    pub deadline: Option<String>,
    /// When the approval expires.
    #[arg(long)]
    pub expires: Option<String>,
    /// Replace an existing approval for this ring instead of co-signing it.
    #[arg(long)]
    pub replace: bool,
    /// A collector node's control socket: approving a ring after the first needs the previous
    /// ring's results from it.
    #[arg(long)]
    pub node: Option<PathBuf>,
    /// The rollout order of rings; each ring is gated on the one before it.
    #[arg(long, value_delimiter = ',', default_value = "canary,pilot,broad")]
    pub rings: Vec<RingName>,
    /// Successful installs the previous ring needs (and no failures).
    #[arg(long, default_value_t = 1)]
    pub min_success: usize,
    /// Halt the ring when more than this share of its counted outcomes failed ("5%", "5" or
    /// "0.5%"). Signed into the approval; every node of the ring checks it.
    #[arg(long, default_value = "5%")]
    pub max_failure_rate: String,
    /// Outcomes (installed or failed) before the failure rate counts; also the reports from the
    /// ring a node must hold before it installs past the first wave.
    #[arg(long, default_value_t = 3)]
    pub min_reports: u32,
    /// A wave of the ring: PERCENT[:SOAK[:MIN_SUCCESS]], cumulative percent of the ring's nodes,
    /// how long the next wave waits after this one reached MIN_SUCCESS installs (e.g. 2h;
    /// default 0), installs needed (default 1). Repeat; the last must be 100. Default: one wave.
    #[arg(long = "wave")]
    pub waves: Vec<String>,
    /// Sign no rollout rules: no failure-rate halt, no waves.
    #[arg(long)]
    pub no_rules: bool,
    /// How many more attempts a node makes after a transient failure (download, full disk,
    /// timeout, interruption); 0: none. A failing install command is not retried: a newer
    /// approval (--replace) tries it again.
    #[arg(long, default_value_t = 3)]
    pub retries: u8,
    /// How long after a transient failure the next attempt starts.
    #[arg(long, default_value = "10m")]
    pub retry_spacing: String,
    /// Approve although the previous ring's results are below policy. Needs --reason, which is
    /// recorded in the signed approval.
    #[arg(long, requires = "reason")]
    pub force: bool,
    /// Why the gate was overridden.
    #[arg(long)]
    pub reason: Option<String>,
    /// The trust root (default: root.lpr in the current directory, if it exists). With an enroll
    /// role, the gate counts a report only when its author's node certificate enrolls it in the
    /// previous ring. Without any root the collector must run with enrollment = "off".
    #[arg(long)]
    pub root: Option<PathBuf>,
    pub bundle: PathBuf,
}

pub fn run(a: ApproveArgs, ctx: &Ctx) -> Result<()> {
    let (limits, now, key_mode) = (&ctx.limits, ctx.now, ctx.key_mode);
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
    let item = crate::cosign::Item::Approval(a.ring.clone());
    crate::cosign::print_next(&a.bundle, &item, a.root.as_deref(), a.node.as_deref(), limits);
    Ok(())
}

/// `--retries` and `--retry-spacing` as the approval signs them.
pub fn retry_rule(count: u8, spacing: &str) -> Result<Option<lanpatch_protocol::Retry>> {
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

/// The rollout rules from `approve`'s flags.
pub fn rollout_rules(
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
