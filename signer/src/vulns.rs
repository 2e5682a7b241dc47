//! `lanpatch-signer vulns`: which hosts are exposed to which CVEs, most urgent first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use lanpatch_assess::{feedstore, vulns};
use lanpatch_protocol::ReleaseManifest;

use crate::bundle::{self, Bundle};
use crate::ctx::Ctx;
use crate::{exit, fleet, report};

#[derive(Args)]
pub struct VulnsArgs {
    /// The feed database (default ~/.local/share/lanpatch/feeds.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The collector node's control socket (its inventories).
    #[arg(long, required_unless_present = "inventories", conflicts_with = "inventories")]
    pub node: Option<PathBuf>,
    /// Inventories from a file instead: a JSON array as the collector's control socket returns
    /// them (for an offline workstation).
    #[arg(long)]
    pub inventories: Option<PathBuf>,
    /// Only this host (hostname or node id).
    #[arg(long)]
    pub host: Option<String>,
    /// Only this package (source or binary name).
    #[arg(long)]
    pub package: Option<String>,
    /// Only the CVEs this release bundle lists (`release create --cve`): the hosts it would fix.
    /// With --node, also per CVE the hosts the release fixed, the ones still pending, and the
    /// ones where it failed (from the collector's reports).
    #[arg(long)]
    pub fixed_by: Option<PathBuf>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Print how long loading, matching and ranking took (to stderr).
    #[arg(long)]
    pub timings: bool,
}

/// The fleet's inventories: from a collector node, or from a file.
pub fn load_inventories(
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

pub fn run(a: VulnsArgs, ctx: &Ctx) -> Result<()> {
    let limits = &ctx.limits;
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
