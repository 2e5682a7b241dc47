//! Upstream work of one download: the chunks nobody at this site holds, split among the site's
//! nodes that want the release, fetched by a handful of them (the fetchers, see wan.rs) from an
//! origin or from a peer at another site. This module keeps the origin's health (backoff,
//! failures, bad origins) and who owns which chunk; release.rs starts the requests.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lanpatch_protocol::Hash32;
use lanpatch_protocol::control::RefusalKind;
use libp2p::PeerId;
use tokio::time::Instant;

use super::fetch::FetchError;
use crate::metrics::OriginFailure;
use crate::shared::Shared;
use crate::wan;

/// Origin fetching starts once every peer asked in the first have-map round has answered (or
/// failed), so that chunks a site peer already holds are not fetched across the WAN, and at the
/// latest this long after the download started, so that a peer slow to answer on a loaded site
/// does not hold up the site's origin work. Who fetches does not wait on answers: a connected
/// peer that has not answered counts as a participant. On an idle LAN the answers are in within
/// tens of milliseconds; a fixed 0.8 s wait was 6 % of the physical limit of a 32 MiB release
/// over a 20 Mbit/s link.
pub const ORIGIN_SETTLE: Duration = Duration::from_millis(800);
const BACKOFF_MS: u64 = 1500;
/// An origin that delivered a chunk this recently is alive: a failed request is congestion.
const ORIGIN_ALIVE: Duration = Duration::from_secs(30);

