//! Talking to a node's control socket: fleet status, the ring gate, inventory queries.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use lanpatch_protocol::control::{ControlRequest, ControlResponse, InventoryView, ReportView};
use lanpatch_protocol::{Hash32, Limits, ReleaseManifest, RingName};

use crate::bundle::{self, Bundle};
use crate::debver;

/// One request, one response, over a node's control socket.
pub fn request(socket: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {} (is the node running?)", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(stream).take(256 * 1024 * 1024).read_line(&mut resp)?;
    let resp: ControlResponse =
        serde_json::from_str(&resp).with_context(|| format!("bad response from {}", socket.display()))?;
    if let ControlResponse::Error { message } = resp {
        bail!("the node refused: {message}");
    }
    Ok(resp)
}

pub fn reports(socket: &Path) -> Result<Vec<ReportView>> {
    match request(socket, &ControlRequest::Reports)? {
        ControlResponse::Reports(r) => Ok(r),
        other => bail!("unexpected response {other:?}"),
    }
}

fn is_failure(state: &str) -> bool {
    state == "failed" || state == "rolled-back"
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
            let ok = mine.iter().filter(|r| r.state == "installed").count();
            let failed: Vec<&&ReportView> = mine.iter().filter(|r| is_failure(&r.state)).collect();
            if !failed.is_empty() {
                let list: Vec<String> =
                    failed.iter().map(|r| format!("{} ({}): {}", r.hostname, r.state, last_lines(&r.detail))).collect();
                Err(format!("ring {prev} has {} failed install(s): {}", failed.len(), list.join("; ")))
            } else if ok < min_success {
                Err(format!(
                    "ring {prev} has {ok} successful install(s); policy requires at least {min_success} and no failures"
                ))
            } else {
                Ok(())
            }
        }
    };
    match (verdict, force) {
        (Ok(()), _) => Ok(force.then(|| reason.map(str::to_string)).flatten()),
        (Err(why), true) => {
            eprintln!("warning: overriding the ring gate: {why}");
            Ok(reason.map(str::to_string))
        }
        (Err(why), false) => bail!("refusing to approve {ring}: {why} (override with --force --reason \"...\")"),
    }
}

/// The last few non-empty lines of a report's detail, on one line.
fn last_lines(s: &str) -> String {
    let mut lines: Vec<&str> = s.lines().rev().filter(|l| !l.trim().is_empty()).take(3).collect();
    lines.reverse();
    lines.join(" | ")
}

fn join(rings: &[RingName]) -> String {
    rings.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

/// `lanpatch-signer status`.
pub fn status(socket: &Path, bundle: Option<&Path>, limits: &Limits) -> Result<()> {
    let filter = match bundle {
        Some(b) => {
            Some(bundle::load::<ReleaseManifest>(&Bundle::new(b).manifest_path(), limits)?.payload_hash().to_hex())
        }
        None => None,
    };
    let all = reports(socket)?;
    let mut by_release: BTreeMap<(String, u64, String), Vec<&ReportView>> = BTreeMap::new();
    for r in all.iter().filter(|r| filter.as_ref().is_none_or(|f| *f == r.manifest)) {
        by_release.entry((r.product.clone(), r.version, r.manifest.clone())).or_default().push(r);
    }
    if by_release.is_empty() {
        println!("no reports yet");
    }
    for ((product, version, manifest), list) in &by_release {
        let installed = list.iter().filter(|r| r.state == "installed").count();
        let targeted = list.iter().filter(|r| !(r.state == "skipped" && r.detail.starts_with("not targeted"))).count();
        println!("{product} {version} (manifest {}): {installed}/{targeted} targeted nodes installed", &manifest[..16]);
        let mut rings: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for r in list {
            *rings.entry(r.ring.as_str()).or_default().entry(r.state.as_str()).or_default() += 1;
        }
        for (ring, states) in &rings {
            let parts: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
            println!("  ring {ring}: {}", parts.join(", "));
        }
        let failing: Vec<&&ReportView> = list.iter().filter(|r| is_failure(&r.state)).collect();
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
        for r in list.iter().filter(|r| r.state == "skipped") {
            println!("  skipped on {}: {}", r.hostname, r.detail);
        }
    }
    Ok(())
}

/// `lanpatch-signer inventory`.
pub fn inventory(
    socket: &Path,
    package: Option<&str>,
    below: Option<&str>,
    tag: Option<&str>,
    os: Option<&str>,
    ring: Option<&str>,
) -> Result<()> {
    let invs: Vec<InventoryView> = match request(socket, &ControlRequest::Inventories)? {
        ControlResponse::Inventories(v) => v,
        other => bail!("unexpected response {other:?}"),
    };
    let mut shown = 0;
    for inv in &invs {
        if tag.is_some_and(|t| !inv.tags.iter().any(|x| x == t))
            || os.is_some_and(|o| inv.os != o)
            || ring.is_some_and(|r| inv.ring != r)
        {
            continue;
        }
        let pkg_version = package.and_then(|p| inv.packages.iter().find(|(n, _)| n == p).map(|(_, v)| v.as_str()));
        if let Some(p) = package {
            let Some(v) = pkg_version else { continue };
            if below.is_some_and(|b| debver::compare(v, b) != std::cmp::Ordering::Less) {
                continue;
            }
            println!("{} [{}] {} {}: {p} {v}", inv.hostname, inv.ring, inv.os, inv.os_version);
        } else {
            println!(
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
            );
        }
        shown += 1;
    }
    println!("{shown} of {} node(s)", invs.len());
    Ok(())
}
