//! Report anti-entropy on a node (docs/PROTOCOL.md "Reports"; the messages are in
//! `lanpatch_protocol::sync`). Reports and inventories are published once, when they are made;
//! this module makes sure a listener that missed one gets it, without re-broadcasting anything on
//! a timer:
//!
//! - [`digest_loop`] publishes this node's [`Digest`] `report_digest_secs` after its reports or
//!   inventory change, when asked (a new peer, a collector's pull of everyone), and once every
//!   `inventory_interval_secs` as the node's heartbeat.
//! - [`on_digest`]: a collector (and a peer of the digest's ring, for the rollout rules) compares
//!   a digest with what it stored and, after a random pause in which someone else's pull may
//!   already have brought the message, publishes a [`Pull`] for what it still lacks.
//! - [`on_pull`]: the node named sends those messages again, each at most once per
//!   [`RESEND_GAP`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use lanpatch_protocol::report::verify_node_envelope;
use lanpatch_protocol::sync::{Digest, Mark, Pull, PullTarget, missing};
use lanpatch_protocol::{Envelope, Hash32, Kind, Limits, Report, Signed};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::now;
use crate::report::NodeMessageError;
use crate::shared::Shared;

pub mod state;

pub use state::RESEND_GAP;
use state::{Answer, lock, may_send_again, take_turn};

/// A pull waits up to this many digest delays (at random) before it goes out, and a digest asked
/// of everyone waits up to this many more: the fleet's answers spread out instead of arriving at
/// once.
const SPREAD: u64 = 10;

