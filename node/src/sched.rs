//! Which chunk to ask from which peer: a plain state machine over plain data, no I/O.
//!
//! - Rarest first: among missing chunks nobody is fetching, the ones fewest usable peers hold go
//!   first, so rare pieces spread before the peers that hold them leave. Ties are broken by a
//!   per-node seed, so nodes that start together fetch different chunks and can trade at once.
//! - Per peer, at most `max_per_peer` requests are in flight. Among the holders of a chunk the
//!   least busy peer is asked, and on a tie the one holding the fewest chunks, which spares the
//!   seed for what only it has.
//! - End-game: once every missing chunk is in flight, idle capacity re-requests in-flight chunks
//!   from other peers (at most `ENDGAME_COPIES` requests per chunk), so one slow peer cannot hold
//!   up the last chunks.
//! - A peer that fails a request backs off for a while; a peer that sent a bad chunk is banned
//!   and never asked again.

use std::collections::HashMap;
use std::hash::Hash;

pub const ENDGAME_COPIES: usize = 2;

#[derive(Debug)]
struct PeerState {
    avail: Vec<bool>,
    avail_count: usize,
    inflight: usize,
    banned: bool,
    backoff_until_ms: u64,
}

impl PeerState {
    /// A peer of which nothing is known yet: no chunks out of `n`, nothing in flight.
    fn unknown(n: usize) -> Self {
        PeerState { avail: vec![false; n], avail_count: 0, inflight: 0, banned: false, backoff_until_ms: 0 }
    }
}

#[derive(Debug)]
pub struct Scheduler<P> {
    have: Vec<bool>,
    missing: usize,
    inflight: Vec<Vec<P>>,
    /// Chunks being fetched from an origin by this node.
    origin_inflight: Vec<bool>,
    peers: HashMap<P, PeerState>,
    max_per_peer: usize,
    seed: u64,
}

