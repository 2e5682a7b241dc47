//! Talking to a node's control socket: fleet status, the ring gate, inventory queries.
//!
//! Every decision here reads typed release states (`lanpatch_protocol::ReleaseState`), never the
//! text of a report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Result, bail};
use lanpatch_protocol::control::{ControlRequest, ControlResponse, ErrorKind, InventoryView, ReportView};
use lanpatch_protocol::rollout::{self, RingCounts};
use lanpatch_protocol::{Approval, Hash32, Limits, PublicKey, ReleaseManifest, RingName, RolloutRules};
use serde::Serialize;

use crate::bundle::{self, Bundle};
use crate::exit::{Code, exit};
use lanpatch_protocol::debver;

/// One request, one response, over a node's control socket.
pub fn request(socket: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    let unreachable = |e: std::io::Error| {
        exit(Code::Unreachable, format!("cannot talk to the node at {} (is it running?): {e}", socket.display()))
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut resp = String::new();
    BufReader::new(stream).take(256 * 1024 * 1024).read_line(&mut resp).map_err(unreachable)?;
    let resp: ControlResponse = serde_json::from_str(&resp)
        .map_err(|e| exit(Code::Unreachable, format!("bad response from {}: {e}", socket.display())))?;
    if let ControlResponse::Error { kind, message } = resp {
        let code = match kind {
            ErrorKind::BadRequest => Code::BadInput,
            ErrorKind::NotCollector => Code::NotFound,
            ErrorKind::Refused => Code::Refused,
            ErrorKind::Internal => Code::Unreachable,
        };
        return Err(exit(code, format!("the node refused: {message}")));
    }
    Ok(resp)
}

pub fn reports(socket: &Path) -> Result<Vec<ReportView>> {
    match request(socket, &ControlRequest::Reports)? {
        ControlResponse::Reports(r) => Ok(r),
        other => bail!("unexpected response {other:?}"),
    }
}

/// Every node's latest inventory, from a collector.
pub fn inventories(socket: &Path) -> Result<Vec<InventoryView>> {
    match request(socket, &ControlRequest::Inventories)? {
        ControlResponse::Inventories(v) => Ok(v),
        other => bail!("unexpected response {other:?}"),
    }
}

/// The gate for approving `ring`: the ring before it in `order` must have at least `min_success`
/// installs and no failures. Returns the reason to record when `force` overrides a refusal.
pub fn ring_gate(
    ring: &RingName,
    order: &[RingName],
    node: Option<&Path>,
    manifest: &Hash32,
    min_success: usize,
    force: bool,
    reason: Option<&str>,
) -> Result<Option<String>> {
    let Some(pos) = order.iter().position(|r| r == ring) else {
        if force {
            return Ok(reason.map(str::to_string));
        }
        bail!("ring {ring} is not in the rollout order ({}); give --rings, or --force --reason", join(order));
    };
    if pos == 0 {
        // The first ring is the test ring: nothing before it to wait for.
        return Ok(force.then(|| reason.map(str::to_string)).flatten());
    }
    let prev = &order[pos - 1];
    let verdict = match node {
        None => {
            Err(format!("approving {ring} needs the results of ring {prev}: give --node <collector control socket>"))
        }
        Some(sock) => {
            let all = reports(sock)?;
            let mine: Vec<&ReportView> =
                all.iter().filter(|r| r.manifest == manifest.to_hex() && r.ring == prev.as_str()).collect();
            rollout::gate(&mine, min_success).map_err(|why| why.explain(prev))
        }
    };
    match (verdict, force) {
        (Ok(()), _) => Ok(force.then(|| reason.map(str::to_string)).flatten()),
        (Err(why), true) => {
            eprintln!("warning: overriding the ring gate: {why}");
            Ok(reason.map(str::to_string))
        }
        (Err(why), false) => Err(exit(
            Code::Refused,
            format!("refusing to approve {ring}: {why} (override with --force --reason \"...\")"),
        )),
    }
}

fn join(rings: &[RingName]) -> String {
    rings.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

/// One release's results across the fleet (`status --json`).
#[derive(Serialize)]
pub struct ReleaseSummary<'a> {
    pub manifest: &'a str,
    pub product: &'a str,
    pub version: u64,
    /// Nodes that reported, minus those the release does not target (and, when a bundle is
    /// given, minus those in rings it is not approved for yet).
    pub targeted: usize,
    pub rings: BTreeMap<String, RingCounts>,
    /// Every node's latest report (the highest sequence number the collector has seen).
    pub nodes: Vec<&'a ReportView>,
    /// Each node's rollout wave (1-based) under its ring's approval, when a bundle with rules
    /// was given.
    pub waves: BTreeMap<&'a str, usize>,
}

/// `lanpatch-signer status`.
pub fn status(socket: &Path, bundle: Option<&Path>, limits: &Limits, json: bool) -> Result<()> {
    let filter = match bundle {
        Some(b) => {
            Some(bundle::load::<ReleaseManifest>(&Bundle::new(b).manifest_path(), limits)?.payload_hash().to_hex())
        }
        None => None,
    };
    // With a bundle, its approvals by ring: only nodes in those rings count as targeted, and
    // their rollout rules are shown.
    let approvals: Option<BTreeMap<String, Approval>> = bundle.map(|b| {
        let dir = Bundle::new(b).approvals_dir();
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| bundle::load::<Approval>(&e.path(), limits).ok())
            .map(|a| (a.value().ring.to_string(), a.value().clone()))
            .collect()
    });
    let approved: Option<Vec<String>> = approvals.as_ref().map(|a| a.keys().cloned().collect());
    let all = reports(socket)?;
    let mut by_release: BTreeMap<(&str, u64, &str), Vec<&ReportView>> = BTreeMap::new();
    for r in all.iter().filter(|r| filter.as_ref().is_none_or(|f| *f == r.manifest)) {
        by_release.entry((r.product.as_str(), r.version, r.manifest.as_str())).or_default().push(r);
    }
    if by_release.is_empty() {
        let what = match &filter {
            Some(m) => format!("no node has reported on release {m} (never published, or no node has it yet)"),
            None => "no reports yet".to_string(),
        };
        return Err(exit(Code::NotFound, what));
    }
    let summaries: Vec<ReleaseSummary> = by_release
        .iter()
        .map(|((product, version, manifest), list)| {
            let rings = RingCounts::by_ring(list.iter().copied());
            let waves = approvals
                .as_ref()
                .map(|ap| {
                    list.iter()
                        .filter_map(|r| {
                            let rules = ap.get(&r.ring)?.rules.as_ref()?;
                            let node: PublicKey = r.node.parse().ok()?;
                            let m: Hash32 = manifest.parse().ok()?;
                            Some((r.node.as_str(), rollout::wave_of(&node, &m, &rules.waves) + 1))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ReleaseSummary {
                manifest,
                product,
                version: *version,
                waves,
                targeted: list
                    .iter()
                    .filter(|r| !r.state.is_not_targeted())
                    .filter(|r| approved.as_ref().is_none_or(|rings| rings.contains(&r.ring)))
                    .count(),
                rings,
                nodes: list.clone(),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "releases": summaries }))?);
        return Ok(());
    }
    for s in &summaries {
        let installed: usize = s.rings.values().map(|c| c.installed).sum();
        let short = s.manifest.get(..16).unwrap_or(s.manifest);
        println!("{} {} (manifest {short}): {installed}/{} targeted nodes installed", s.product, s.version, s.targeted);
        for (ring, c) in &s.rings {
            println!(
                "  ring {ring}: installed {}, failed {}, halted {}, in progress {}, skipped {}, rolled back by yank {}",
                c.installed, c.failed, c.halted, c.in_progress, c.skipped, c.rolled_back_by_yank
            );
            if let (Some(a), Some(b)) = (approvals.as_ref().and_then(|ap| ap.get(ring)), bundle)
                && let Some(rules) = &a.rules
            {
                print_rules(s, ring, a, rules, socket, b);
            }
        }
        let failing: Vec<&&ReportView> = s.nodes.iter().filter(|r| r.state.is_failure()).collect();
        if !failing.is_empty() {
            println!("  failing nodes:");
            for r in failing {
                println!(
                    "    {} [{}] {} (exit {}):",
                    r.hostname,
                    r.ring,
                    r.state,
                    r.exit_code.map(|c| c.to_string()).unwrap_or("-".into())
                );
                for l in r.detail.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev() {
                    println!("      | {l}");
                }
            }
        }
        for r in s.nodes.iter().filter(|r| !r.state.is_failure() && !r.state.is_installed()) {
            let wave = s.waves.get(r.node.as_str()).map(|w| format!(" wave {w}")).unwrap_or_default();
            println!("  {} [{}{wave}]: {}", r.hostname, r.ring, r.state);
        }
    }
    Ok(())
}

/// A ring's rollout rules against its reports: the failure rate and the threshold, the waves,
/// and the commands that resume (a new approval counts afresh) or yank.
fn print_rules(s: &ReleaseSummary, ring: &str, a: &Approval, rules: &RolloutRules, socket: &Path, bundle: &Path) {
    let reports: Vec<rollout::RingReport> =
        s.nodes.iter().filter(|r| r.ring == ring).filter_map(|r| rollout::RingReport::from_view(r)).collect();
    let f = rollout::failure_figures(rules, a.issued, &reports);
    println!("    rules: {}", rules.describe());
    let mut per_wave = vec![(0usize, 0usize); rules.waves.len()];
    for r in s.nodes.iter().filter(|r| r.ring == ring) {
        if let Some(w) = s.waves.get(r.node.as_str()) {
            let e = &mut per_wave[w - 1];
            e.0 += 1;
            e.1 += usize::from(r.state.is_installed());
        }
    }
    let waves: Vec<String> =
        per_wave.iter().enumerate().map(|(i, (n, ok))| format!("wave {}: {ok}/{n} installed", i + 1)).collect();
    println!("    {}", waves.join(", "));
    let verdict = if f.halts() { "HALTED" } else { "below the threshold" };
    println!("    failure rate: {} ({verdict})", f.explain());
    if f.halts() {
        let b = bundle.display();
        println!(
            "    resume (fix first; a new approval counts outcomes afresh): lanpatch-signer approve --key <approve key> --ring {ring} --replace {b} && lanpatch-signer publish --node {} {b}",
            socket.display()
        );
        println!(
            "    or yank: lanpatch-signer yank --key <approve key> --reason \"...\" [--rollback] {b} && lanpatch-signer publish --node {} {b}",
            socket.display()
        );
    }
}

/// `lanpatch-signer inventory`.
pub fn inventory(
    socket: &Path,
    package: Option<&str>,
    below: Option<&str>,
    tag: Option<&str>,
    os: Option<&str>,
    ring: Option<&str>,
    json: bool,
) -> Result<()> {
    let invs = inventories(socket)?;
    if invs.is_empty() {
        return Err(exit(Code::NotFound, "the collector holds no inventories yet"));
    }
    let mut shown: Vec<(&InventoryView, Option<&str>)> = Vec::new();
    for inv in &invs {
        if tag.is_some_and(|t| !inv.tags.iter().any(|x| x == t))
            || os.is_some_and(|o| inv.os != o)
            || ring.is_some_and(|r| inv.ring != r)
        {
            continue;
        }
        let pkg_version = package.and_then(|p| inv.packages.iter().find(|k| k.name == p).map(|k| k.version.as_str()));
        if package.is_some() {
            let Some(v) = pkg_version else { continue };
            if below.is_some_and(|b| debver::compare(v, b) != std::cmp::Ordering::Less) {
                continue;
            }
        }
        shown.push((inv, pkg_version));
    }
    if json {
        let nodes: Vec<serde_json::Value> = shown
            .iter()
            .map(|(inv, v)| {
                serde_json::json!({
                    "node": inv.node, "hostname": inv.hostname, "ring": inv.ring, "os": inv.os,
                    "os_version": inv.os_version, "kernel": inv.kernel, "arch": inv.arch, "tags": inv.tags,
                    "packages": inv.packages.len(), "releases": inv.releases, "at": inv.at, "seq": inv.seq,
                    "package": package.map(|p| serde_json::json!({ "name": p, "version": v })),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes, "total": invs.len() }))?);
        return Ok(());
    }
    for (inv, v) in &shown {
        match (package, v) {
            (Some(p), Some(v)) => println!("{} [{}] {} {}: {p} {v}", inv.hostname, inv.ring, inv.os, inv.os_version),
            _ => println!(
                "{} [{}] {} {} kernel {} {} tags [{}]: {} packages; lanpatch releases: {}",
                inv.hostname,
                inv.ring,
                inv.os,
                inv.os_version,
                inv.kernel,
                inv.arch,
                inv.tags.join(","),
                inv.packages.len(),
                if inv.releases.is_empty() { "none".to_string() } else { inv.releases.join(", ") }
            ),
        }
    }
    println!("{} of {} node(s)", shown.len(), invs.len());
    Ok(())
}
