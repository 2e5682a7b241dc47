//! A release's life on one node, as typed states and a pure transition function.
//!
//! Every state change of a release on a node goes through [`step`]: the node's lifecycle owner
//! applies it, persists the result in the same transaction, and reports it. Nodes report these
//! states; the collector and the signer's ring gate read them as typed values, never as text.
//! Human text (command output, an error's message) travels beside the state, never instead of it.
//!
//! Within one attempt the order of states (see [`ReleaseState::rank`]) only goes forward:
//!
//! ```text
//! Available -> Queued -> Downloading -> Downloaded -> Waiting(why) -> Installing
//!     -> Installed
//!     -> Interrupted (shutdown killed it) / RollingBack(cause) -> RolledBack(cause) | Failed(why)
//! Installed -> RollingBack(Yanked) -> RolledBack(Yanked) | Failed(RollbackFailed)
//! any state before Installing -> Skipped(why) | Failed(why)
//! Failed(why) | RolledBack(not Yanked) -> Available   (Retry: the next attempt)
//! ```
//!
//! `Skipped` and `RolledBack(Yanked)` are final. `Failed` and other `RolledBack`s end an attempt:
//! only [`Event::Retry`] replaces them, starting the next one (the installer sends it inside the
//! approval's retry rule, or for a newer approval). `Installed` is final except for a yank that
//! asks for a rollback.

use serde::{Deserialize, Serialize};

use crate::types::Timestamp;

/// Why a release waits before its install.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WaitReason {
    /// No approval for this node's ring yet.
    NotApproved,
    /// Approved, but not before this time.
    NotBefore(Timestamp),
    /// Approved and due, outside the node's maintenance windows.
    OutsideWindow,
    /// The approval for this node's ring has expired; a new approval is needed.
    ApprovalExpired,
    /// The node has no fresh timestamp statement from the admin side (freeze protection): it
    /// starts no install until one arrives.
    Stale,
    /// The newest timestamp statement does not list this release as current (a newer version,
    /// a yank or a different approval exists that this node has not received yet).
    NotInStatement,
    /// The approval's rollout rules put this node in a wave that has not opened yet.
    Wave,
    /// The node holds too few reports from its ring to judge the rollout (partitioned, or too
    /// few peers): it does not guess.
    TooFewReports,
    /// Another package manager (apt, unattended-upgrades, an admin's dpkg) holds dpkg's lock.
    PackageManagerBusy,
}

/// Why a release failed on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailReason {
    /// The disk filled up (download or staging). The partial files were removed.
    DiskFull,
    /// The release does not fit the node's `cache_quota`.
    OverQuota,
    /// The download failed for another reason (an I/O error on this node).
    DownloadError,
    /// The release's files could not be staged for the install.
    StageError,
    /// A stored file no longer matched its signed hash when it was staged: the node refused to
    /// run anything from it.
    Tampered,
    /// The install command exited non-zero or could not start.
    CommandFailed,
    /// The install command ran past its timeout and was killed.
    TimedOut,
    /// The install was interrupted (the node stopped or died) and it could not be resolved.
    Interrupted,
    /// The rollback command failed.
    RollbackFailed,
    /// A rollback was needed, but the release has no rollback command.
    NoRollback,
    /// The download would leave less free space on the node's disk than its `min_free_disk`.
    LowDisk,
    /// A Debian package's dependency is neither installed nor part of the release: refused
    /// before dpkg ran (the detail names it).
    MissingDependency,
    /// The packages a Debian release replaces could not be kept for a rollback (not in apt's
    /// cache, and dpkg-repack failed or is not installed): refused before dpkg ran.
    PreviousNotKept,
    /// `dpkg --audit` reported packages in a broken state before the install: the node does not
    /// add to it (the detail holds the report). Fix the host, then approve again.
    BrokenPackages,
    /// A Debian package of the release conflicts with or breaks a package on the host (or one on
    /// the host breaks it): refused before dpkg ran (the detail names each relation).
    Conflicts,
}

/// Why a release was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RollbackCause {
    /// The install command failed.
    InstallFailed,
    /// The install command timed out.
    TimedOut,
    /// The install was interrupted by a shutdown or a crash.
    Interrupted,
    /// The release was yanked with `--rollback` after it was installed. Not a failure.
    Yanked,
}

/// Why a release was not installed, without anything going wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SkipReason {
    /// The release's targets (OS, arch, tags, hostnames) do not include this node.
    NotTargeted,
    /// The release was yanked before it was installed.
    Yanked,
    /// The manifest expired before the release was installed.
    Expired,
}

