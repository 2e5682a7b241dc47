//! Talking to a node's control socket: fleet status, the ring gate, inventory queries.
//!
//! Every decision here reads typed release states (`lanpatch_protocol::ReleaseState`), never the
//! text of a report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Result, bail};
use lanpatch_protocol::control::{ControlRequest, ControlResponse, ErrorKind, InventoryView, Membership, ReportView};
use lanpatch_protocol::report::{MemberCheck, check_author, verify_node_envelope};
use lanpatch_protocol::rollout::{self, RingCounts};
use lanpatch_protocol::{
    Approval, Envelope, Hash32, Limits, PublicKey, RefusalReason, ReleaseManifest, Report, RingName, Role,
    RolloutRules, Root, Signed, Timestamp, fleet_id,
};
use serde::Serialize;

use crate::bundle::{self, Bundle};
use crate::exit::{Code, exit};
use lanpatch_protocol::debver;

/// One request, one response, over a node's control socket; the node's `Error` comes back as a
/// response, not as an error.
pub fn request_any(socket: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    let unreachable = |e: std::io::Error| {
        exit(Code::Unreachable, format!("cannot talk to the node at {} (is it running?): {e}", socket.display()))
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(unreachable)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut resp = String::new();
    BufReader::new(stream).take(256 * 1024 * 1024).read_line(&mut resp).map_err(unreachable)?;
    serde_json::from_str(&resp)
        .map_err(|e| exit(Code::Unreachable, format!("bad response from {}: {e}", socket.display())))
}

/// One request, one response, over a node's control socket. The node's `Error` becomes an error
/// with the exit code its kind maps to.
pub fn request(socket: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    error_as_exit(request_any(socket, req)?)
}

fn error_as_exit(resp: ControlResponse) -> Result<ControlResponse> {
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

/// What the gate for approving `ring` looks at.
pub struct Gate<'a> {
    pub ring: &'a RingName,
    /// The rollout order; each ring is gated on the one before it.
    pub order: &'a [RingName],
    /// The collector's control socket.
    pub node: Option<&'a Path>,
    pub manifest: &'a Hash32,
    /// Installs the previous ring needs (and no failures).
    pub min_success: usize,
    /// The trust root: when it has an enroll role, a report counts only if its author's
    /// certificate makes it a member of the previous ring now.
    pub root: Option<&'a Path>,
    pub limits: &'a Limits,
    pub now: Timestamp,
}

/// The gate for approving `ring`: the ring before it in `order` must have at least `min_success`
/// installs and no failures. Returns the reason to record when `force` overrides a refusal.
pub fn ring_gate(g: &Gate<'_>, force: bool, reason: Option<&str>) -> Result<Option<String>> {
    let (ring, order) = (g.ring, g.order);
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
    let verdict = match g.node {
        None => {
            Err(format!("approving {ring} needs the results of ring {prev}: give --node <collector control socket>"))
        }
        Some(sock) => {
            let (mine, uncounted) = previous_ring(g, sock, prev)?;
            let note = uncounted_note(prev, &uncounted);
            let refs: Vec<&ReportView> = mine.iter().collect();
            match rollout::gate(&refs, g.min_success) {
                Ok(()) => {
                    if let Some(n) = &note {
                        eprintln!("note: {n}");
                    }
                    Ok(())
                }
                Err(why) => Err(match note {
                    Some(n) => format!("{}; {n}", why.explain(prev)),
                    None => why.explain(prev),
                }),
            }
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

/// Where `approve` looks for the trust root without `--root`.
pub const DEFAULT_ROOT: &str = "root.lpr";

/// The previous ring's reports on the release that count, and how many did not, by reason.
/// With a trust root that has an enroll role, a report counts only when its signed envelope
/// carries a certificate enrolling its author in `prev` now. Without `--root` the root is
/// [`DEFAULT_ROOT`] if it exists; with none at all the collector must run without enrollment (else
/// the gate would count reports from nodes nobody enrolled). A root with no enroll role (fleets
/// run with `enrollment = "off"`) counts every report, as before.
fn previous_ring(
    g: &Gate<'_>,
    sock: &Path,
    prev: &RingName,
) -> Result<(Vec<ReportView>, BTreeMap<RefusalReason, usize>)> {
    let root_path = g.root.or_else(|| Some(Path::new(DEFAULT_ROOT)).filter(|p| p.exists()));
    let root = match root_path {
        Some(p) => Some(bundle::load::<Root>(p, g.limits)?),
        None => {
            require_no_enrollment(sock)?;
            None
        }
    };
    let all = reports(sock)?;
    let mine = all.into_iter().filter(|r| r.manifest == g.manifest.to_hex() && r.ring == prev.as_str());
    let Some(root) = root.filter(|r| r.value().roles.contains_key(&Role::Enroll)) else {
        // A root without an enroll role (a fleet not enrolled yet, or a stale root.lpr here):
        // only right if the collector does not check membership either.
        require_no_enrollment(sock)?;
        return Ok((mine.collect(), BTreeMap::new()));
    };
    let fleet = fleet_id(root.value(), &root.envelope().payload);
    let check = MemberCheck { root: root.value(), fleet: &fleet, revoked: None, now: g.now };
    Ok(count_members(mine, prev, &check, g.limits))
}

/// Splits the previous ring's reports into those whose author is a member of ring `prev` (the
/// report's signed envelope verifies as its node's, and `check_author` accepts the certificate it
/// carries: steps N1 to N4, C1 to C6) and the count of the others, by reason. What counts is the
/// signed report, not the collector's summary of it.
pub fn count_members(
    views: impl IntoIterator<Item = ReportView>,
    prev: &RingName,
    check: &MemberCheck<'_>,
    limits: &Limits,
) -> (Vec<ReportView>, BTreeMap<RefusalReason, usize>) {
    let mut counted: BTreeMap<String, Signed<Report>> = BTreeMap::new();
    let mut uncounted: BTreeMap<RefusalReason, usize> = BTreeMap::new();
    for v in views {
        match member_report(&v, prev, check, limits) {
            // One report per node, its latest: a collector that lists one node's report twice
            // does not count it twice.
            Ok(signed) => {
                let node = signed.value().node.to_hex();
                let keep = counted.get(&node).is_none_or(|old| signed.value().seq > old.value().seq);
                if keep {
                    counted.insert(node, signed);
                }
            }
            Err(why) => *uncounted.entry(why).or_default() += 1,
        }
    }
    (counted.values().map(ReportView::of).collect(), uncounted)
}

/// The signed report behind `view`, when its author is a member of ring `prev`.
fn member_report(
    view: &ReportView,
    prev: &RingName,
    check: &MemberCheck<'_>,
    limits: &Limits,
) -> Result<Signed<Report>, RefusalReason> {
    // A collector that sends no signed report (an older version) gives nothing to check.
    let hex_text = view.envelope.as_deref().ok_or(RefusalReason::NoCertificate)?;
    let bytes = hex::decode(hex_text).map_err(|_| RefusalReason::Malformed)?;
    let envelope = Envelope::decode(&bytes, limits).map_err(|_| RefusalReason::Malformed)?;
    let signed = verify_node_envelope::<Report>(envelope, limits).map_err(|_| RefusalReason::Malformed)?;
    let report = signed.value();
    // The summary must say what the node signed.
    if report.node.to_hex() != view.node
        || report.ring.as_str() != view.ring
        || report.manifest.to_hex() != view.manifest
    {
        return Err(RefusalReason::Malformed);
    }
    // Expiry as the node checks a stored report at use: the certificate was valid when the
    // report was made (a renewed node's earlier reports still count); never later than now.
    let at_made = MemberCheck { now: report.at.min(check.now), ..*check };
    let cert = check_author(report, &at_made, limits).map_err(|e| e.reason())?;
    if cert.ring != *prev {
        return Err(RefusalReason::WrongRing);
    }
    Ok(signed)
}

/// "3 report(s) from ring canary not counted: no_certificate 2, expired 1", or nothing.
fn uncounted_note(prev: &RingName, uncounted: &BTreeMap<RefusalReason, usize>) -> Option<String> {
    let total: usize = uncounted.values().sum();
    if total == 0 {
        return None;
    }
    let why: Vec<String> = uncounted.iter().map(|(r, n)| format!("{} {n}", r.as_str())).collect();
    Some(format!(
        "{total} report(s) from ring {prev} not counted (not from a node enrolled in {prev}): {}",
        why.join(", ")
    ))
}

/// Refuses (bad input) when the collector checks membership but the gate was given no root to
/// check it with.
fn require_no_enrollment(sock: &Path) -> Result<()> {
    let ControlResponse::Status(status) = request(sock, &ControlRequest::Status)? else {
        bail!("unexpected response to a status request from {}", sock.display());
    };
    if matches!(status.membership, Membership::Enrolled { .. }) {
        return Err(exit(
            Code::BadInput,
            "the collector runs with enrollment: give --root <trust root file> so the gate counts only reports \
             from nodes enrolled in the ring",
        ));
    }
    Ok(())
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
/// The rollout order and gate policy `status` prints resume commands for.
pub struct Order<'a> {
    pub rings: &'a [RingName],
    pub min_success: usize,
}

pub fn status(socket: &Path, bundle: Option<&Path>, order: &Order<'_>, limits: &Limits, json: bool) -> Result<()> {
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
            println!("  ring {ring}: {}", c.describe());
            if let (Some(a), Some(b)) = (approvals.as_ref().and_then(|ap| ap.get(ring)), bundle)
                && let Some(rules) = &a.rules
            {
                // The approve threshold from ./root.lpr when there is one, for one line per key.
                let threshold = crate::cosign::load_root(None, limits)
                    .map(|(_, r)| r.value().keys(Role::Approve).threshold)
                    .unwrap_or(1);
                print_rules(s, ring, a, rules, (socket, b), order, threshold);
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
                if let Some(step) = r.state.next_step() {
                    println!("      next: {step}");
                }
            }
        }
        // Everyone else but the installed and the nodes the release does not target, each with
        // what the admin does about it, if anything.
        let others =
            s.nodes.iter().filter(|r| !r.state.is_failure() && !r.state.is_installed() && !r.state.is_not_targeted());
        // Grouped by state, so a halted ring of 200 nodes is one line and one next step.
        let mut by_state: BTreeMap<String, (Vec<String>, Option<&str>)> = BTreeMap::new();
        for r in others {
            let wave = s.waves.get(r.node.as_str()).map(|w| format!(" wave {w}")).unwrap_or_default();
            let e = by_state.entry(r.state.label()).or_insert_with(|| (Vec::new(), r.state.next_step()));
            e.0.push(format!("{} [{}{wave}]", r.hostname, r.ring));
        }
        for (state, (mut hosts, step)) in by_state {
            hosts.sort();
            println!("  {state}: {}", hosts.join(", "));
            if let Some(step) = step {
                println!("    next: {step}");
            }
        }
    }
    Ok(())
}

/// A ring's rollout rules against its reports: the failure rate and the threshold, the waves,
/// and the commands that resume (a new approval counts afresh) or yank.
fn print_rules(
    s: &ReleaseSummary,
    ring: &str,
    a: &Approval,
    rules: &RolloutRules,
    (socket, bundle): (&Path, &Path),
    order: &Order<'_>,
    approve_threshold: u32,
) {
    let (order, min_success) = (order.rings, order.min_success);
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
        let (b, node) = (bundle.display().to_string(), socket.display().to_string());
        let next = lanpatch_protocol::commands::Next { bundle: &b, node: &node, approve_threshold };
        println!("    resume (fix first; a new approval counts outcomes afresh):");
        if let Ok(r) = ring.parse::<RingName>() {
            let how = lanpatch_protocol::commands::Approve::Replace { order, min_success };
            for l in lanpatch_protocol::commands::approve(&next, &r, how) {
                println!("      {l}");
            }
        }
        println!("    or yank (add --rollback to its first line to roll it back where it is installed):");
        for l in lanpatch_protocol::commands::yank(&next, false) {
            println!("      {l}");
        }
    }
}

/// `lanpatch-signer inventory`.
/// How `lanpatch-signer inventory` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryOutput {
    Text,
    /// A summary per node, for scripts.
    Json,
    /// Every inventory whole (packages included), a JSON array as `vulns --inventories` and
    /// `release create --inventories` read: for an offline workstation.
    Export,
}

