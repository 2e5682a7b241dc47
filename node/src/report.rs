//! Signed reports from this node (release state changes, inventory) and, on a collector, the
//! storage of everyone's reports.
//!
//! Reports are made by the lifecycle owner (`lifecycle.rs`) for every transition, with a sequence
//! number from [`Seq`] that only goes up, across restarts too (it is persisted with the transition).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use lanpatch_protocol::report::{FromNode, verify_node_envelope};
use lanpatch_protocol::{
    DownloadProgress, Envelope, Hash32, Inventory, Kind, Limits, Payload, ProductName, PublicKey, ReleaseState, Report,
    RingName, Signed, VerifyError, Version,
};

use crate::clock::{now, now_ms};
use crate::membership::{Budgeted, Members, Seen};
use crate::store::{Store, StoredReport};
use lanpatch_protocol::{MemberRefusal, RefusalReason};

/// The node's report and inventory sequence: `max(last + 1, now in ms)`, so it survives restarts
/// (the last value is persisted) and a lost database (the clock).
#[derive(Clone)]
pub struct Seq(Arc<AtomicU64>);

impl Seq {
    pub fn starting_after(last: u64) -> Seq {
        Seq(Arc::new(AtomicU64::new(last)))
    }
    pub fn next(&self) -> u64 {
        let ms = now_ms();
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = ms.max(cur + 1);
            match self.0.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Signs this node's reports and inventories with its node key.
pub struct Reporter {
    key: ed25519_dalek::SigningKey,
    pub hostname: String,
    pub ring: RingName,
    pub limits: Limits,
    pub seq: Seq,
    /// This node's membership: its certificate is carried by every message it signs (`None`:
    /// enrollment off). Read at each signature, so a certificate renewed by a reload is used at once.
    members: Option<Arc<Members>>,
}

/// What a report is about.
#[derive(Clone, Debug)]
pub struct ReleaseRef {
    pub hash: Hash32,
    pub product: ProductName,
    pub version: Version,
}

impl Reporter {
    pub fn new(
        key: ed25519_dalek::SigningKey,
        hostname: &str,
        ring: RingName,
        limits: Limits,
        seq: Seq,
        members: Option<Arc<Members>>,
    ) -> Self {
        // Whole up to the limit a report's fields allow (a certificate's host name always fits: the
        // messages must show it exactly), cut on a character boundary beyond.
        let mut end = hostname.len().min(limits.max_short_bytes);
        while !hostname.is_char_boundary(end) {
            end -= 1;
        }
        Reporter { key, hostname: hostname[..end].to_string(), ring, limits, seq, members }
    }

    /// This node's certificate, as its messages carry it.
    pub fn certificate(&self) -> Option<Envelope> {
        self.members.as_ref().map(|m| m.own_envelope())
    }

    pub fn node_public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs a node message (report, inventory, digest, pull) with the node key.
    pub fn sign<T: Payload>(&self, value: T) -> Vec<u8> {
        let mut s = Signed::new(value);
        s.sign(&self.key);
        s.to_bytes()
    }

    /// A signed report of `state`; returns its sequence number and bytes. The detail is cut to
    /// the limit (keeping its end, where a failing command's last words are).
    pub fn report(
        &self,
        release: &ReleaseRef,
        state: ReleaseState,
        detail: &str,
        exit_code: Option<i32>,
        progress: Option<DownloadProgress>,
        attempt: u32,
    ) -> (u64, Vec<u8>) {
        let max = self.limits.max_text_bytes;
        let detail = if detail.len() > max {
            let cut = detail.len() - max;
            let start = (cut..detail.len()).find(|i| detail.is_char_boundary(*i)).unwrap_or(detail.len());
            detail[start..].to_string()
        } else {
            detail.to_string()
        };
        let seq = self.seq.next();
        let value = Report {
            node: self.node_public(),
            hostname: self.hostname.clone(),
            ring: self.ring.clone(),
            manifest: release.hash,
            product: release.product.clone(),
            version: release.version,
            state,
            detail,
            exit_code,
            at: now(),
            seq,
            progress,
            certificate: self.certificate(),
            attempt,
        };
        (seq, self.sign(value))
    }

    /// The same report under the next sequence number and the current time: what a node sends
    /// again when a listener pulls it (new bytes, so gossip delivers it as a new message).
    pub fn restamp(&self, mut report: Report) -> (u64, Vec<u8>) {
        report.seq = self.seq.next();
        report.at = now();
        report.certificate = self.certificate();
        (report.seq, self.sign(report))
    }

    /// Signs an inventory with the next sequence number.
    pub fn inventory(&self, mut inv: Inventory) -> (u64, Vec<u8>) {
        inv.seq = self.seq.next();
        inv.certificate = self.certificate();
        (inv.seq, self.sign(inv))
    }
}

/// What a node keeps of the fleet's reports.
#[derive(Clone, Copy)]
pub enum Keeps<'a> {
    /// A collector: every report and inventory.
    Everything,
    /// Any other node: the reports of its own ring (the approval's rollout rules count them).
    Ring(&'a RingName),
}

/// What [`accept_node_envelope`] did with a valid message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Stored, newer than what was there: a report of this node's ring, or (collector) anything.
    Stored,
    /// Valid, but not kept (older than what is stored, or not this node's to keep).
    Passed,
}

/// Who a node message comes from, and what that allows.
#[derive(Clone, Copy)]
pub enum Author<'a> {
    /// This node's own message.
    Local,
    /// From the network: its author must be a member now, for the ring it speaks for (step N4,
    /// when `members` is set), and a report is kept only about a release in `known` (a member
    /// cannot make others store reports about releases that do not exist).
    Peer { members: Option<&'a Members>, known: &'a (dyn Fn(&Hash32) -> bool + Sync) },
}

