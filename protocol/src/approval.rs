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
}

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