/// Where a release stands on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReleaseState {
    /// Trusted and known; not yet looked at.
    Available,
    /// Targeted at this node and waiting for a download slot.
    Queued,
    Downloading,
    /// Every file is downloaded and verified.
    Downloaded,
    /// Downloaded; the install waits.
    Waiting(WaitReason),
    /// The install command runs (recorded before it starts).
    Installing,
    /// The ring's failure rate for this release crossed the approval's threshold: the node does
    /// not install. Only a new approval (or a yank) moves it on.
    Halted,
    /// The node stopped during the install and killed it; resolved (detect, else rollback) at the
    /// next start.
    Interrupted,
    /// The rollback command runs.
    RollingBack(RollbackCause),
    Installed,
    Failed(FailReason),
    RolledBack(RollbackCause),
    Skipped(SkipReason),
}

impl ReleaseState {
    /// The order of states. A node's reported state for a release never goes to a lower rank.
    pub fn rank(self) -> u8 {
        use ReleaseState::*;
        match self {
            Available => 0,
            Queued => 1,
            Downloading => 2,
            Downloaded => 3,
            Waiting(_) | Halted => 4,
            Installing => 5,
            Interrupted => 6,
            RollingBack(RollbackCause::Yanked) => 8,
            RollingBack(_) => 6,
            Installed => 7,
            Failed(_) | RolledBack(_) | Skipped(_) => 9,
        }
    }

    /// Nothing but a retry (a new attempt) replaces this state.
    pub fn is_final(self) -> bool {
        self.rank() == 9
    }

    /// A terminal outcome: installed, failed, rolled back or skipped.
    pub fn is_outcome(self) -> bool {
        self.rank() >= 7 && !matches!(self, ReleaseState::RollingBack(_))
    }

    /// Counts against a ring's gate: a failed install or download, or a rollback after a failed
    /// or interrupted install. A rollback asked for by a yank is not a failure.
    pub fn is_failure(self) -> bool {
        match self {
            ReleaseState::Failed(_) => true,
            ReleaseState::RolledBack(cause) => cause != RollbackCause::Yanked,
            _ => false,
        }
    }

    /// Whether another attempt could end differently: `Some(true)` for a transient failure
    /// (retried inside the approval's retry rule), `Some(false)` for one only a newer approval
    /// tries again (the install itself failed), `None` for anything else (not a failure, or a
    /// rollback asked for by a yank).
    pub fn retry_kind(self) -> Option<bool> {
        match self {
            ReleaseState::Failed(f) => Some(f.is_transient()),
            ReleaseState::RolledBack(RollbackCause::TimedOut | RollbackCause::Interrupted) => Some(true),
            ReleaseState::RolledBack(RollbackCause::InstallFailed) => Some(false),
            _ => None,
        }
    }

    pub fn is_installed(self) -> bool {
        self == ReleaseState::Installed
    }

    /// Skipped because the release does not target the node: the node is not part of the rollout.
    pub fn is_not_targeted(self) -> bool {
        self == ReleaseState::Skipped(SkipReason::NotTargeted)
    }

