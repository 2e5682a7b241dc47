//! A release's rollout across rings, from the collector's reports: counts per ring from typed
//! states, and the ring gate (the ring before the one being approved must have enough installs
//! and no failure). `lanpatch-signer approve` enforces the gate; the node's console shows the
//! same verdict before anyone runs it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::approval::{RolloutRules, Wave};
use crate::control::ReportView;
use crate::lifecycle::{ReleaseState, RollbackCause, SkipReason, WaitReason};
use crate::types::{Hash32, PublicKey, RingName, Timestamp};

/// A ring's results for one release, from typed states. Each node counts in exactly one field.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RingCounts {
    pub installed: usize,
    /// Failed installs or downloads, and rollbacks after a failed or interrupted install.
    pub failed: usize,
    /// Rolled back because the release was yanked (not a failure).
    pub rolled_back_by_yank: usize,
    /// The release does not target these nodes: not part of the rollout.
    pub not_targeted: usize,
    /// Skipped: yanked or expired before the install.
    pub skipped: usize,
    /// Halted by the approval's failure-rate rule.
    pub halted: usize,
    /// Downloaded (or on the way) and waiting for an approval of their ring.
    pub waiting_for_approval: usize,
    /// Approved, and waiting for something else: a window, a wave, a not-before time, a fresh
    /// timestamp statement, reports, dpkg's lock (the nodes' states say which).
    pub waiting: usize,
    /// On its way: queued, downloading, installing, rolling back, interrupted.
    pub in_progress: usize,
}

impl RingCounts {
    pub fn add(&mut self, state: ReleaseState) {
        match state {
            ReleaseState::Installed => self.installed += 1,
            s if s.is_failure() => self.failed += 1,
            ReleaseState::RolledBack(RollbackCause::Yanked) => self.rolled_back_by_yank += 1,
            ReleaseState::Skipped(SkipReason::NotTargeted) => self.not_targeted += 1,
            ReleaseState::Skipped(_) => self.skipped += 1,
            ReleaseState::Halted => self.halted += 1,
            ReleaseState::Waiting(WaitReason::NotApproved) => self.waiting_for_approval += 1,
            ReleaseState::Waiting(_) => self.waiting += 1,
            _ => self.in_progress += 1,
        }
    }

    /// The counts for people, non-zero ones only, in a fixed order: "installed 3, waiting for
    /// approval 1".
    pub fn describe(&self) -> String {
        let parts = [
            (self.installed, "installed"),
            (self.failed, "failed"),
            (self.halted, "halted"),
            (self.in_progress, "in progress"),
            (self.waiting, "waiting"),
            (self.waiting_for_approval, "waiting for approval"),
            (self.rolled_back_by_yank, "rolled back by yank"),
            (self.skipped, "skipped (yanked or expired)"),
            (self.not_targeted, "not targeted"),
        ];
        let shown: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{what} {n}")).collect();
        if shown.is_empty() { "no reports".to_string() } else { shown.join(", ") }
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

/// Domain separation for the wave hash.
const WAVE_DOMAIN: &[u8] = b"lanpatch-wave-v1";

/// A node's place in a release's rollout, in [0, 10000): the first 8 bytes of
/// BLAKE3(`lanpatch-wave-v1` || manifest hash || node key), little-endian, modulo 10000. Stable
/// for a node and a release, independent across releases.
pub fn wave_position(node: &PublicKey, manifest: &Hash32) -> u16 {
    let mut h = blake3::Hasher::new();
    h.update(WAVE_DOMAIN).update(&manifest.0).update(&node.0);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    (u64::from_le_bytes(first) % 10_000) as u16
}

/// The wave (0-based) a node belongs to: the first whose cumulative `percent` x 100 is above its
/// position.
pub fn wave_of(node: &PublicKey, manifest: &Hash32, waves: &[Wave]) -> usize {
    let pos = wave_position(node, manifest);
    waves.iter().position(|w| pos < u16::from(w.percent) * 100).unwrap_or(waves.len().saturating_sub(1))
}

/// One node's latest report about the release, as a node of the same ring holds it.
#[derive(Clone, Debug)]
pub struct RingReport {
    pub node: PublicKey,
    pub state: ReleaseState,
    /// The reporting node's time of the report.
    pub at: Timestamp,
    /// When this node received it (seconds since the epoch, this node's clock).
    pub received: u64,
}

impl RingReport {
    /// A collector's report as the rules count it; the receipt time is not known there (0), so
    /// only the failure figures, not the soak, can be computed from it.
    pub fn from_view(r: &ReportView) -> Option<RingReport> {
        Some(RingReport { node: r.node.parse().ok()?, state: r.state, at: Timestamp(r.at), received: 0 })
    }
}

/// The failure rate's figures: failed outcomes among counted ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureFigures {
    pub failed: usize,
    pub counted: usize,
    pub max_failure_bp: u16,
    pub min_reports: u32,
}

impl FailureFigures {
    /// Whether the rate counts (enough outcomes) and crosses the threshold.
    pub fn halts(&self) -> bool {
        self.counted >= self.min_reports as usize
            && self.counted > 0
            && (self.failed as u64) * 10_000 > u64::from(self.max_failure_bp) * self.counted as u64
    }