fn mix(x: u64) -> u64 {
    // splitmix64 finalizer: a cheap, well-spread tie-breaker.
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<P: Clone + Eq + Hash + Ord> Scheduler<P> {
    /// `have` is what this node already holds (e.g. resumed from disk).
    pub fn new(have: Vec<bool>, max_per_peer: usize, seed: u64) -> Self {
        let missing = have.iter().filter(|h| !**h).count();
        let n = have.len();
        Scheduler {
            have,
            missing,
            inflight: vec![Vec::new(); n],
            origin_inflight: vec![false; n],
            peers: HashMap::new(),
            max_per_peer: max_per_peer.max(1),
            seed,
        }
    }

    pub fn len(&self) -> usize {
        self.have.len()
    }
    pub fn is_empty(&self) -> bool {
        self.have.is_empty()
    }
    pub fn missing(&self) -> usize {
        self.missing
    }
    pub fn is_done(&self) -> bool {
        self.missing == 0
    }

    /// Peer requests in flight.
    pub fn inflight_total(&self) -> usize {
        self.inflight.iter().map(Vec::len).sum()
    }

    /// Records what a peer holds. A map of the wrong size is ignored.
    pub fn set_peer_have(&mut self, peer: P, avail: Vec<bool>) {
        if avail.len() != self.have.len() {
            return;
        }
        let avail_count = avail.iter().filter(|a| **a).count();
        let e = self.peers.entry(peer).or_insert_with(|| PeerState::unknown(0));
        e.avail = avail;
        e.avail_count = avail_count;
    }

    /// Peers the scheduler knows (with a have-map).
    pub fn peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers.keys().cloned()
    }

    /// Whether, as far as this scheduler knows, the peer holds every chunk (a failed request
    /// clears the chunk from its map, so such a peer is asked for its map again).
    pub fn peer_has_all(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.avail.iter().all(|a| *a))
    }

    pub fn remove_peer(&mut self, peer: &P) {
        self.peers.remove(peer);
        for list in &mut self.inflight {
            list.retain(|p| p != peer);
        }
    }

    pub fn ban(&mut self, peer: &P) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.banned = true;
        }
    }

    pub fn is_banned(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.banned)
    }

    fn usable(&self, p: &PeerState, now_ms: u64) -> bool {
        !p.banned && p.backoff_until_ms <= now_ms && p.inflight < self.max_per_peer
    }

    /// Picks the requests to send now, and marks them in flight.
    pub fn next_requests(&mut self, now_ms: u64) -> Vec<(P, usize)> {
        let mut out = Vec::new();
        // Rarity of every missing chunk nobody is fetching yet.
        let mut candidates: Vec<(usize, u64, usize)> = Vec::new();
        for c in 0..self.have.len() {
            if self.have[c] || !self.inflight[c].is_empty() || self.origin_inflight[c] {
                continue;
            }
            let holders = self.peers.values().filter(|p| !p.banned && p.avail[c]).count();
            if holders > 0 {
                candidates.push((holders, mix(c as u64 ^ self.seed), c));
            }
        }
        candidates.sort_unstable();
        for (_, _, c) in candidates {
            if let Some(peer) = self.pick_peer(c, now_ms) {
                self.assign(peer.clone(), c);
                out.push((peer, c));
            }
        }
        // End-game: everything missing is in flight; duplicate onto idle peers.
        let unassigned =
            (0..self.have.len()).any(|c| !self.have[c] && self.inflight[c].is_empty() && !self.origin_inflight[c]);
        if !unassigned {
            let mut inflight_chunks: Vec<usize> =
                (0..self.have.len()).filter(|c| !self.have[*c] && self.inflight[*c].len() < ENDGAME_COPIES).collect();
            inflight_chunks.sort_by_key(|c| (self.inflight[*c].len(), mix(*c as u64 ^ self.seed)));
            for c in inflight_chunks {
                if let Some(peer) = self.pick_peer(c, now_ms) {
                    self.assign(peer.clone(), c);
                    out.push((peer, c));
                }
            }
        }
        out
    }

    fn pick_peer(&self, c: usize, now_ms: u64) -> Option<P> {
        self.peers
            .iter()
            .filter(|(id, p)| self.usable(p, now_ms) && p.avail[c] && !self.inflight[c].contains(id))
            .min_by(|(ia, a), (ib, b)| (a.inflight, a.avail_count, *ia).cmp(&(b.inflight, b.avail_count, *ib)))
            .map(|(id, _)| id.clone())
    }

    fn assign(&mut self, peer: P, c: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight += 1;
        }
        self.inflight[c].push(peer);
    }

    fn release(&mut self, peer: &P, c: usize) {
        if let Some(list) = self.inflight.get_mut(c)
            && let Some(pos) = list.iter().position(|p| p == peer)
        {
            list.remove(pos);
            if let Some(p) = self.peers.get_mut(peer) {
                p.inflight = p.inflight.saturating_sub(1);
            }
        }
    }

    /// Missing chunks that no usable peer holds and nobody is fetching: the origin's work.
    pub fn origin_candidates(&self) -> Vec<usize> {
        (0..self.have.len())
            .filter(|&c| {
                !self.have[c]
                    && self.inflight[c].is_empty()
                    && !self.origin_inflight[c]
                    && !self.peers.values().any(|p| !p.banned && p.avail[c])
            })
            .collect()
    }

    pub fn start_origin(&mut self, c: usize) {
        if let Some(f) = self.origin_inflight.get_mut(c) {
            *f = true;
        }
    }

    pub fn origin_inflight(&self) -> usize {
        self.origin_inflight.iter().filter(|f| **f).count()
    }

    /// An origin fetch ended: with the chunk (returns whether it was new) or without.
    pub fn origin_finished(&mut self, c: usize, got_it: bool) -> bool {
        if let Some(f) = self.origin_inflight.get_mut(c) {
            *f = false;
        }
        if !got_it || c >= self.have.len() || self.have[c] {
            return false;
        }
        self.have[c] = true;
        self.missing -= 1;
        true
    }

    /// A verified chunk arrived. Returns false if it was already held (an end-game duplicate).
    pub fn completed(&mut self, peer: &P, c: usize) -> bool {
        self.release(peer, c);
        if c >= self.have.len() || self.have[c] {
            return false;
        }
        self.have[c] = true;
        self.missing -= 1;
        true
    }

    /// A request failed (timeout, I/O, not found): the peer backs off, the chunk is free again.
    /// The peer holds the chunk but is serving as many as it will at once: ask again soon (it
    /// keeps the chunk in its map, unlike a failure).
    pub fn busy(&mut self, peer: &P, c: usize, now_ms: u64, backoff_ms: u64) {
        self.release(peer, c);
        if let Some(p) = self.peers.get_mut(peer) {
            p.backoff_until_ms = now_ms + backoff_ms;
        }
    }

    /// The peer (a seed sending each chunk once) sent this chunk to someone else: ask the others
    /// first. The chunk leaves the peer's map until its next one, with no backoff, so the peer
    /// is asked for other chunks at once.
    pub fn elsewhere(&mut self, peer: &P, c: usize) {
        self.release(peer, c);
        if let Some(a) = self.peers.get_mut(peer).and_then(|p| p.avail.get_mut(c)) {
            *a = false;
        }
    }

    /// The peer was named as holding chunk `c` (by the seed that sent it there): it goes into
    /// the peer's map until its next one. A peer with no map yet gets one with just that chunk.
    pub fn hint(&mut self, peer: P, c: usize) {
        let n = self.have.len();
        if c >= n {
            return;
        }
        let p = self.peers.entry(peer).or_insert_with(|| PeerState::unknown(n));
        if !p.avail[c] {
            p.avail[c] = true;
            p.avail_count += 1;
        }
    }

    pub fn failed(&mut self, peer: &P, c: usize, now_ms: u64, backoff_ms: u64) {
        // It evidently does not have it (any more); do not ask again until its next map.
        self.elsewhere(peer, c);
        if let Some(p) = self.peers.get_mut(peer) {
            p.backoff_until_ms = now_ms + backoff_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(n: usize) -> Vec<bool> {
        vec![true; n]
    }

    #[test]
    fn rarest_chunk_is_requested_first() {
        let mut s = Scheduler::new(vec![false; 3], 1, 0);
        s.set_peer_have("a", vec![true, true, false]);
        s.set_peer_have("b", vec![true, true, true]);
        // chunk 2 has one holder (b), chunks 0 and 1 have two: b must be asked for chunk 2.
        let reqs = s.next_requests(0);
        assert!(reqs.contains(&("b", 2)), "{reqs:?}");
        assert_eq!(reqs.len(), 2);
    }

    #[test]
    fn requests_per_peer_are_bounded() {
        let mut s = Scheduler::new(vec![false; 100], 4, 0);
        s.set_peer_have("a", all(100));
        assert_eq!(s.next_requests(0).len(), 4);
        assert_eq!(s.next_requests(0).len(), 0);
        s.completed(&"a", s.inflight.iter().position(|l| !l.is_empty()).unwrap());
        assert_eq!(s.next_requests(0).len(), 1);
    }

    #[test]
    fn load_spreads_over_peers_and_spares_the_seed() {
        let mut s = Scheduler::new(vec![false; 10], 2, 0);
        s.set_peer_have("seed", all(10));
        s.set_peer_have("peer", vec![true, true, true, true, false, false, false, false, false, false]);
        let reqs = s.next_requests(0);
        let from_peer = reqs.iter().filter(|(p, _)| *p == "peer").count();
        assert_eq!(from_peer, 2, "{reqs:?}");
        assert_eq!(reqs.len(), 4);
    }

    #[test]
    fn a_holder_named_by_the_seed_is_asked_for_that_chunk_next() {
        let mut s = Scheduler::new(vec![false; 2], 4, 0);
        s.set_peer_have("seed", all(2));
        let first = s.next_requests(0);
        assert_eq!(first.len(), 2);
        // The seed sent chunk 0 to "a" already; "a" never answered a have-map query.
        s.elsewhere(&"seed", 0);
        s.hint("a", 0);
        assert_eq!(s.next_requests(0), vec![("a", 0)]);
        // A banned peer stays banned whatever it is named for.
        let mut s = Scheduler::new(vec![false; 1], 4, 0);
        s.set_peer_have("liar", all(1));
        s.ban(&"liar");
        s.hint("liar", 0);
        assert!(s.next_requests(0).is_empty());
        // Out of range: ignored.
        s.hint("b", 5);
        assert!(s.next_requests(0).is_empty());
    }

    #[test]
    fn endgame_duplicates_the_last_chunks_onto_idle_peers() {
        let mut s = Scheduler::new(vec![true, true, false], 4, 0);
        s.set_peer_have("slow", all(3));
        assert_eq!(s.next_requests(0), vec![("slow", 2)]);
        s.set_peer_have("fast", all(3));
        assert_eq!(s.next_requests(0), vec![("fast", 2)]);
        // At most ENDGAME_COPIES requests for one chunk.
        s.set_peer_have("third", all(3));
        assert!(s.next_requests(0).is_empty());
        assert!(s.completed(&"fast", 2));
        assert!(!s.completed(&"slow", 2), "the late duplicate is not counted twice");
        assert!(s.is_done());
    }

    #[test]
    fn banned_peer_is_never_asked_again_and_chunk_goes_elsewhere() {
        let mut s = Scheduler::new(vec![false; 1], 4, 0);
        s.set_peer_have("liar", all(1));
        assert_eq!(s.next_requests(0), vec![("liar", 0)]);
        s.failed(&"liar", 0, 0, 0);
        s.ban(&"liar");
        s.set_peer_have("liar", all(1));
        assert!(s.next_requests(10).is_empty());
        s.set_peer_have("honest", all(1));
        assert_eq!(s.next_requests(10), vec![("honest", 0)]);
    }

    #[test]
    fn failed_peer_backs_off_then_is_asked_again() {
        let mut s = Scheduler::new(vec![false; 1], 4, 0);
        s.set_peer_have("a", all(1));
        assert_eq!(s.next_requests(0).len(), 1);
        s.failed(&"a", 0, 0, 1000);
        s.set_peer_have("a", all(1));
        assert!(s.next_requests(500).is_empty());
        assert_eq!(s.next_requests(1000), vec![("a", 0)]);
    }

    #[test]
    fn different_seeds_start_on_different_chunks() {
        let mk = |seed| {
            let mut s = Scheduler::new(vec![false; 64], 1, seed);
            s.set_peer_have("seed", all(64));
            s.next_requests(0)[0].1
        };
        let firsts: std::collections::BTreeSet<usize> = (0..8u64).map(mk).collect();
        assert!(firsts.len() > 4, "{firsts:?}");
    }

    #[test]
    fn only_chunks_no_peer_holds_are_origin_work_and_are_not_also_asked_of_peers() {
        let mut s = Scheduler::new(vec![false; 4], 4, 0);
        s.set_peer_have("a", vec![true, false, false, false]);
        assert_eq!(s.origin_candidates(), vec![1, 2, 3]);
        s.start_origin(2);
        assert_eq!(s.origin_candidates(), vec![1, 3]);
        // Peer b learns chunk 2 meanwhile: we still do not ask b for it while the origin fetch runs.
        s.set_peer_have("b", vec![false, false, true, false]);
        assert!(s.next_requests(0).iter().all(|(_, c)| *c != 2));
        assert!(s.origin_finished(2, true));
        assert!(!s.origin_finished(2, true));
        assert_eq!(s.missing(), 3);
    }

    #[test]
    fn a_busy_peer_keeps_its_chunk_and_is_asked_again_after_a_short_backoff() {
        let mut s = Scheduler::new(vec![false; 2], 4, 0);
        s.set_peer_have("a", vec![true, false]);
        assert_eq!(s.next_requests(0), vec![("a", 0)]);
        s.busy(&"a", 0, 0, 150);
        assert!(s.next_requests(100).is_empty(), "asked again inside the backoff");
        assert_eq!(s.next_requests(150), vec![("a", 0)], "a busy peer still holds the chunk");
        s.failed(&"a", 0, 150, 150);
        assert!(s.next_requests(10_000).is_empty(), "a failed peer is not asked until its next map");
    }

    #[test]
    fn resumed_chunks_are_never_requested() {
        let mut have = vec![false; 8];
        have[..6].fill(true);
        let mut s = Scheduler::new(have, 8, 0);
        s.set_peer_have("a", all(8));
        let mut reqs: Vec<usize> = s.next_requests(0).into_iter().map(|(_, c)| c).collect();
        reqs.sort();
        assert_eq!(reqs, vec![6, 7]);
    }
}