fn random_below(max: u64) -> u64 {
    let mut b = [0u8; 8];
    if max == 0 || getrandom::fill(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % max
}

fn digest_delay(s: &Shared) -> Duration {
    Duration::from_secs(s.cfg.report_digest_secs.max(1))
}

/// Publishes this node's digest after a change, when asked, and every inventory interval.
pub async fn digest_loop(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.clone();
    let delay = digest_delay(&s);
    let heartbeat = Duration::from_secs(s.cfg.inventory_interval_secs.max(10));
    let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    loop {
        let wait = tokio::select! {
            _ = shutdown.changed() => return,
            _ = s.sync.changed.notified() => delay,
            _ = s.sync.asked.notified() => delay + Duration::from_millis(random_below(SPREAD * delay.as_millis() as u64)),
            _ = beat.tick() => Duration::ZERO,
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // Whatever changed while waiting is in this digest.
        let _ = take_notification(&s.sync.changed);
        beat.reset();
        if let Err(e) = send_digest(&s).await {
            tracing::debug!("digest not sent: {e:#}");
        }
    }
}

/// Consumes a stored notification, if any (the digest about to go out covers it).
fn take_notification(n: &Notify) -> bool {
    use std::future::Future;
    let fut = n.notified();
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    fut.as_mut().poll(&mut cx).is_ready()
}

/// This node's digest: its latest report of each release it still trusts, newest first, and its
/// latest inventory's sequence number.
async fn make_digest(s: &Shared) -> Result<Vec<u8>> {
    let limits = s.trust().limits.clone();
    let out = s.store.reports_out().await?;
    let mut reports: Vec<Mark> = {
        let t = s.trust();
        out.iter()
            .filter_map(|bytes| Signed::<Report>::decode(bytes, &limits).ok())
            .filter(|r| t.manifests.contains_key(&r.value().manifest))
            .map(|r| Mark { manifest: r.value().manifest, seq: r.value().seq })
            .collect()
    };
    reports.sort_by_key(|m| std::cmp::Reverse(m.seq));
    reports.truncate(limits.max_list_items);
    let inventory = s.store.inventory_out().await?.map(|(seq, _)| seq).unwrap_or(0);
    let d = Digest {
        node: s.node_public(),
        hostname: s.reporter.hostname.clone(),
        ring: s.cfg.ring.clone(),
        at: now(),
        inventory,
        reports,
        certificate: s.reporter.certificate(),
    };
    Ok(s.reporter.sign(d))
}

async fn send_digest(s: &Shared) -> Result<()> {
    let bytes = make_digest(s).await?;
    if s.cfg.collector {
        s.store.heard(s.node_public().0.to_vec(), now().0).await?;
    }
    s.net.publish(bytes).await
}

/// A peer arrived: reports made while no peer was subscribed (a node that resolved an install
/// right after a restart) go out now, restamped. Retried for a while: the new peer's gossip
/// subscription may follow its connection by a moment.
pub async fn send_unsent(s: Arc<Shared>) {
    for _ in 0..30 {
        let pending: Vec<Hash32> = lock(&s.sync.unsent).iter().copied().collect();
        if pending.is_empty() {
            return;
        }
        for hash in pending {
            if let Err(e) = s.lifecycle.restamp(hash).await {
                tracing::debug!("unsent report: {e:#}");
            }
        }
        let mut stop = s.shutdown.clone();
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A collector joined the fleet (its first ready peer): ask everyone for a digest, once per
/// [`RESEND_GAP`]. Retried for a while if gossip has no subscribed peer yet.
pub async fn pull_everyone(s: Arc<Shared>) {
    if !s.cfg.collector || !take_turn(&s.sync.pulled_everyone) {
        return;
    }
    let pull = Pull {
        node: s.node_public(),
        target: PullTarget::Everyone,
        at: now(),
        inventory: false,
        reports: vec![],
        certificate: s.reporter.certificate(),
    };
    let bytes = s.reporter.sign(pull);
    for _ in 0..30 {
        match s.net.publish_sent(bytes.clone()).await {
            Ok(true) => {
                tracing::debug!("asked every node for its digest");
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!("pull of everyone not sent: {e:#}");
                return;
            }
        }
        let mut stop = s.shutdown.clone();
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A digest or a pull from the network, its envelope decoded at the edge: verified (steps N2 and
/// N3: it validates and the node key it names signed it; N4: its author is a member for the ring
/// it names), held to its author's budget, then handled. Only a verification failure is the
/// sender's fault; the rest is logged.
pub async fn on_envelope(s: &Arc<Shared>, env: Envelope, limits: &Limits) -> Result<(), NodeMessageError> {
    use crate::membership::{Budgeted, Seen};
    let t = now();
    let handled = match env.kind {
        Kind::Digest => {
            let d = verify_node_envelope::<Digest>(env, limits)?;
            let v = d.value();
            if let Some(m) = &s.members {
                m.check_author(v, t)?;
                // Fresh, and newer than the author's last digest (a replay is not charged).
                let fresh = v.at.0.abs_diff(t.0) <= lanpatch_protocol::sync::PULL_MAX_AGE_SECS;
                if !fresh || !m.is_new(&v.node, Seen::Digest, v.at.0) {
                    return Err(NodeMessageError::Stale);
                }
                if !m.within_budget(&v.node, Budgeted::AntiEntropy, t) {
                    return Err(NodeMessageError::OverBudget(Budgeted::AntiEntropy));
                }
            }
            on_digest(s, v).await
        }
        _ => {
            let p = verify_node_envelope::<Pull>(env, limits)?;
            let v = p.value();
            if let Some(m) = &s.members {
                m.check_author(v, t)?;
                let target = match v.target {
                    PullTarget::Everyone => None,
                    PullTarget::Node(k) => Some(k),
                };
                if !v.is_fresh(t) || !m.is_new(&v.node, Seen::Pull(target), v.at.0) {
                    return Err(NodeMessageError::Stale);
                }
                // A pull of one node costs only that node work: only it holds the author to
                // the budget (every node forwarding it would otherwise drop a collector's
                // catch-up of a large fleet).
                let charged = target.is_none_or(|k| k == s.node_public());
                if charged && !m.within_budget(&v.node, Budgeted::AntiEntropy, t) {
                    return Err(NodeMessageError::OverBudget(Budgeted::AntiEntropy));
                }
            }
            on_pull(s, v).await
        }
    };
    if let Err(e) = handled {
        tracing::debug!("anti-entropy: {e:#}");
    }
    Ok(())
}

/// A verified digest from another node: a collector records that it was heard from, and pulls what
/// it (or, for its own ring, a ring peer) lacks.
pub async fn on_digest(s: &Arc<Shared>, digest: &Digest) -> Result<()> {
    let me = s.node_public();
    if digest.node == me {
        return Ok(());
    }
    let node = digest.node.0.to_vec();
    if s.cfg.collector {
        // The digest's own time (never past this clock): a replayed old digest cannot make a
        // silent node look alive.
        s.store.heard(node.clone(), digest.at.0.min(now().0)).await?;
    } else if digest.ring != s.cfg.ring {
        return Ok(());
    }
    // Only releases this node trusts: a digest naming others cannot make it pull (and so make
    // the fleet send) anything.
    let mut digest = digest.clone();
    {
        let t = s.trust();
        digest.reports.retain(|m| t.manifests.contains_key(&m.manifest));
    }
    if lacks(s, &digest).await?.is_none() {
        return Ok(());
    }
    // Someone else's pull may bring it meanwhile: wait, then look again.
    let s = s.clone();
    tokio::spawn(async move {
        let pause = Duration::from_millis(random_below(SPREAD * digest_delay(&s).as_millis() as u64 / 4));
        let mut stop = s.shutdown.clone();
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        match lacks(&s, &digest).await {
            Ok(Some((inventory, reports))) => {
                tracing::debug!(node = %digest.hostname, inventory, reports = reports.len(), "pulling missed messages");
                let pull = Pull {
                    node: me,
                    target: PullTarget::Node(digest.node),
                    at: now(),
                    inventory,
                    reports,
                    certificate: s.reporter.certificate(),
                };
                if let Err(e) = s.net.publish(s.reporter.sign(pull)).await {
                    tracing::debug!("pull not sent: {e:#}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("digest comparison: {e:#}"),
        }
    });
    Ok(())
}

/// What this node lacks of `digest`'s messages, if anything.
async fn lacks(s: &Shared, digest: &Digest) -> Result<Option<(bool, Vec<Hash32>)>> {
    let node = digest.node.0.to_vec();
    let stored: HashMap<Hash32, u64> = s.store.report_seqs(node.clone()).await?.into_iter().collect();
    let stored_inventory = if s.cfg.collector { s.store.inventory_seq(node).await? } else { None };
    let (inventory, reports) = missing(digest, s.cfg.collector, stored_inventory, |h| stored.get(h).copied());
    Ok((inventory || !reports.is_empty()).then_some((inventory, reports)))
}

/// A verified pull: a pull of everyone asks for this node's digest; a pull of this node, for
/// messages again.
pub async fn on_pull(s: &Arc<Shared>, pull: &Pull) -> Result<()> {
    if !pull.is_fresh(now()) {
        tracing::debug!(at = pull.at.0, "stale pull ignored");
        return Ok(());
    }
    match pull.target {
        PullTarget::Everyone => {
            if take_turn(&s.sync.everyone_asked) {
                s.sync.asked.notify_one();
            }
        }
        PullTarget::Node(target) if target == s.node_public() => {
            // Sent again as new messages (restamped: the same content under a new sequence
            // number), so gossip delivers them however recently the first copy went out.
            for hash in &pull.reports {
                if may_send_again(&s.sync, Answer::Report(*hash)) {
                    s.lifecycle.restamp(*hash).await?;
                }
            }
            if pull.inventory && may_send_again(&s.sync, Answer::Inventory) {
                s.sync.inventory_pulled.notify_one();
            }
        }
        PullTarget::Node(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_notification_is_consumed_once() {
        let n = Notify::new();
        n.notify_one();
        assert!(take_notification(&n));
        assert!(!take_notification(&n));
    }
}