    pub fn explain(&self) -> String {
        let pct = if self.counted == 0 { 0.0 } else { self.failed as f64 * 100.0 / self.counted as f64 };
        format!(
            "{} of {} outcomes failed ({pct:.0} %), the approval allows {} % (counted from {} outcomes)",
            self.failed,
            self.counted,
            f64::from(self.max_failure_bp) / 100.0,
            self.min_reports
        )
    }
}

/// Outcomes that count against the threshold: installed or failed (`is_failure`), reported at
/// or after the approval was issued (so a new approval starts the count again).
pub fn failure_figures<'a>(
    rules: &RolloutRules,
    issued: Timestamp,
    reports: impl IntoIterator<Item = &'a RingReport>,
) -> FailureFigures {
    let since = reports.into_iter().filter(|r| r.at >= issued);
    let (mut failed, mut counted) = (0, 0);
    for r in since {
        if r.state.is_failure() {
            failed += 1;
            counted += 1;
        } else if r.state.is_installed() {
            counted += 1;
        }
    }
    FailureFigures { failed, counted, max_failure_bp: rules.max_failure_bp, min_reports: rules.min_reports }
}

/// What the rollout rules say about this node installing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaveGate {
    Open,
    /// The ring's failure rate crossed the threshold.
    Halt(FailureFigures),
    /// The node holds reports from fewer nodes of its ring than `min_reports` and is past the
    /// first wave: it does not guess.
    TooFewReports {
        seen: usize,
        needed: u32,
    },
    /// An earlier wave has not reached its installs, or is still soaking.
    Closed {
        /// This node's wave and the wave it waits for (0-based).
        wave: usize,
        waits_for: usize,
        installed: usize,
        needed: usize,
        /// When the soak ends (this node's clock), once the installs are there.
        opens_at: Option<u64>,
    },
}

impl WaveGate {
    pub fn explain(&self) -> String {
        match self {
            WaveGate::Open => "its wave is open".into(),
            WaveGate::Halt(f) => format!("halted: {}", f.explain()),
            WaveGate::TooFewReports { seen, needed } => format!(
                "holds reports from {seen} node(s) of its ring, the approval's rules need {needed} before it installs past the first wave"
            ),
            WaveGate::Closed { wave, waits_for, installed, needed, opens_at: None } => format!(
                "in wave {}: wave {} has {installed} of the {needed} install(s) it needs",
                wave + 1,
                waits_for + 1
            ),
            WaveGate::Closed { wave, waits_for, opens_at: Some(t), .. } => {
                format!("in wave {}: wave {} soaks until {t}", wave + 1, waits_for + 1)
            }
        }
    }
}

