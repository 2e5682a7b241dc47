//! Freshness statements (TUF's timestamp role): a short-lived, signed list of what is current.
//!
//! The admin workstation's node holds an online `timestamp` key and signs, every few minutes and
//! whenever its metadata changes, a statement of the fleet's current set: per product the latest
//! manifest, the rings it is approved for, and whether it is yanked. A node installs nothing
//! without a valid statement younger than its `max_staleness` (indefinite freeze), and nothing
//! the newest statement does not list as current (a newer version, a yank or a withdrawn approval
//! it has not received: fast-forward and mix-and-match).

use serde::{Deserialize, Serialize};

use crate::ValidationError;
use crate::lifecycle::WaitReason;
use crate::limits::Limits;
use crate::signed::{Kind, Payload};
use crate::types::{Hash32, ProductName, RingName, Timestamp, Version};
use crate::verify::Expiring;

/// One product's current release in a statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub product: ProductName,
    pub version: Version,
    pub manifest: Hash32,
    /// Rings with a valid approval for this manifest, sorted.
    pub rings: Vec<RingName>,
    pub yanked: bool,
}

/// The signed statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The fleet it speaks for.
    pub fleet: Hash32,
    /// Nodes keep the statement with the latest `issued`; an older one is refused (S5).
    pub issued: Timestamp,
    pub expires: Timestamp,
    /// One entry per product, sorted by product.
    pub current: Vec<Current>,
}

impl Payload for Statement {
    const KIND: Kind = Kind::Statement;
    const NAME: &'static str = "timestamp statement";
    fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.expires <= self.issued {
            return Err(ValidationError::field("expires", "must be after issued"));
        }
        if self.current.len() > limits.max_list_items {
            return Err(ValidationError::TooMany {
                field: "current releases",
                count: self.current.len(),
                max: limits.max_list_items,
            });
        }
        for c in &self.current {
            if c.rings.len() > limits.max_list_items {
                return Err(ValidationError::TooMany {
                    field: "rings",
                    count: c.rings.len(),
                    max: limits.max_list_items,
                });
            }
        }
        Ok(())
    }
}

impl Expiring for Statement {
    fn expires(&self) -> Timestamp {
        self.expires
    }
}

/// Step S6 for one release on one node: may it be installed under `statement`, at `now`, by a
/// node of `ring` that accepts statements no older than `max_staleness` seconds?
pub fn statement_allows(
    statement: Option<&Statement>,
    manifest: &Hash32,
    product: &ProductName,
    ring: &RingName,
    now: Timestamp,
    max_staleness: u64,
) -> Result<(), WaitReason> {
    let Some(st) = statement else { return Err(WaitReason::Stale) };
    if st.expires <= now || st.issued.0.saturating_add(max_staleness) < now.0 {
        return Err(WaitReason::Stale);
    }
    match st.current.iter().find(|c| &c.product == product) {
        Some(c) if &c.manifest == manifest && !c.yanked && c.rings.contains(ring) => Ok(()),
        _ => Err(WaitReason::NotInStatement),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(issued: u64, expires: u64, current: Vec<Current>) -> Statement {
        Statement { fleet: Hash32([1; 32]), issued: Timestamp(issued), expires: Timestamp(expires), current }
    }
    fn cur(manifest: u8, rings: &[&str], yanked: bool) -> Current {
        Current {
            product: "tool".parse().unwrap(),
            version: Version(u64::from(manifest)),
            manifest: Hash32([manifest; 32]),
            rings: rings.iter().map(|r| r.parse().unwrap()).collect(),
            yanked,
        }
    }
    fn check(s: Option<&Statement>, manifest: u8, now: u64) -> Result<(), WaitReason> {
        statement_allows(
            s,
            &Hash32([manifest; 32]),
            &"tool".parse().unwrap(),
            &"canary".parse().unwrap(),
            Timestamp(now),
            600,
        )
    }

    #[test]
    fn a_current_approved_release_under_a_fresh_statement_may_install() {
        let s = st(1000, 1900, vec![cur(2, &["canary"], false)]);
        assert_eq!(check(Some(&s), 2, 1100), Ok(()));
    }

    #[test]
    fn no_statement_an_expired_one_or_one_older_than_max_staleness_is_a_freeze() {
        assert_eq!(check(None, 2, 1100), Err(WaitReason::Stale));
        let s = st(1000, 1900, vec![cur(2, &["canary"], false)]);
        assert_eq!(check(Some(&s), 2, 1900), Err(WaitReason::Stale), "expired");
        assert_eq!(check(Some(&s), 2, 1601), Err(WaitReason::Stale), "older than max_staleness");
    }

    #[test]
    fn a_newer_version_listed_is_a_fast_forward_the_node_missed() {
        let s = st(1000, 1900, vec![cur(3, &["canary"], false)]);
        assert_eq!(check(Some(&s), 2, 1100), Err(WaitReason::NotInStatement));
    }

    #[test]
    fn a_withheld_yank_or_a_withdrawn_approval_is_mix_and_match() {
        let yanked = st(1000, 1900, vec![cur(2, &["canary"], true)]);
        assert_eq!(check(Some(&yanked), 2, 1100), Err(WaitReason::NotInStatement));
        let other_ring = st(1000, 1900, vec![cur(2, &["broad"], false)]);
        assert_eq!(check(Some(&other_ring), 2, 1100), Err(WaitReason::NotInStatement));
        let unknown = st(1000, 1900, vec![]);
        assert_eq!(check(Some(&unknown), 2, 1100), Err(WaitReason::NotInStatement));
    }
}