/// Why a node message from the network was refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeMessageError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("author is not a member: {0}")]
    Member(#[from] MemberRefusal),
    #[error("the author sent more than {} {} this minute", .0.per_minute(), .0.what())]
    OverBudget(Budgeted),
    /// No newer than what this node saw from the author: a replay, or news that came late.
    #[error("not newer than what was seen from the author")]
    Stale,
}

impl NodeMessageError {
    /// Whether the refusal depends on this node's clock or on news its peers may not have yet
    /// (an expiry, a revocation): the forwarder is not at fault.
    pub fn is_timing(&self) -> bool {
        match self {
            NodeMessageError::Member(m) => matches!(m.reason(), RefusalReason::Expired | RefusalReason::Revoked),
            // The forwarder passed it on within its own view of the budget.
            NodeMessageError::OverBudget(_) | NodeMessageError::Stale => true,
            NodeMessageError::Verify(_) => false,
        }
    }
}

/// Step N4 for a message from a peer (nothing for this node's own), then its author's budget.
pub fn check_author<T: FromNode>(author: Author<'_>, msg: &T, seen: Seen, value: u64) -> Result<(), NodeMessageError> {
    match author {
        Author::Peer { members: Some(m), .. } => {
            m.check_author(msg, now())?;
            // A replay (of this member's own old messages, by anyone) is neither charged to
            // the member's budget nor forwarded: otherwise replays could use up the budget and
            // silence it.
            if !m.is_new(&msg.node(), seen, value) {
                return Err(NodeMessageError::Stale);
            }
            if !m.within_budget(&msg.node(), Budgeted::Reports, now()) {
                return Err(NodeMessageError::OverBudget(Budgeted::Reports));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a node report or inventory (steps N1 to N4) and keeps what `keeps` says if it is newer
/// than what is stored.
pub async fn accept_node_message(
    store: &Store,
    keeps: Keeps<'_>,
    limits: &Limits,
    bytes: &[u8],
    author: Author<'_>,
) -> Result<Kept, NodeMessageError> {
    let envelope = Envelope::decode(bytes, limits).map_err(VerifyError::from)?;
    accept_node_envelope(store, keeps, limits, envelope, bytes, author).await
}

/// [`accept_node_message`] for an envelope decoded (step N1) at the edge from `bytes`.
pub async fn accept_node_envelope(
    store: &Store,
    keeps: Keeps<'_>,
    limits: &Limits,
    envelope: Envelope,
    bytes: &[u8],
    author: Author<'_>,
) -> Result<Kept, NodeMessageError> {
    let kind = envelope.kind;
    let stored = |r: Result<bool>| match r {
        Ok(true) => Kept::Stored,
        Ok(false) => Kept::Passed,
        Err(e) => {
            tracing::error!("cannot store node report: {e:#}");
            Kept::Passed
        }
    };
    let kept = match kind {
        Kind::Report => {
            let r = verify_node_envelope::<Report>(envelope, limits)?;
            let v = r.value();
            check_author(author, v, Seen::Report(v.manifest), v.seq)?;
            let known = match author {
                Author::Local => true,
                Author::Peer { known, .. } => known(&v.manifest),
            };
            let keep = known
                && match keeps {
                    Keeps::Everything => true,
                    Keeps::Ring(ring) => v.ring == *ring,
                };
            if keep {
                stored(
                    store
                        .put_report(StoredReport {
                            node: v.node().0.to_vec(),
                            manifest: v.manifest,
                            seq: v.seq,
                            rank: v.order(),
                            ring: v.ring.to_string(),
                            received: now().0,
                            envelope: bytes.to_vec(),
                        })
                        .await,
                )
            } else {
                Kept::Passed
            }
        }
        Kind::Inventory => {
            let i = verify_node_envelope::<Inventory>(envelope, limits)?;
            check_author(author, i.value(), Seen::Inventory, i.value().seq)?;
            match keeps {
                Keeps::Everything => {
                    let v = i.value();
                    stored(store.put_inventory(v.node().0.to_vec(), v.seq, bytes.to_vec()).await)
                }
                Keeps::Ring(_) => Kept::Passed,
            }
        }
        other => {
            return Err(VerifyError::Signature(lanpatch_protocol::SignatureError::WrongKind {
                expected: Kind::Report,
                actual: other,
            })
            .into());
        }
    };
    Ok(kept)
}