    /// The state's kind without its reason, in snake_case: a metric label value (a dozen values,
    /// listed in the node's metrics module). Never parsed back.
    pub fn kind_name(self) -> &'static str {
        use ReleaseState::*;
        match self {
            Available => "available",
            Queued => "queued",
            Downloading => "downloading",
            Downloaded => "downloaded",
            Waiting(_) => "waiting",
            Halted => "halted",
            Installing => "installing",
            Interrupted => "interrupted",
            RollingBack(_) => "rolling_back",
            Installed => "installed",
            Failed(_) => "failed",
            RolledBack(_) => "rolled_back",
            Skipped(_) => "skipped",
        }
    }

    /// Every state a node can report, each reason once: for the docs' state table (a test checks
    /// that OPERATIONS.md explains each) and for exhaustive tests.
    pub fn every() -> Vec<ReleaseState> {
        use ReleaseState::*;
        let mut all = vec![Available, Queued, Downloading, Downloaded];
        all.extend(WaitReason::ALL.iter().map(|w| Waiting(*w)));
        all.extend([Installing, Halted, Interrupted, Installed]);
        for c in RollbackCause::ALL {
            all.push(RollingBack(*c));
            all.push(RolledBack(*c));
        }
        all.extend(FailReason::ALL.iter().map(|f| Failed(*f)));
        all.extend(SkipReason::ALL.iter().map(|s| Skipped(*s)));
        all
    }

    /// What the admin does about a node in this state, for status, the console and alerts;
    /// `None` when nothing is needed (on its way, or done).
    pub fn next_step(self) -> Option<&'static str> {
        use ReleaseState::*;
        Some(match self {
            Available | Queued | Downloading | Downloaded | Installing | Installed => return None,
            RollingBack(_) | RolledBack(RollbackCause::Yanked) | Skipped(_) => return None,
            Waiting(w) => match w {
                WaitReason::NotApproved => {
                    "approve the release for this node's ring (lanpatch-signer pending shows the command)"
                }
                WaitReason::NotBefore(_) => "nothing: it installs once the approval's not-before time has passed",
                WaitReason::OutsideWindow => {
                    "nothing: it installs in the node's next maintenance window (an approval --deadline or an urgent release overrides windows)"
                }
                WaitReason::ApprovalExpired => "approve the ring again (lanpatch-signer approve --replace)",
                WaitReason::Stale => {
                    "check the admin node (its timestamp_key) is running and this node reaches a peer: it installs nothing without a fresh statement"
                }
                WaitReason::NotInStatement => {
                    "nothing, usually: a newer statement is on its way; if it lasts, check that the node reaches its peers"
                }
                WaitReason::Wave => "nothing: it installs when its rollout wave opens",
                WaitReason::TooFewReports => {
                    "check that the node reaches its ring's peers: it does not install past the first wave blind"
                }
                WaitReason::PackageManagerBusy => {
                    "let apt or unattended-upgrades finish (or find who holds dpkg's lock); the node tries again"
                }
            },
            Halted => "read the failing nodes' output, fix the cause, then approve --replace (counts afresh) or yank",
            Interrupted => "nothing: the node resolves it (detect, else rollback) when it starts again",
            RolledBack(RollbackCause::TimedOut | RollbackCause::Interrupted) => {
                "retried inside the approval's retry rule; once spent, fix the cause and approve --replace"
            }
            RolledBack(_) | Failed(FailReason::CommandFailed) | Failed(FailReason::NoRollback) => {
                "read the output tail, fix the release or the host, then approve --replace to try again (or yank)"
            }
            Failed(f) if f.is_transient() => {
                "retried inside the approval's retry rule; once spent, fix the cause and approve --replace"
            }
            Failed(FailReason::RollbackFailed) => {
                "the host needs hands-on repair: read the output tail of the rollback"
            }
            Failed(FailReason::Tampered) => {
                "a stored file changed on the node's disk: check the disk, then approve --replace to fetch it again"
            }
            Failed(FailReason::BrokenPackages) => {
                "repair the host's packages (dpkg --audit, dpkg --configure -a), then approve --replace"
            }
            Failed(FailReason::MissingDependency) => {
                "install the missing dependency on the host or add it to a new release (the output names it)"
            }
            Failed(FailReason::Conflicts) => {
                "remove the conflicting package from the host or make a new release without the clash"
            }
            Failed(_) => "read the output tail, fix the cause, then approve --replace",
        })
    }

    /// A short, stable label for people (status tables). Never parsed back.
    pub fn label(self) -> String {
        use ReleaseState::*;
        match self {
            Available => "available".into(),
            Queued => "queued".into(),
            Downloading => "downloading".into(),
            Downloaded => "downloaded".into(),
            Waiting(w) => format!(
                "waiting ({})",
                match w {
                    WaitReason::NotApproved => "not approved for this ring".to_string(),
                    WaitReason::NotBefore(t) => format!("not before {}", t.rfc3339()),
                    WaitReason::OutsideWindow => "outside the maintenance window".to_string(),
                    WaitReason::ApprovalExpired => "the approval expired".to_string(),
                    WaitReason::Stale => "no fresh timestamp statement".to_string(),
                    WaitReason::NotInStatement => "not current in the timestamp statement".to_string(),
                    WaitReason::Wave => "its rollout wave has not opened".to_string(),
                    WaitReason::TooFewReports => "too few reports from its ring".to_string(),
                    WaitReason::PackageManagerBusy => "another package manager holds dpkg's lock".to_string(),
                }
            ),
            Halted => "halted (the ring's failure rate crossed the approval's threshold)".into(),
            Installing => "installing".into(),
            Interrupted => "interrupted".into(),
            RollingBack(c) => format!("rolling back ({})", c.label()),
            Installed => "installed".into(),
            Failed(f) => format!("failed ({})", f.label()),
            RolledBack(c) => format!("rolled back ({})", c.label()),
            Skipped(s) => format!(
                "skipped ({})",
                match s {
                    SkipReason::NotTargeted => "not targeted",
                    SkipReason::Yanked => "yanked",
                    SkipReason::Expired => "expired",
                }
            ),
        }
    }
}