/// The rollout rules' decision for node `me` on `manifest` at `now`, from the latest report of
/// each node of the ring that the node holds (its own included; nodes the release does not
/// target left out). In order: the halt (any wave); the first wave is open; later waves need
/// reports from at least `min_reports` nodes, and every earlier wave j needs
/// min(`waves[j].min_success`, the nodes of wave j seen) installs, the last of them received
/// at least `waves[j].min_soak_secs` ago.
pub fn wave_gate(
    rules: &RolloutRules,
    issued: Timestamp,
    me: &PublicKey,
    manifest: &Hash32,
    reports: &[RingReport],
    now: u64,
) -> WaveGate {
    let reports: Vec<&RingReport> = reports.iter().filter(|r| !r.state.is_not_targeted()).collect();
    let figures = failure_figures(rules, issued, reports.iter().copied());
    if figures.halts() {
        return WaveGate::Halt(figures);
    }
    let mine = wave_of(me, manifest, &rules.waves);
    if mine == 0 {
        return WaveGate::Open;
    }
    let seen = reports.len() + usize::from(!reports.iter().any(|r| r.node == *me));
    if seen < rules.min_reports as usize {
        return WaveGate::TooFewReports { seen, needed: rules.min_reports };
    }
    for (j, wave) in rules.waves.iter().enumerate().take(mine) {
        let members: Vec<&&RingReport> =
            reports.iter().filter(|r| wave_of(&r.node, manifest, &rules.waves) == j).collect();
        let mut installs: Vec<u64> = members.iter().filter(|r| r.state.is_installed()).map(|r| r.received).collect();
        installs.sort_unstable();
        let needed = (wave.min_success as usize).min(members.len());
        if installs.len() < needed {
            return WaveGate::Closed { wave: mine, waits_for: j, installed: installs.len(), needed, opens_at: None };
        }
        if needed > 0 {
            let opens = installs[needed - 1].saturating_add(wave.min_soak_secs);
            if now < opens {
                return WaveGate::Closed {
                    wave: mine,
                    waits_for: j,
                    installed: installs.len(),
                    needed,
                    opens_at: Some(opens),
                };
            }
        }
    }
    WaveGate::Open
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

    #[test]
    fn each_state_counts_in_exactly_one_field_and_waiting_not_targeted_and_skipped_stay_apart() {
        use crate::lifecycle::{FailReason, SkipReason, WaitReason};
        let mut c = RingCounts::default();
        for s in ReleaseState::every() {
            c.add(s);
        }
        let total = c.installed
            + c.failed
            + c.rolled_back_by_yank
            + c.not_targeted
            + c.skipped
            + c.halted
            + c.waiting_for_approval
            + c.waiting
            + c.in_progress;
        assert_eq!(total, ReleaseState::every().len());
        let one = |s: ReleaseState| {
            let mut c = RingCounts::default();
            c.add(s);
            c
        };
        assert_eq!(one(ReleaseState::Waiting(WaitReason::NotApproved)).waiting_for_approval, 1);
        assert_eq!(one(ReleaseState::Waiting(WaitReason::OutsideWindow)).waiting, 1);
        assert_eq!(one(ReleaseState::Skipped(SkipReason::NotTargeted)).not_targeted, 1);
        assert_eq!(one(ReleaseState::Skipped(SkipReason::Yanked)).skipped, 1);
        assert_eq!(one(ReleaseState::Failed(FailReason::DiskFull)).failed, 1);
        assert_eq!(one(ReleaseState::Queued).in_progress, 1);
        let mut c = RingCounts::default();
        c.add(ReleaseState::Installed);
        c.add(ReleaseState::Waiting(WaitReason::NotApproved));
        assert_eq!(c.describe(), "installed 1, waiting for approval 1");
        assert_eq!(RingCounts::default().describe(), "no reports");
    }
    use crate::lifecycle::FailReason;

    /// Over 64 releases (fixed, so the test is deterministic: the partition is a hash, and a
    /// random release would fail a 3.4-sigma bound now and then) and 1,000 nodes each.
    #[test]
    fn wave_partition_is_stable_and_balanced_within_five_percent_for_a_thousand_nodes() {
        let r = rules(&[(10, 0, 1), (30, 0, 1), (100, 0, 0)]);
        for release in 0..64u32 {
            let m = Hash32(*blake3::hash(&release.to_be_bytes()).as_bytes());
            let mut sizes = [0usize; 3];
            for i in 0..1000u32 {
                let k = key(i);
                let w = wave_of(&k, &m, &r.waves);
                assert_eq!(w, wave_of(&k, &m, &r.waves), "stable");
                sizes[w] += 1;
            }
            // Expected 100, 200, 700 of 1000: each within 5 % of the ring (50 nodes).
            for (size, expected) in sizes.iter().zip([100usize, 200, 700]) {
                assert!(size.abs_diff(expected) <= 50, "release {release}: {sizes:?}");
            }
        }
        // Another release puts a node elsewhere: the first wave is not always the same nodes.
        let firsts = |m: Hash32| (0..1000u32).filter(|i| wave_of(&key(*i), &m, &r.waves) == 0).collect::<Vec<_>>();
        assert_ne!(firsts(Hash32([1; 32])), firsts(Hash32([2; 32])));
    }

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
            envelope: None,
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

    fn rules(waves: &[(u8, u64, u32)]) -> RolloutRules {
        RolloutRules {
            max_failure_bp: 2000,
            min_reports: 3,
            waves: waves
                .iter()
                .map(|&(percent, min_soak_secs, min_success)| Wave { percent, min_soak_secs, min_success })
                .collect(),
        }
    }

    fn key(i: u32) -> PublicKey {
        PublicKey(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// Nodes 0.. in `wave` of `manifest` under `r`.
    fn in_wave(r: &RolloutRules, m: &Hash32, wave: usize, n: usize) -> Vec<PublicKey> {
        (0..).map(key).filter(|k| wave_of(k, m, &r.waves) == wave).take(n).collect()
    }

    fn rep(node: PublicKey, state: ReleaseState, received: u64) -> RingReport {
        RingReport { node, state, at: Timestamp(100), received }
    }

    #[test]
    fn the_first_wave_opens_at_once_and_later_waves_wait_for_installs_and_soak() {
        let r = rules(&[(25, 60, 2), (100, 0, 0)]);
        let m = Hash32([7; 32]);
        let w0 = in_wave(&r, &m, 0, 3);
        let w1 = in_wave(&r, &m, 1, 2);
        assert_eq!(wave_gate(&r, Timestamp(0), &w0[0], &m, &[], 1000), WaveGate::Open);
        let mut reports: Vec<RingReport> = w1.iter().map(|k| rep(*k, ReleaseState::Downloaded, 0)).collect();
        reports.push(rep(w0[0], ReleaseState::Installed, 500));
        reports.push(rep(w0[1], ReleaseState::Downloaded, 0));
        let closed = wave_gate(&r, Timestamp(0), &w1[0], &m, &reports, 1000);
        assert!(
            matches!(closed, WaveGate::Closed { wave: 1, waits_for: 0, installed: 1, needed: 2, opens_at: None }),
            "{closed:?}"
        );
        reports[3] = rep(w0[1], ReleaseState::Installed, 900);
        assert!(matches!(
            wave_gate(&r, Timestamp(0), &w1[0], &m, &reports, 930),
            WaveGate::Closed { opens_at: Some(960), .. }
        ));
        assert_eq!(wave_gate(&r, Timestamp(0), &w1[0], &m, &reports, 960), WaveGate::Open);
    }

    #[test]
    fn a_node_that_sees_too_few_reports_does_not_install_past_the_first_wave() {
        let r = rules(&[(25, 0, 1), (100, 0, 0)]);
        let m = Hash32([8; 32]);
        let late = in_wave(&r, &m, 1, 1)[0];
        let early = in_wave(&r, &m, 0, 1)[0];
        assert_eq!(wave_gate(&r, Timestamp(0), &late, &m, &[], 10), WaveGate::TooFewReports { seen: 1, needed: 3 });
        assert_eq!(wave_gate(&r, Timestamp(0), &early, &m, &[], 10), WaveGate::Open);
    }

    #[test]
    fn the_ring_halts_when_failures_cross_the_threshold_and_a_new_approval_counts_afresh() {
        let r = rules(&[(100, 0, 0)]);
        let m = Hash32([9; 32]);
        let fail = ReleaseState::Failed(crate::lifecycle::FailReason::CommandFailed);
        let mut reports = vec![rep(key(1), ReleaseState::Installed, 1), rep(key(2), fail, 1)];
        // Two outcomes: below min_reports, the rate does not count yet.
        assert_eq!(wave_gate(&r, Timestamp(0), &key(9), &m, &reports, 10), WaveGate::Open);
        reports.push(rep(key(3), ReleaseState::Installed, 1));
        let halted = wave_gate(&r, Timestamp(0), &key(9), &m, &reports, 10);
        assert!(matches!(halted, WaveGate::Halt(FailureFigures { failed: 1, counted: 3, .. })), "{halted:?}");
        // A yank rollback is not a failure; outcomes before a new approval do not count.
        assert_eq!(wave_gate(&r, Timestamp(101), &key(9), &m, &reports, 10), WaveGate::Open);
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