/// A peer at another site that holds `flat`, spread over the holders by chunk (every call for
/// the same chunk picks the same one while the holders stay the same).
pub fn remote_holder(
    remote: &HashMap<PeerId, Vec<bool>>,
    flat: usize,
    seed: u64,
    banned: impl Fn(&PeerId) -> bool,
) -> Option<PeerId> {
    let mut holders: Vec<PeerId> = remote
        .iter()
        .filter(|(p, bits)| bits.get(flat).copied().unwrap_or(false) && !banned(p))
        .map(|(p, _)| *p)
        .collect();
    if holders.is_empty() {
        return None;
    }
    holders.sort_by_key(|p| p.to_bytes());
    let at = ((flat as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % holders.len();
    Some(holders[at])
}

/// The origins' health and this node's share of the upstream work.
pub struct Upstream {
    pub origins: Vec<String>,
    bad: HashSet<usize>,
    backoff: Instant,
    /// Consecutive failures per origin; reset by a success.
    failures: HashMap<usize, u32>,
    /// When each origin last delivered a chunk: a failure soon after is congestion on the way to
    /// a live origin (a shaped WAN link dropping handshakes), not a dead origin.
    ok: HashMap<usize, Instant>,
    pub was_fetcher: bool,
    /// The fetcher set last seen, and each chunk's owner among it (`wan::assign`).
    fetcher_set: Vec<Vec<u8>>,
    owners: Vec<usize>,
}

impl Upstream {
    pub fn new(origins: Vec<String>) -> Self {
        Upstream {
            origins,
            bad: HashSet::new(),
            backoff: Instant::now(),
            failures: HashMap::new(),
            ok: HashMap::new(),
            was_fetcher: false,
            fetcher_set: Vec::new(),
            owners: Vec::new(),
        }
    }

    pub fn usable_origin(&self) -> Option<usize> {
        (0..self.origins.len()).find(|i| !self.bad.contains(i))
    }

    /// The usable origin failed its last request.
    pub fn origin_failing(&self) -> bool {
        self.usable_origin().is_some_and(|oi| self.failures.get(&oi).is_some_and(|f| *f > 0))
    }

    /// A usable origin may be asked now.
    pub fn origin_ready(&self) -> bool {
        self.usable_origin().is_some() && Instant::now() >= self.backoff
    }

    /// When the origin backoff ends, if it runs.
    pub fn backoff_end(&self) -> Option<Instant> {
        (self.usable_origin().is_some() && self.backoff > Instant::now()).then_some(self.backoff)
    }

    /// This node's place among the site's fetchers chosen from `participants` (this node
    /// included), or `None`; recomputes who owns which chunk when the set changed.
    pub fn role(&mut self, s: &Shared, hash: &Hash32, participants: &[PeerId], chunks: usize) -> Option<usize> {
        let ids: Vec<Vec<u8>> = participants.iter().map(|p| p.to_bytes()).collect();
        // Only a handful of the site's nodes fetch from the origin (see wan.rs); the others
        // have no origin work at all and spend nothing on it.
        let fetchers: Vec<&Vec<u8>> =
            wan::fetchers(hash, &ids, s.cfg.site_origin_fetchers).into_iter().map(|i| &ids[i]).collect();
        let my_id = s.net.local.to_bytes();
        let me_at = fetchers.iter().position(|f| **f == my_id);
        if me_at.is_some() != self.was_fetcher {
            self.was_fetcher = me_at.is_some();
            tracing::debug!(manifest = %hash.short(), participants = participants.len(), fetcher = self.was_fetcher, "origin fetcher role changed");
        }
        // Recomputed only when the fetcher set changes. A fetcher whose set changes hands chunks
        // to or takes them from others: logged, as a changed set on a site that did not change
        // is how ranges get fetched twice.
        if fetchers.iter().map(|f| f.as_slice()).ne(self.fetcher_set.iter().map(Vec::as_slice)) {
            self.fetcher_set = fetchers.iter().map(|f| (*f).clone()).collect();
            self.owners = wan::assign(hash, chunks, &fetchers);
            if self.was_fetcher {
                let set: Vec<String> = fetchers
                    .iter()
                    .filter_map(|f| PeerId::from_bytes(f).ok())
                    .map(|p| p.to_base58().chars().rev().take(6).collect())
                    .collect();
                tracing::debug!(manifest = %hash.short(), participants = participants.len(), fetchers = ?set, "origin fetcher set");
            }
        }
        if s.cfg.site_origin_limit > 0 {
            let share = s.cfg.site_origin_limit / fetchers.len().max(1) as u64;
            let rate = if s.cfg.origin_limit > 0 { share.min(s.cfg.origin_limit) } else { share };
            s.origin_limit.set_rate(rate.max(1));
        }
        me_at
    }

    /// Of `candidates`, the chunks owned by the fetcher at `at`, in this node's order.
    pub fn mine(&self, at: usize, candidates: Vec<usize>, seed: u64) -> Vec<usize> {
        let mut mine: Vec<usize> = candidates.into_iter().filter(|c| self.owners.get(*c) == Some(&at)).collect();
        mine.sort_by_key(|c| (*c as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        mine
    }

    pub fn succeeded(&mut self, oi: usize) {
        self.failures.remove(&oi);
        self.ok.insert(oi, Instant::now());
    }

    /// An origin request failed: wrong bytes or a refused redirect drop the origin for the
    /// release; other failures back off, and drop it after `origin_max_failures` in a row if
    /// another origin is left.
    pub async fn failed(&mut self, s: &Shared, oi: usize, flat: usize, e: FetchError) {
        let from = format!("origin {}", self.origins.get(oi).map(String::as_str).unwrap_or("?"));
        let bad = matches!(e, FetchError::Bad(_) | FetchError::BadLength(_) | FetchError::Redirect(_));
        s.metrics.origin_failed(if bad { OriginFailure::Bad } else { OriginFailure::Error });
        let alive = self.ok.get(&oi).is_some_and(|t| t.elapsed() < ORIGIN_ALIVE);
        if bad {
            self.bad.insert(oi);
            s.refuse(from, RefusalKind::OriginChunk, format!("{e}; not using this origin for the rest of the release"))
                .await;
            return;
        }
        if alive {
            // Congestion: try again soon, and do not count it towards dropping the origin.
            tracing::info!(origin = %from, chunk = flat, "origin request failed: {e}; the origin is alive (congestion?), next try in {BACKOFF_MS} ms");
            self.backoff = Instant::now() + Duration::from_millis(BACKOFF_MS);
            return;
        }
        let failures = self.failures.entry(oi).or_default();
        *failures += 1;
        // The last usable origin is not dropped for failures that may be transient: this node
        // owns a share of the site's origin work, and without an origin it would hold that share
        // until the others see it stall.
        let another = (0..self.origins.len()).any(|i| i != oi && !self.bad.contains(&i));
        if *failures >= s.cfg.origin_max_failures && another {
            let why = format!("{e}; {failures} failures in a row, not using this origin for the rest of the release");
            self.bad.insert(oi);
            s.refuse(from, RefusalKind::OriginFailing, why).await;
        } else {
            // Exponential backoff: 1.5 s, 3 s, 6 s ... at most 60 s (12 s for the last usable
            // origin).
            let cap = if another { 60_000 } else { 12_000 };
            let wait = (BACKOFF_MS << (*failures - 1).min(6)).min(cap);
            tracing::warn!(origin = %from, chunk = flat, failures = *failures, "origin request failed: {e}; next try in {wait} ms");
            self.backoff = Instant::now() + Duration::from_millis(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_held_at_other_sites_goes_to_one_unbanned_holder_the_same_each_time_and_spread_by_chunk() {
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let mut remote = HashMap::new();
        for (i, p) in peers.iter().enumerate() {
            // Peer i holds the chunks whose index is not i (mod 4).
            remote.insert(*p, (0..64).map(|c| c % 4 != i).collect::<Vec<bool>>());
        }
        let none_banned = |_: &PeerId| false;
        let mut picked = HashSet::new();
        for c in 0..64 {
            let h = remote_holder(&remote, c, 7, none_banned).unwrap();
            assert!(remote[&h][c], "chunk {c} went to a peer that does not hold it");
            assert_eq!(remote_holder(&remote, c, 7, none_banned), Some(h), "not stable");
            picked.insert(h);
        }
        assert_eq!(picked.len(), 4, "every holder gets a share");
        let banned = peers[1];
        for c in 0..64 {
            assert_ne!(remote_holder(&remote, c, 7, |p| *p == banned), Some(banned));
        }
        assert_eq!(remote_holder(&remote, 64, 7, none_banned), None, "beyond the release");
        assert_eq!(remote_holder(&HashMap::new(), 3, 7, none_banned), None);
    }
}