impl WaitReason {
    /// Every reason, `NotBefore` with a placeholder time.
    pub const ALL: &'static [WaitReason] = &[
        WaitReason::NotApproved,
        WaitReason::NotBefore(Timestamp(0)),
        WaitReason::OutsideWindow,
        WaitReason::ApprovalExpired,
        WaitReason::Stale,
        WaitReason::NotInStatement,
        WaitReason::Wave,
        WaitReason::TooFewReports,
        WaitReason::PackageManagerBusy,
    ];
}

impl SkipReason {
    pub const ALL: &'static [SkipReason] = &[SkipReason::NotTargeted, SkipReason::Yanked, SkipReason::Expired];
}

impl FailReason {
    pub const ALL: &'static [FailReason] = &[
        FailReason::DiskFull,
        FailReason::OverQuota,
        FailReason::DownloadError,
        FailReason::StageError,
        FailReason::Tampered,
        FailReason::CommandFailed,
        FailReason::TimedOut,
        FailReason::Interrupted,
        FailReason::RollbackFailed,
        FailReason::NoRollback,
        FailReason::LowDisk,
        FailReason::MissingDependency,
        FailReason::PreviousNotKept,
        FailReason::BrokenPackages,
        FailReason::Conflicts,
    ];

    /// A cause that may be gone at a later attempt (the disk, the network, the clock, another
    /// process), as opposed to the release's own content or commands.
    pub fn is_transient(self) -> bool {
        use FailReason::*;
        matches!(
            self,
            DiskFull | OverQuota | LowDisk | DownloadError | StageError | TimedOut | Interrupted | PreviousNotKept
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            FailReason::DiskFull => "disk full",
            FailReason::OverQuota => "over cache quota",
            FailReason::LowDisk => "would leave too little free disk",
            FailReason::DownloadError => "download error",
            FailReason::StageError => "cannot stage files",
            FailReason::Tampered => "stored file does not match its signed hash",
            FailReason::CommandFailed => "install command failed",
            FailReason::TimedOut => "install timed out",
            FailReason::Interrupted => "interrupted",
            FailReason::RollbackFailed => "rollback failed",
            FailReason::NoRollback => "no rollback command",
            FailReason::MissingDependency => "a package dependency is missing",
            FailReason::PreviousNotKept => "cannot keep the packages it replaces",
            FailReason::BrokenPackages => "dpkg reported broken packages before the install",
            FailReason::Conflicts => "a package conflicts with one on the host",
        }
    }
}

impl RollbackCause {
    pub const ALL: &'static [RollbackCause] =
        &[RollbackCause::InstallFailed, RollbackCause::TimedOut, RollbackCause::Interrupted, RollbackCause::Yanked];

    pub fn label(self) -> &'static str {
        match self {
            RollbackCause::InstallFailed => "install failed",
            RollbackCause::TimedOut => "install timed out",
            RollbackCause::Interrupted => "install interrupted",
            RollbackCause::Yanked => "yanked",
        }
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// Something that happened to a release on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The release targets this node and fits the cache: queue its download.
    Queue,
    NotTargeted,
    DownloadStarted,
    DownloadFinished,
    /// The download failed. The caller removed the partial files first if the disk was full.
    DownloadFailed(FailReason),
    /// The release's files could not be copied into the staging directory.
    StageFailed(FailReason),
    /// The installer looked and the release must wait.
    Wait(WaitReason),
    /// The ring's failure rate crossed the approval's threshold.
    Halt,
    /// The host already has the release (its detect command exited 0, or every Debian package
    /// is at or above the release's version), before an install was started: counts as
    /// installed.
    AlreadyInstalled,
    /// The node refused to start the install (a missing dependency, the replaced packages could
    /// not be kept).
    Refused(FailReason),
    InstallStarted,
    InstallSucceeded,
    /// The install failed (or an interrupted install was found at start and detect said no).
    /// `has_rollback`: whether the manifest has a rollback command.
    InstallFailed {
        cause: RollbackCause,
        has_rollback: bool,
    },
    /// The node is stopping and killed the running install after its grace period.
    Interrupted,
    RollbackSucceeded,
    RollbackFailed,
    /// The release was yanked. `rollback`: the yank asks installed nodes to roll back.
    Yanked {
        rollback: bool,
        has_rollback: bool,
    },
    /// The manifest expired.
    Expired,
    /// Try again after a failure (the approval's retry rule, or a newer approval): the release
    /// starts over as `Available`, in a new attempt.
    Retry,
}

/// What the owner must do after a transition, besides persisting and reporting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Run the release's rollback command.
    RunRollback,
    /// What is installed changed: send a fresh inventory.
    InventoryChanged,
}

