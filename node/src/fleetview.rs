//! The collector's view of the fleet: every member's latest report per release and every
//! node's latest inventory, decoded from the store and checked again at each use (a node
//! revoked since stops counting). Read by the control socket, the console, notifications and
//! retention; it imports nothing above the store and `Shared`.

use anyhow::Result;
use lanpatch_protocol::control::{InventoryView, ReportView};
use lanpatch_protocol::{Inventory, Report, Signed};

use crate::shared::Shared;

/// Every node's latest report per release, as a collector stores them (undecodable rows, from
/// an older version, are left out).
pub async fn fleet_reports(s: &Shared) -> Result<Vec<ReportView>> {
    let limits = s.trust().limits.clone();
    Ok(s.store
        .reports()
        .await?
        .iter()
        .filter_map(|b| Signed::<Report>::decode(b, &limits).ok())
        // Only members' reports, checked again at this use (a node revoked since stops counting
        // in the console's gate and in `lanpatch-signer status`).
        .filter(|r| s.report_counts(r.value()))
        .map(|r| ReportView::of(&r))
        .collect())
}

/// Every node's latest inventory, as a collector stores them.
pub async fn fleet_inventories(s: &Shared) -> Result<Vec<InventoryView>> {
    let limits = s.trust().limits.clone();
    Ok(s.store
        .inventories()
        .await?
        .iter()
        .filter_map(|b| Signed::<Inventory>::decode(b, &limits).ok())
        .map(|i| {
            let v = i.value();
            InventoryView {
                node: v.node.to_hex(),
                hostname: v.hostname.clone(),
                os: v.os.clone(),
                os_version: v.os_version.clone(),
                kernel: v.kernel.clone(),
                arch: v.arch.clone(),
                ring: v.ring.to_string(),
                tags: v.tags.iter().map(|t| t.to_string()).collect(),
                packages: v.packages.clone(),
                releases: v.releases.iter().map(|r| format!("{} {}", r.product, r.version)).collect(),
                at: v.at.0,
                seq: v.seq,
                agent_version: v.agent_version.clone(),
                reboot_required: v.reboot_required.clone(),
            }
        })
        .collect())
}
