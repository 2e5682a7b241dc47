//! Approvals (release X may be installed in ring R) and yanks (release X is withdrawn).

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::Limits;
use crate::signed::{Kind, Payload};
use crate::types::{Hash32, ProductName, RingName, Timestamp, Version};

/// Permission for the nodes of one ring to install one manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// BLAKE3 of the manifest's signed payload.
    pub manifest: Hash32,
    /// Copied from the manifest for readable logs; a node checks they match.
    pub product: ProductName,
    pub version: Version,
    pub ring: RingName,
    pub issued: Timestamp,
    /// Nodes do not install before this time.
    pub not_before: Timestamp,
    /// After this time nodes install at once, ignoring their maintenance windows.
    pub deadline: Option<Timestamp>,
    pub expires: Timestamp,
    /// Set when an admin overrode the ring gate; the reason is part of the signed record.
    pub forced_reason: Option<String>,
    /// How the ring's nodes pace and stop the rollout themselves (see `rollout::wave_gate`).
    /// `None`: every node installs once its gates pass, and nothing halts the ring.
    pub rules: Option<RolloutRules>,
    /// How often a node tries again after a transient failure ([`crate::FailReason::is_transient`]).
    /// `None`: never; only a newer approval tries again.
    pub retry: Option<Retry>,
}

/// Retries of transient failures: at most `count` more attempts per node, each at least
/// `spacing_secs` after the failure before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub count: u8,
    pub spacing_secs: u32,
}

/// Most retries an approval may ask for.
pub const MAX_RETRIES: u8 = 20;

/// Signed rollout rules: a failure-rate brake and phased waves inside the ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRules {
    /// The ring halts when failures exceed this share of the counted outcomes, in basis points
    /// (500 = 5 %).
    pub max_failure_bp: u16,
    /// Outcomes (installed or failed) needed before the failure rate counts, and reports from
    /// the ring a node must hold before it installs past the first wave.
    pub min_reports: u32,
    /// Cumulative shares of the ring, in order; the last one is 100 %.
    pub waves: Vec<Wave>,
}

/// One wave: the nodes whose hash falls below `percent` (and above the previous wave's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Cumulative percent of the ring, 1..=100.
    pub percent: u8,
    /// After this wave reached `min_success` installs, the next wave waits this long.
    pub min_soak_secs: u64,
    /// Installs in this wave before the next opens (fewer when the wave has fewer nodes).
    pub min_success: u32,
}

/// Most waves in a ring.
pub const MAX_WAVES: usize = 10;

/// What a yank asks nodes to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum YankAction {
    /// Stop downloading and installing; leave installed nodes as they are.
    StopInstalls,
    /// Stop, and run the rollback command where the release is installed.
    RollBack,
}

/// Withdraws a release everywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yank {
    pub manifest: Hash32,
    pub product: ProductName,
    pub version: Version,
    pub action: YankAction,
    pub reason: String,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

impl Payload for Approval {
    const KIND: Kind = Kind::Approval;
    const NAME: &'static str = "approval";

    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if let Some(r) = &self.forced_reason
            && (r.trim().is_empty() || r.len() > limits.max_text_bytes)
        {
            return Err(ValidationError::field("forced reason", "must be non-empty and within the text limit"));
        }
        if self.expires <= self.issued {
            return Err(ValidationError::field("expires", "must be after issued"));
        }
        if self.deadline.is_some_and(|d| d < self.not_before) {
            return Err(ValidationError::field("deadline", "must not be before not-before"));
        }
        if let Some(r) = &self.rules {
            r.validate()?;
        }
        if let Some(r) = &self.retry
            && (r.count == 0 || r.count > MAX_RETRIES || r.spacing_secs == 0 || r.spacing_secs > 7 * 86_400)
        {
            return Err(ValidationError::field("retry", "1 to 20 retries, spaced 1 s to 7 days"));
        }
        Ok(())
    }
}

impl RolloutRules {
    /// One line for people: "halt above 5 % failed (counted from 3 outcomes); waves 10 % (soak
    /// 3600 s, 1 install), 100 %".
    pub fn describe(&self) -> String {
        let waves: Vec<String> = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i + 1 == self.waves.len() {
                    format!("{} %", w.percent)
                } else {
                    format!("{} % (soak {} s, {} install(s))", w.percent, w.min_soak_secs, w.min_success)
                }
            })
            .collect();
        format!(
            "halt above {} % failed (counted from {} outcomes); waves {}",
            f64::from(self.max_failure_bp) / 100.0,
            self.min_reports,
            waves.join(", ")
        )
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.max_failure_bp > 10_000 {
            return Err(ValidationError::field("max failure rate", "must be at most 100 %"));
        }
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(ValidationError::TooMany { field: "waves", count: self.waves.len(), max: MAX_WAVES });
        }
        let mut last = 0u8;
        for w in &self.waves {
            if w.percent <= last || w.percent > 100 {
                return Err(ValidationError::field("waves", "percents must increase, each 1 to 100"));
            }
            last = w.percent;
        }
        if last != 100 {
            return Err(ValidationError::field("waves", "the last wave must be 100 %"));
        }
        Ok(())
    }
}

impl Payload for Yank {
    const KIND: Kind = Kind::Yank;
    const NAME: &'static str = "yank";

    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.reason.len() > limits.max_text_bytes {
            return Err(ValidationError::TooLong {
                field: "reason",
                len: self.reason.len(),
                max: limits.max_text_bytes,
            });
        }
        if self.expires <= self.issued {
            return Err(ValidationError::field("expires", "must be after issued"));
        }
        Ok(())
    }
}