/// The result of [`step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The state changes to this; persist, report, then run the effects.
    To(ReleaseState, Vec<Effect>),
    /// The event does not apply in this state (late, duplicate or out of order): nothing changes.
    Ignored,
}

/// The transition function. Pure: the owner persists and reports whatever it returns.
pub fn step(state: ReleaseState, event: Event) -> Step {
    use Event as E;
    use ReleaseState as S;
    let to = |s: ReleaseState| Step::To(s, Vec::new());
    let before_install = state.rank() < S::Installing.rank();
    match (state, event) {
        (S::Available, E::Queue) => to(S::Queued),
        (S::Available | S::Downloaded | S::Waiting(_) | S::Halted, E::NotTargeted) => {
            to(S::Skipped(SkipReason::NotTargeted))
        }
        (S::Available | S::Queued, E::DownloadStarted) => to(S::Downloading),
        (S::Available | S::Queued | S::Downloading, E::DownloadFinished) => to(S::Downloaded),
        (S::Available | S::Queued | S::Downloading, E::DownloadFailed(why)) => to(S::Failed(why)),
        (S::Downloaded | S::Waiting(_) | S::Halted, E::StageFailed(why)) => to(S::Failed(why)),
        (S::Downloaded | S::Waiting(_) | S::Halted, E::Wait(why)) if state != S::Waiting(why) => to(S::Waiting(why)),
        (S::Downloaded | S::Waiting(_), E::Halt) => to(S::Halted),
        (S::Downloaded | S::Waiting(_) | S::Halted, E::AlreadyInstalled) => {
            Step::To(S::Installed, vec![Effect::InventoryChanged])
        }
        (S::Downloaded | S::Waiting(_) | S::Halted, E::Refused(why)) => to(S::Failed(why)),
        (S::Downloaded | S::Waiting(_) | S::Halted, E::InstallStarted) => to(S::Installing),
        (S::Installing | S::Interrupted, E::InstallSucceeded) => Step::To(S::Installed, vec![Effect::InventoryChanged]),
        (S::Installing | S::Interrupted, E::InstallFailed { cause, has_rollback }) => {
            if has_rollback {
                Step::To(S::RollingBack(cause), vec![Effect::RunRollback])
            } else {
                to(S::Failed(match cause {
                    RollbackCause::TimedOut => FailReason::TimedOut,
                    RollbackCause::Interrupted => FailReason::Interrupted,
                    _ => FailReason::CommandFailed,
                }))
            }
        }
        (S::Installing, E::Interrupted) => to(S::Interrupted),
        (S::RollingBack(cause), E::RollbackSucceeded) => Step::To(S::RolledBack(cause), vec![Effect::InventoryChanged]),
        (S::RollingBack(_), E::RollbackFailed) => to(S::Failed(FailReason::RollbackFailed)),
        (S::Installed, E::Yanked { rollback: true, has_rollback: true }) => {
            Step::To(S::RollingBack(RollbackCause::Yanked), vec![Effect::RunRollback])
        }
        (S::Installed, E::Yanked { rollback: true, has_rollback: false }) => to(S::Failed(FailReason::NoRollback)),
        (_, E::Yanked { .. }) if before_install => to(S::Skipped(SkipReason::Yanked)),
        (_, E::Expired) if before_install => to(S::Skipped(SkipReason::Expired)),
        (_, E::Retry) if state.retry_kind().is_some() => to(S::Available),
        _ => Step::Ignored,
    }
}

#[cfg(test)]
mod every_tests {
    use super::*;

