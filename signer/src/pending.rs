//! `lanpatch-signer pending`: what waits for signatures in the bundles here (manifests,
//! approvals, yanks), who signed, how many more each needs and the exact command for the next
//! admin; with `--node`, also what is complete but not yet published, and which ring's gate
//! is open and waits for its approval.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use lanpatch_protocol::control::{ControlRequest, ControlResponse, ReleaseStatus};
use lanpatch_protocol::{RingName, Role};

use crate::cosign::{self, BundleState, Item, KeyNames, sh};
use crate::ctx::Ctx;
use crate::fleet;

#[derive(Args)]
pub struct PendingArgs {
    /// The trust root (default: root.lpr in the current directory): thresholds and keys.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The admin node's control socket: what it has published, and the ring gates.
    #[arg(long)]
    pub node: Option<PathBuf>,
    /// The rollout order of rings (as `approve --rings`).
    #[arg(long, value_delimiter = ',', default_value = "canary,pilot,broad")]
    pub rings: Vec<RingName>,
    /// Successful installs the previous ring needs before the next ring's gate opens.
    #[arg(long, default_value_t = 1)]
    pub min_success: usize,
    /// Bundle directories, or directories holding bundles (default: the current directory).
    pub bundles: Vec<PathBuf>,
}

pub fn run(a: PendingArgs, ctx: &Ctx) -> Result<()> {
    let (root_path, root) = cosign::load_root(a.root.as_deref(), &ctx.limits)?;
    let base = root_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let names = KeyNames::scan(&[base, Path::new(".")]);
    let dirs = if a.bundles.is_empty() { vec![PathBuf::from(".")] } else { a.bundles.clone() };
    let mut bundles = Vec::new();
    for d in &dirs {
        bundles.extend(find_bundles(d));
    }
    bundles.sort();
    bundles.dedup();
    let published = match &a.node {
        Some(sock) => Some(node_releases(sock)?),
        None => None,
    };
    let approve_keys = root.value().keys(Role::Approve).keys;
    let mut waiting = 0;
    for dir in &bundles {
        let state = match cosign::bundle_state(dir, root.value(), &ctx.limits) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("warning: {} skipped: {e:#}", dir.display());
                continue;
            }
        };
        let at_node = published.as_ref().and_then(|list| {
            let hash = state.manifest.payload_hash().to_hex();
            list.iter().find(|r| r.manifest == hash)
        });
        waiting += print_bundle(&state, &names, &approve_keys, &a, at_node, ctx);
    }
    if bundles.is_empty() {
        println!(
            "no release bundles under {}",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    } else if waiting == 0 {
        println!("nothing waits for a signature or a publish");
    }
    Ok(())
}

/// Bundles are directories with a `manifest.lpm`: each given one, or those one level below.
fn find_bundles(dir: &Path) -> Vec<PathBuf> {
    if crate::bundle::Bundle::new(dir).manifest_path().is_file() {
        return vec![dir.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::bundle::Bundle::new(p).manifest_path().is_file())
        .map(|p| p.strip_prefix("./").map(Path::to_path_buf).unwrap_or(p))
        .collect()
}

fn node_releases(sock: &Path) -> Result<Vec<ReleaseStatus>> {
    match fleet::request(sock, &ControlRequest::Status)? {
        ControlResponse::Status(s) => Ok(s.releases),
        other => anyhow::bail!("unexpected answer from the node: {other:?}"),
    }
}

/// Prints one bundle's standing; returns how many things wait (a signature, a publish, a gate).
fn print_bundle(
    state: &BundleState,
    names: &KeyNames,
    approve_keys: &[lanpatch_protocol::PublicKey],
    a: &PendingArgs,
    at_node: Option<&ReleaseStatus>,
    ctx: &Ctx,
) -> usize {
    let m = state.manifest.value();
    let dir = &state.dir;
    let node = a.node.as_deref().map(sh).unwrap_or_else(|| "<admin node's control.sock>".to_string());
    let mut next: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let manifest_ok = state.items.first().is_some_and(cosign::Standing::complete);
    for s in &state.items {
        lines.push(cosign::describe(s, names));
        if !s.complete() {
            next.push(format!("{} (by another {} key holder)", cosign::sign_command(s, names, dir), s.role));
            continue;
        }
        let on_node = match (&s.item, at_node) {
            (_, None) => None,
            (Item::Manifest, Some(_)) => Some(true),
            (Item::Approval(r), Some(st)) => Some(st.approved_rings.iter().any(|x| x == r.as_str())),
            (Item::Yank, Some(st)) => Some(st.yanked),
        };
        if manifest_ok && on_node == Some(false) {
            next.push(format!(
                "lanpatch-signer publish --node {node} {} (the node has not got the {})",
                sh(dir),
                s.item
            ));
        }
    }
    if manifest_ok && a.node.is_some() && at_node.is_none() {
        next.push(format!("lanpatch-signer publish --node {node} {} (the node does not know this release)", sh(dir)));
    }
    // The ring after the last approved one, when its gate is open: an approval waits.
    let yanked = state.items.iter().any(|s| s.item == Item::Yank);
    if let (Some(sock), Some(st), false) = (&a.node, at_node, yanked) {
        let approved: Vec<RingName> = st.approved_rings.iter().filter_map(|r| r.parse().ok()).collect();
        if let Some((prev, ring)) = lanpatch_protocol::rollout::next_ring(&a.rings, &approved) {
            let gate = fleet::Gate {
                ring,
                order: &a.rings,
                node: Some(sock),
                manifest: &state.manifest.payload_hash(),
                min_success: a.min_success,
                root: a.root.as_deref(),
                limits: &ctx.limits,
                now: ctx.now,
            };
            let has_file = state.items.iter().any(|s| s.item == Item::Approval(ring.clone()));
            match fleet::ring_gate(&gate, false, None) {
                Ok(_) if !has_file => {
                    let key = names.key_arg(Role::Approve, approve_keys);
                    lines.push(format!("ring {ring}: the gate is open (ring {prev} passed); its approval waits"));
                    let order: Vec<&str> = a.rings.iter().map(|r| r.as_str()).collect();
                    next.push(format!(
                        "lanpatch-signer approve --key {key} --ring {ring} --rings {} --min-success {} --node {node} {}",
                        order.join(","),
                        a.min_success,
                        sh(dir)
                    ));
                }
                Ok(_) => {}
                Err(why) => lines.push(format!("ring {ring}: gate closed: {why:#}")),
            }
        }
    }
    if next.is_empty() && !lines.iter().any(|l| l.contains("gate closed")) {
        return 0;
    }
    println!("{} {} ({}, manifest {})", m.product, m.version, dir.display(), state.manifest.payload_hash().short());
    for l in &lines {
        println!("  {l}");
    }
    for n in &next {
        println!("  next: {n}");
    }
    next.len()
}
