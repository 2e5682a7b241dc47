//! Report anti-entropy. A node publishes each report once, at its transition; a listener that
//! missed it (a collector that was down, a ring peer behind a partition) learns that from the
//! node's [`Digest`] (the sequence numbers of its latest messages, a few dozen bytes per release)
//! and asks for exactly what it lacks with a [`Pull`]. Nothing is re-broadcast on a timer: a
//! node's traffic is one digest per change burst and one per inventory interval, whatever the
//! fleet's size or its release history.

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::limits::Limits;
use crate::report::FromNode;
use crate::signed::{Kind, Payload};
use crate::types::{Hash32, PublicKey, RingName, Timestamp};

/// The latest report a node made about one release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub manifest: Hash32,
    pub seq: u64,
}

/// What a node has said lately: its latest report of each release it still trusts (newest
/// first, at most `max_list_items`) and its latest inventory. Signed by the node's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub node: PublicKey,
    pub hostname: String,
    pub ring: RingName,
    pub at: Timestamp,
    /// The sequence number of the node's latest inventory (0: none sent yet).
    pub inventory: u64,
    pub reports: Vec<Mark>,
    /// The author's node certificate (see `Report::certificate`).
    pub certificate: Option<crate::Envelope>,
}

/// Who a pull asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullTarget {
    /// Every node: send your digest (a collector that just joined asks this once).
    Everyone,
    /// One node: send these messages again.
    Node(PublicKey),
}

/// A listener's request for messages it lacks. Signed by the asking node's key. A node answers
/// each message at most once per re-send gap, and only pulls stamped within
/// [`PULL_MAX_AGE_SECS`] of its clock, so a replayed or repeated pull cannot make it flood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub node: PublicKey,
    pub target: PullTarget,
    pub at: Timestamp,
    /// Send the latest inventory again.
    pub inventory: bool,
    /// Send the latest report about each of these releases again.
    pub reports: Vec<Hash32>,
    /// The author's node certificate (see `Report::certificate`).
    pub certificate: Option<crate::Envelope>,
}

/// A pull older (or further in the future) than this, by the receiver's clock, is ignored.
pub const PULL_MAX_AGE_SECS: u64 = 600;

impl Pull {
    /// Is this pull recent enough to answer at `now`?
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now.0.abs_diff(self.at.0) <= PULL_MAX_AGE_SECS
    }
}

impl Payload for Digest {
    const KIND: Kind = Kind::Digest;
    const NAME: &'static str = "digest";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.hostname.len() > limits.max_short_bytes {
            return Err(ValidationError::TooLong {
                field: "hostname",
                len: self.hostname.len(),
                max: limits.max_short_bytes,
            });
        }
        if self.reports.len() > limits.max_list_items {
            return Err(ValidationError::TooMany {
                field: "digest reports",
                count: self.reports.len(),
                max: limits.max_list_items,
            });
        }
        Ok(())
    }
}

impl Payload for Pull {
    const KIND: Kind = Kind::Pull;
    const NAME: &'static str = "pull";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.reports.len() > limits.max_list_items {
            return Err(ValidationError::TooMany {
                field: "pull reports",
                count: self.reports.len(),
                max: limits.max_list_items,
            });
        }
        if self.target == PullTarget::Everyone && (self.inventory || !self.reports.is_empty()) {
            return Err(ValidationError::field("pull", "a pull of everyone asks for digests only"));
        }
        Ok(())
    }
}

impl FromNode for Digest {
    fn node(&self) -> PublicKey {
        self.node
    }
    fn certificate(&self) -> Option<&crate::Envelope> {
        self.certificate.as_ref()
    }
    fn ring(&self) -> Option<&RingName> {
        Some(&self.ring)
    }
    fn hostname(&self) -> Option<&str> {
        Some(&self.hostname)
    }
}
impl FromNode for Pull {
    fn node(&self) -> PublicKey {
        self.node
    }
    fn certificate(&self) -> Option<&crate::Envelope> {
        self.certificate.as_ref()
    }
    fn ring(&self) -> Option<&RingName> {
        None
    }
    fn hostname(&self) -> Option<&str> {
        None
    }
}

/// What a listener that holds `stored` (its latest sequence number per release of this node, and
/// of its inventory) lacks from `digest`. `want_inventory` is false where the listener does not
/// keep inventories (a ring peer).
pub fn missing(
    digest: &Digest,
    want_inventory: bool,
    stored_inventory: Option<u64>,
    stored: impl Fn(&Hash32) -> Option<u64>,
) -> (bool, Vec<Hash32>) {
    let inventory = want_inventory && digest.inventory > 0 && stored_inventory.is_none_or(|s| s < digest.inventory);
    let reports =
        digest.reports.iter().filter(|m| stored(&m.manifest).is_none_or(|s| s < m.seq)).map(|m| m.manifest).collect();
    (inventory, reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(reports: &[(u8, u64)], inventory: u64) -> Digest {
        Digest {
            node: PublicKey([1; 32]),
            hostname: "n".into(),
            ring: "broad".parse().expect("ring"),
            at: Timestamp(100),
            inventory,
            reports: reports.iter().map(|(h, seq)| Mark { manifest: Hash32([*h; 32]), seq: *seq }).collect(),
            certificate: None,
        }
    }

    #[test]
    fn missing_lists_the_releases_whose_stored_report_is_older_or_absent() {
        let d = digest(&[(1, 10), (2, 20), (3, 30)], 5);
        let stored = |h: &Hash32| match h.0[0] {
            1 => Some(10),
            2 => Some(19),
            _ => None,
        };
        let (inv, reports) = missing(&d, true, Some(5), stored);
        assert!(!inv, "the stored inventory is as new as the digest's");
        assert_eq!(reports, vec![Hash32([2; 32]), Hash32([3; 32])]);
    }

    #[test]
    fn missing_asks_for_an_inventory_only_where_inventories_are_kept() {
        let d = digest(&[], 7);
        assert_eq!(missing(&d, true, Some(6), |_| None), (true, vec![]));
        assert_eq!(missing(&d, true, None, |_| None), (true, vec![]));
        assert_eq!(missing(&d, false, None, |_| None), (false, vec![]));
        assert_eq!(missing(&digest(&[], 0), true, None, |_| None), (false, vec![]), "no inventory sent yet");
    }

    #[test]
    fn a_pull_outside_ten_minutes_of_the_clock_is_stale() {
        let p = Pull {
            node: PublicKey([2; 32]),
            target: PullTarget::Everyone,
            at: Timestamp(10_000),
            inventory: false,
            reports: vec![],
            certificate: None,
        };
        assert!(p.is_fresh(Timestamp(10_000 + PULL_MAX_AGE_SECS)));
        assert!(p.is_fresh(Timestamp(10_000 - PULL_MAX_AGE_SECS)));
        assert!(!p.is_fresh(Timestamp(10_001 + PULL_MAX_AGE_SECS)));
        assert!(!p.is_fresh(Timestamp(9_999 - PULL_MAX_AGE_SECS)));
    }

    #[test]
    fn a_pull_of_everyone_may_ask_only_for_digests() {
        let p = Pull {
            node: PublicKey([2; 32]),
            target: PullTarget::Everyone,
            at: Timestamp(1),
            inventory: true,
            reports: vec![],
            certificate: None,
        };
        assert!(p.validate(&Limits::default()).is_err());
    }
}
