//! A release's rollout across rings, from the collector's reports: counts per ring from typed
//! states, and the ring gate (the ring before the one being approved must have enough installs
//! and no failure). `lanpatch-signer approve` enforces the gate; the node's console shows the
//! same verdict before anyone runs it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::control::ReportView;
use crate::lifecycle::{ReleaseState, RollbackCause};
use crate::types::RingName;

/// A ring's results for one release, from typed states.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RingCounts {
    pub installed: usize,
    /// Failed installs or downloads, and rollbacks after a failed or interrupted install.
    pub failed: usize,
    /// Rolled back because the release was yanked (not a failure).
    pub rolled_back_by_yank: usize,
    /// Skipped: not targeted, yanked before install, or already installed.
    pub skipped: usize,
    /// Still on its way (queued, downloading, waiting, installing).
    pub in_progress: usize,
}

impl RingCounts {
    pub fn add(&mut self, state: ReleaseState) {
        if state.is_installed() {
            self.installed += 1;
        } else if state.is_failure() {
            self.failed += 1;
        } else if state == ReleaseState::RolledBack(RollbackCause::Yanked) {
            self.rolled_back_by_yank += 1;
        } else if matches!(state, ReleaseState::Skipped(_)) {
            self.skipped += 1;
        } else {
            self.in_progress += 1;
        }
    }

    /// Counts per ring name of `reports`.
    pub fn by_ring<'a>(reports: impl IntoIterator<Item = &'a ReportView>) -> BTreeMap<String, RingCounts> {
        let mut rings: BTreeMap<String, RingCounts> = BTreeMap::new();
        for r in reports {
            rings.entry(r.ring.clone()).or_default().add(r.state);
        }
        rings
    }
}

/// Why the gate refuses, typed, beside the text that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GateRefusal {
    /// Nodes of the previous ring failed (hostname, state, the last lines of their output).
    Failures(Vec<(String, ReleaseState, String)>),
    /// Too few installs in the previous ring.
    TooFewInstalls { installed: usize, needed: usize },
}

impl GateRefusal {
    pub fn explain(&self, prev: &RingName) -> String {
        match self {
            GateRefusal::Failures(list) => {
                let l: Vec<String> = list.iter().map(|(h, s, tail)| format!("{h} ({s}): {tail}")).collect();
                format!("ring {prev} has {} failed install(s): {}", list.len(), l.join("; "))
            }
            GateRefusal::TooFewInstalls { installed, needed } => format!(
                "ring {prev} has {installed} successful install(s); policy requires at least {needed} and no failures"
            ),
        }
    }
}

/// The gate's verdict on approving the ring after `prev`, from `prev`'s reports: passes with at
/// least `min_success` installs and no failure the collector has seen.
pub fn gate(reports: &[&ReportView], min_success: usize) -> Result<(), GateRefusal> {
    let mut counts = RingCounts::default();
    for r in reports {
        counts.add(r.state);
    }
    let failed: Vec<(String, ReleaseState, String)> = reports
        .iter()
        .filter(|r| r.state.is_failure())
        .map(|r| (r.hostname.clone(), r.state, last_lines(&r.detail, 3)))
        .collect();
    if !failed.is_empty() {
        Err(GateRefusal::Failures(failed))
    } else if counts.installed < min_success {
        Err(GateRefusal::TooFewInstalls { installed: counts.installed, needed: min_success })
    } else {
        Ok(())
    }
}

/// The next ring to approve in `order`: the first one after the last approved ring (`None` when
/// the last ring in the order is approved, or no ring is approved yet: the first ring needs no
/// gate). Returns (previous ring, next ring).
pub fn next_ring<'a>(order: &'a [RingName], approved: &[RingName]) -> Option<(&'a RingName, &'a RingName)> {
    let last = order.iter().rposition(|r| approved.contains(r))?;
    Some((&order[last], order.get(last + 1)?))
}

/// The last `n` non-empty lines of a report's detail, on one line.
pub fn last_lines(s: &str, n: usize) -> String {
    let mut lines: Vec<&str> = s.lines().rev().filter(|l| !l.trim().is_empty()).take(n).collect();
    lines.reverse();
    lines.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::FailReason;

    fn report(host: &str, state: ReleaseState) -> ReportView {
        ReportView {
            node: host.into(),
            hostname: host.into(),
            ring: "canary".into(),
            manifest: "m".into(),
            product: "tool".into(),
            version: 1,
            state,
            detail: String::new(),
            exit_code: None,
            at: 0,
            seq: 1,
            progress: None,
        }
    }

    #[test]
    fn gate_refuses_any_failure_and_ignores_yank_rollbacks() {
        let ok = [report("a", ReleaseState::Installed), report("b", ReleaseState::RolledBack(RollbackCause::Yanked))];
        assert!(gate(&ok.iter().collect::<Vec<_>>(), 1).is_ok());
        let bad = [report("a", ReleaseState::Installed), report("b", ReleaseState::Failed(FailReason::DiskFull))];
        let why = gate(&bad.iter().collect::<Vec<_>>(), 1).unwrap_err();
        assert!(matches!(&why, GateRefusal::Failures(l) if l.len() == 1 && l[0].0 == "b"), "{why:?}");
        let rb = [report("a", ReleaseState::Installed), report("b", ReleaseState::RolledBack(RollbackCause::TimedOut))];
        assert!(gate(&rb.iter().collect::<Vec<_>>(), 1).is_err());
    }

    #[test]
    fn gate_needs_enough_installs() {
        let few = [report("a", ReleaseState::Installed), report("b", ReleaseState::Downloading)];
        assert_eq!(
            gate(&few.iter().collect::<Vec<_>>(), 2),
            Err(GateRefusal::TooFewInstalls { installed: 1, needed: 2 })
        );
    }

    #[test]
    fn next_ring_follows_the_last_approved_ring_in_order() {
        let order: Vec<RingName> = ["canary", "pilot", "broad"].iter().map(|r| r.parse().unwrap()).collect();
        let canary = vec![order[0].clone()];
        assert_eq!(next_ring(&order, &canary), Some((&order[0], &order[1])));
        assert_eq!(next_ring(&order, &[]), None);
        assert_eq!(next_ring(&order, &order), None);
        // An approval out of order (forced) still moves the gate past it.
        assert_eq!(next_ring(&order, &[order[1].clone()]), Some((&order[1], &order[2])));
    }
}