pub fn inventory(
    socket: &Path,
    package: Option<&str>,
    below: Option<&str>,
    tag: Option<&str>,
    os: Option<&str>,
    ring: Option<&str>,
    output: InventoryOutput,
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
            if below.is_some_and(|b| debver::compare(v, b) != Some(std::cmp::Ordering::Less)) {
                continue;
            }
        }
        shown.push((inv, pkg_version));
    }
    if output == InventoryOutput::Export {
        let all: Vec<&InventoryView> = shown.iter().map(|(inv, _)| *inv).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if output == InventoryOutput::Json {
        let nodes: Vec<serde_json::Value> = shown
            .iter()
            .map(|(inv, v)| {
                serde_json::json!({
                    "node": inv.node, "hostname": inv.hostname, "ring": inv.ring, "os": inv.os,
                    "os_version": inv.os_version, "kernel": inv.kernel, "arch": inv.arch, "tags": inv.tags,
                    "packages": inv.packages.len(), "releases": inv.releases, "at": inv.at, "seq": inv.seq,
                    "reboot_required": inv.reboot_required,
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
        if let Some(pkgs) = &inv.reboot_required {
            let why = if pkgs.is_empty() { String::new() } else { format!(" (for {})", pkgs.join(", ")) };
            println!("  {}: reboot required{why}", inv.hostname);
        }
    }
    println!("{} of {} node(s)", shown.len(), invs.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enroll::tests::{key, public, root};
    use ed25519_dalek::SigningKey;
    use lanpatch_protocol::{FailReason, NodeCertificate, ReleaseState, Signed, Version};

    const FLEET: Hash32 = Hash32([7; 32]);
    const MANIFEST: Hash32 = Hash32([9; 32]);

    fn cert(node: &SigningKey, ring: &str, expires: u64, by: &SigningKey) -> Envelope {
        let mut s = Signed::new(NodeCertificate {
            fleet: FLEET,
            node: public(node),
            hostname: "h".into(),
            ring: ring.parse().unwrap(),
            site: "default".parse().unwrap(),
            tags: vec![],
            issued: Timestamp(1),
            expires: Timestamp(expires),
        });
        s.sign(by);
        s.into_envelope()
    }

    /// The collector's view of a report `node` signed, claiming `ring`, in `state`.
    fn view(node: &SigningKey, ring: &str, state: ReleaseState, certificate: Option<Envelope>) -> ReportView {
        let report = Report {
            node: public(node),
            hostname: "h".into(),
            ring: ring.parse().unwrap(),
            manifest: MANIFEST,
            product: "tool".parse().unwrap(),
            version: Version(1),
            state,
            detail: String::new(),
            exit_code: None,
            at: Timestamp(5),
            seq: 1,
            progress: None,
            certificate,
            attempt: 0,
        };
        let mut s = Signed::new(report);
        s.sign(node);
        ReportView::of(&s)
    }

    #[test]
    fn only_signed_reports_from_nodes_enrolled_in_the_ring_count_and_the_others_are_told_by_reason() {
        let (enroll, outsider) = (key(2), key(3));
        let r = root(&[&enroll], 1);
        let check = MemberCheck { root: &r, fleet: &FLEET, revoked: None, now: Timestamp(100) };
        let canary: RingName = "canary".parse().unwrap();
        let nodes: Vec<SigningKey> = (10..17).map(key).collect();
        let installed = ReleaseState::Installed;
        let mut unsigned = view(&nodes[5], "canary", installed, Some(cert(&nodes[5], "canary", 500, &enroll)));
        unsigned.envelope = None;
        // The collector's summary says failed; the node signed installed.
        let mut lying = view(&nodes[6], "canary", installed, Some(cert(&nodes[6], "canary", 500, &enroll)));
        lying.state = ReleaseState::Failed(FailReason::DiskFull);
        let views = vec![
            view(&nodes[0], "canary", installed, Some(cert(&nodes[0], "canary", 500, &enroll))),
            view(&nodes[1], "canary", installed, None),
            view(&nodes[2], "canary", installed, Some(cert(&nodes[2], "broad", 500, &enroll))),
            // Made after its certificate expired (at 5, the certificate ends at 4).
            view(&nodes[3], "canary", installed, Some(cert(&nodes[3], "canary", 4, &enroll))),
            view(&nodes[4], "canary", installed, Some(cert(&nodes[4], "canary", 500, &outsider))),
            unsigned,
            lying,
        ];
        let (counted, uncounted) = count_members(views, &canary, &check, &Limits::default());
        assert_eq!(counted.len(), 2);
        assert!(counted.iter().all(|v| v.state == ReleaseState::Installed), "the signed state counts");
        let by: BTreeMap<&str, usize> = uncounted.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        assert_eq!(by, BTreeMap::from([("expired", 1), ("no_certificate", 2), ("signature", 1), ("wrong_ring", 1)]));
        let note = uncounted_note(&canary, &uncounted).unwrap();
        assert!(note.starts_with("5 report(s) from ring canary not counted"), "{note}");
        assert!(note.contains("no_certificate 2"), "{note}");
    }

    #[test]
    fn a_report_made_while_its_certificate_was_valid_counts_after_a_renewal_and_one_node_counts_once() {
        let enroll = key(2);
        let r = root(&[&enroll], 1);
        // Now (100) is past the certificate's end (50); the report was made at 5.
        let check = MemberCheck { root: &r, fleet: &FLEET, revoked: None, now: Timestamp(100) };
        let n = key(10);
        let v = view(&n, "canary", ReleaseState::Installed, Some(cert(&n, "canary", 50, &enroll)));
        let (counted, _) = count_members([v.clone(), v], &"canary".parse().unwrap(), &check, &Limits::default());
        assert_eq!(counted.len(), 1, "listed twice, counted once");
    }

    #[test]
    fn a_summary_that_differs_from_the_signed_report_does_not_count() {
        let enroll = key(2);
        let r = root(&[&enroll], 1);
        let check = MemberCheck { root: &r, fleet: &FLEET, revoked: None, now: Timestamp(100) };
        let n = key(10);
        let mut v = view(&n, "broad", ReleaseState::Installed, Some(cert(&n, "broad", 500, &enroll)));
        v.ring = "canary".into();
        let (counted, uncounted) = count_members([v], &"canary".parse().unwrap(), &check, &Limits::default());
        assert!(counted.is_empty());
        assert_eq!(uncounted.get(&RefusalReason::Malformed), Some(&1));
    }
}