    /// A new variant or reason breaks this match until it is added to `every()` and given its
    /// next step (and the docs' table: tidy::every_node_state_is_explained_in_operations).
    #[test]
    fn every_lists_each_state_and_reason_once() {
        let all = ReleaseState::every();
        let mut seen = std::collections::BTreeSet::new();
        for s in &all {
            let key = match s {
                ReleaseState::Waiting(WaitReason::NotBefore(_)) => "waiting not before".to_string(),
                ReleaseState::Available
                | ReleaseState::Queued
                | ReleaseState::Downloading
                | ReleaseState::Downloaded
                | ReleaseState::Waiting(_)
                | ReleaseState::Installing
                | ReleaseState::Halted
                | ReleaseState::Interrupted
                | ReleaseState::RollingBack(_)
                | ReleaseState::Installed
                | ReleaseState::Failed(_)
                | ReleaseState::RolledBack(_)
                | ReleaseState::Skipped(_) => format!("{s:?}"),
            };
            assert!(seen.insert(key), "{s:?} listed twice");
        }
        assert_eq!(
            all.len(),
            4 + WaitReason::ALL.len()
                + 4
                + 2 * RollbackCause::ALL.len()
                + FailReason::ALL.len()
                + SkipReason::ALL.len()
        );
        for w in WaitReason::ALL {
            match w {
                WaitReason::NotApproved
                | WaitReason::NotBefore(_)
                | WaitReason::OutsideWindow
                | WaitReason::ApprovalExpired
                | WaitReason::Stale
                | WaitReason::NotInStatement
                | WaitReason::Wave
                | WaitReason::TooFewReports
                | WaitReason::PackageManagerBusy => {}
            }
        }
        for f in FailReason::ALL {
            match f {
                FailReason::DiskFull
                | FailReason::OverQuota
                | FailReason::DownloadError
                | FailReason::StageError
                | FailReason::Tampered
                | FailReason::CommandFailed
                | FailReason::TimedOut
                | FailReason::Interrupted
                | FailReason::RollbackFailed
                | FailReason::NoRollback
                | FailReason::LowDisk
                | FailReason::MissingDependency
                | FailReason::PreviousNotKept
                | FailReason::BrokenPackages
                | FailReason::Conflicts => {}
            }
        }
        assert_eq!(WaitReason::ALL.len(), 9, "a new WaitReason goes into WaitReason::ALL");
        assert_eq!(FailReason::ALL.len(), 15, "a new FailReason goes into FailReason::ALL");
        assert_eq!(RollbackCause::ALL.len(), 4);
        assert_eq!(SkipReason::ALL.len(), 3);
    }

    #[test]
    fn every_failure_and_every_wait_names_what_the_admin_does() {
        for s in ReleaseState::every() {
            let needs = s.is_failure()
                || matches!(s, ReleaseState::Waiting(_) | ReleaseState::Halted | ReleaseState::Interrupted);
            assert_eq!(s.next_step().is_some(), needs, "{s:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn after(events: &[Event]) -> ReleaseState {
        events.iter().fold(ReleaseState::Available, |s, e| match step(s, *e) {
            Step::To(n, _) => n,
            Step::Ignored => s,
        })
    }

    #[test]
    fn happy_path_reaches_installed_and_asks_for_a_new_inventory() {
        let s = after(&[
            Event::Queue,
            Event::DownloadStarted,
            Event::DownloadFinished,
            Event::Wait(WaitReason::OutsideWindow),
            Event::InstallStarted,
        ]);
        assert_eq!(s, ReleaseState::Installing);
        assert_eq!(step(s, Event::InstallSucceeded), Step::To(ReleaseState::Installed, vec![Effect::InventoryChanged]));
    }

    #[test]
    fn failed_install_with_rollback_command_rolls_back_and_counts_as_failure() {
        let s = after(&[Event::Queue, Event::DownloadFinished, Event::InstallStarted]);
        let cause = RollbackCause::InstallFailed;
        assert_eq!(
            step(s, Event::InstallFailed { cause, has_rollback: true }),
            Step::To(ReleaseState::RollingBack(cause), vec![Effect::RunRollback])
        );
        let done = after(&[
            Event::Queue,
            Event::DownloadFinished,
            Event::InstallStarted,
            Event::InstallFailed { cause, has_rollback: true },
            Event::RollbackSucceeded,
        ]);
        assert_eq!(done, ReleaseState::RolledBack(cause));
        assert!(done.is_failure() && done.is_final());
    }

    #[test]
    fn yank_after_install_rolls_back_and_is_not_a_failure() {
        let s = after(&[
            Event::Queue,
            Event::DownloadFinished,
            Event::InstallStarted,
            Event::InstallSucceeded,
            Event::Yanked { rollback: true, has_rollback: true },
            Event::RollbackSucceeded,
        ]);
        assert_eq!(s, ReleaseState::RolledBack(RollbackCause::Yanked));
        assert!(!s.is_failure());
    }

    #[test]
    fn yank_before_install_skips_and_yank_without_rollback_keeps_installed() {
        assert_eq!(
            after(&[Event::Queue, Event::Yanked { rollback: false, has_rollback: true }]),
            ReleaseState::Skipped(SkipReason::Yanked)
        );
        let installed = after(&[Event::Queue, Event::DownloadFinished, Event::InstallStarted, Event::InstallSucceeded]);
        assert_eq!(step(installed, Event::Yanked { rollback: false, has_rollback: true }), Step::Ignored);
    }

    #[test]
    fn disk_full_download_or_staging_fails_with_a_typed_reason() {
        assert_eq!(
            step(ReleaseState::Downloading, Event::DownloadFailed(FailReason::DiskFull)),
            Step::To(ReleaseState::Failed(FailReason::DiskFull), vec![])
        );
        assert_eq!(
            step(ReleaseState::Waiting(WaitReason::OutsideWindow), Event::StageFailed(FailReason::DiskFull)),
            Step::To(ReleaseState::Failed(FailReason::DiskFull), vec![])
        );
    }

    #[test]
    fn interrupted_install_is_resolved_at_next_start() {
        let s = after(&[Event::Queue, Event::DownloadFinished, Event::InstallStarted, Event::Interrupted]);
        assert_eq!(s, ReleaseState::Interrupted);
        assert_eq!(
            step(s, Event::InstallFailed { cause: RollbackCause::Interrupted, has_rollback: false }),
            Step::To(ReleaseState::Failed(FailReason::Interrupted), vec![])
        );
        assert_eq!(step(s, Event::InstallSucceeded), Step::To(ReleaseState::Installed, vec![Effect::InventoryChanged]));
    }

    #[test]
    fn expiry_before_install_skips_and_never_touches_an_installed_release() {
        assert_eq!(
            after(&[Event::Queue, Event::DownloadFinished, Event::Expired]),
            ReleaseState::Skipped(SkipReason::Expired)
        );
        let installed = after(&[Event::Queue, Event::DownloadFinished, Event::InstallStarted, Event::InstallSucceeded]);
        assert_eq!(step(installed, Event::Expired), Step::Ignored);
    }

    #[test]
    fn a_halted_release_resumes_only_through_the_installer_and_never_after_installing() {
        let halted = after(&[Event::Queue, Event::DownloadFinished, Event::Wait(WaitReason::Wave), Event::Halt]);
        assert_eq!(halted, ReleaseState::Halted);
        assert!(!halted.is_failure() && !halted.is_outcome());
        // A new approval: the installer looks again and waits or starts.
        assert_eq!(
            step(halted, Event::Wait(WaitReason::Wave)),
            Step::To(ReleaseState::Waiting(WaitReason::Wave), vec![])
        );
        assert_eq!(step(halted, Event::InstallStarted), Step::To(ReleaseState::Installing, vec![]));
        assert_eq!(
            step(halted, Event::Yanked { rollback: false, has_rollback: true }),
            Step::To(ReleaseState::Skipped(SkipReason::Yanked), vec![])
        );
        // Installed nodes are not halted.
        let installed = after(&[Event::Queue, Event::DownloadFinished, Event::InstallStarted, Event::InstallSucceeded]);
        assert_eq!(step(installed, Event::Halt), Step::Ignored);
    }

    #[test]
    fn final_states_ignore_every_event() {
        for s in [
            ReleaseState::Failed(FailReason::CommandFailed),
            ReleaseState::RolledBack(RollbackCause::Yanked),
            ReleaseState::Skipped(SkipReason::NotTargeted),
        ] {
            for e in all_events() {
                if e == Event::Retry && s.retry_kind().is_some() {
                    continue;
                }
                assert_eq!(step(s, e), Step::Ignored, "{s:?} {e:?}");
            }
        }
    }

    #[test]
    fn a_host_already_at_the_release_counts_as_installed_and_a_refusal_is_a_failure() {
        let waiting = after(&[Event::Queue, Event::DownloadFinished, Event::Wait(WaitReason::PackageManagerBusy)]);
        assert_eq!(
            step(waiting, Event::AlreadyInstalled),
            Step::To(ReleaseState::Installed, vec![Effect::InventoryChanged])
        );
        assert!(ReleaseState::Installed.is_installed());
        let refused = after(&[Event::Queue, Event::DownloadFinished, Event::Refused(FailReason::MissingDependency)]);
        assert_eq!(refused, ReleaseState::Failed(FailReason::MissingDependency));
        assert!(refused.is_failure());
        // A Debian release the host has none of is not targeted, even once downloaded.
        let downloaded = after(&[Event::Queue, Event::DownloadFinished]);
        assert_eq!(
            step(downloaded, Event::NotTargeted),
            Step::To(ReleaseState::Skipped(SkipReason::NotTargeted), vec![])
        );
    }

    #[test]
    fn a_failure_starts_a_new_attempt_only_through_retry_and_yank_rollbacks_are_not_retried() {
        let transient = ReleaseState::Failed(FailReason::DownloadError);
        assert_eq!(transient.retry_kind(), Some(true));
        assert_eq!(step(transient, Event::Retry), Step::To(ReleaseState::Available, vec![]));
        let script = ReleaseState::RolledBack(RollbackCause::InstallFailed);
        assert_eq!(script.retry_kind(), Some(false));
        assert_eq!(step(script, Event::Retry), Step::To(ReleaseState::Available, vec![]));
        assert_eq!(ReleaseState::RolledBack(RollbackCause::TimedOut).retry_kind(), Some(true));
        for s in [
            ReleaseState::Installed,
            ReleaseState::RolledBack(RollbackCause::Yanked),
            ReleaseState::Skipped(SkipReason::NotTargeted),
            ReleaseState::Waiting(WaitReason::NotApproved),
        ] {
            assert_eq!(s.retry_kind(), None);
            assert_eq!(step(s, Event::Retry), Step::Ignored, "{s:?}");
        }
        assert!(!FailReason::CommandFailed.is_transient() && !FailReason::Tampered.is_transient());
        assert!(FailReason::TimedOut.is_transient() && FailReason::DiskFull.is_transient());
    }

    fn all_events() -> Vec<Event> {
        let mut v = vec![
            Event::Queue,
            Event::NotTargeted,
            Event::DownloadStarted,
            Event::DownloadFinished,
            Event::AlreadyInstalled,
            Event::Refused(FailReason::MissingDependency),
            Event::Retry,
            Event::InstallStarted,
            Event::InstallSucceeded,
            Event::Interrupted,
            Event::RollbackSucceeded,
            Event::RollbackFailed,
            Event::Expired,
            Event::Halt,
        ];
        for f in [FailReason::DiskFull, FailReason::OverQuota, FailReason::LowDisk, FailReason::DownloadError] {
            v.push(Event::DownloadFailed(f));
            v.push(Event::StageFailed(f));
        }
        for w in [
            WaitReason::NotApproved,
            WaitReason::NotBefore(Timestamp(5)),
            WaitReason::OutsideWindow,
            WaitReason::ApprovalExpired,
            WaitReason::Stale,
            WaitReason::NotInStatement,
            WaitReason::Wave,
            WaitReason::TooFewReports,
        ] {
            v.push(Event::Wait(w));
        }
        for cause in [RollbackCause::InstallFailed, RollbackCause::TimedOut, RollbackCause::Interrupted] {
            for has_rollback in [true, false] {
                v.push(Event::InstallFailed { cause, has_rollback });
            }
        }
        for rollback in [true, false] {
            for has_rollback in [true, false] {
                v.push(Event::Yanked { rollback, has_rollback });
            }
        }
        v
    }

    /// A restart: the owner reloads the persisted state, so it is the identity on state; what a
    /// restarted node may do is replay any earlier event. Modelled by replaying a random prefix.
    #[derive(Clone, Debug)]
    enum Input {
        Event(usize),
        RestartReplaying(usize),
    }

    proptest! {
        #[test]
        fn no_sequence_of_events_or_restarts_moves_a_reported_state_backwards_within_an_attempt(
            inputs in proptest::collection::vec(
                prop_oneof![
                    (0usize..32).prop_map(Input::Event),
                    (0usize..32).prop_map(Input::RestartReplaying),
                ],
                0..60,
            )
        ) {
            let events = all_events();
            let mut state = ReleaseState::Available;
            let mut history: Vec<Event> = Vec::new();
            // A retry starts the next attempt; listeners order reports by (attempt, rank).
            let mut attempt = 0u32;
            let mut reported = vec![(attempt, state.rank())];
            for input in inputs {
                let batch: Vec<Event> = match input {
                    Input::Event(i) => vec![events[i % events.len()]],
                    Input::RestartReplaying(n) => history.iter().take(n).copied().collect(),
                };
                for e in batch {
                    history.push(e);
                    if let Step::To(next, _) = step(state, e) {
                        if e == Event::Retry {
                            prop_assert!(state.retry_kind().is_some() && next == ReleaseState::Available);
                            attempt += 1;
                            state = next;
                            reported.push((attempt, state.rank()));
                            continue;
                        }
                        prop_assert!(next.rank() >= state.rank(), "{state:?} -> {next:?} on {e:?}");
                        prop_assert!(!state.is_final(), "final {state:?} replaced by {next:?}");
                        if state == ReleaseState::Installed {
                            prop_assert!(matches!(next, ReleaseState::RollingBack(RollbackCause::Yanked) | ReleaseState::Failed(FailReason::NoRollback)));
                        }
                        prop_assert_ne!(next, state);
                        state = next;
                        reported.push((attempt, state.rank()));
                    }
                }
            }
            for w in reported.windows(2) {
                prop_assert!(w[1] >= w[0]);
            }
        }
    }
}
