//! Initial seeding (BitTorrent calls it super-seeding): while this node is the only holder of a
//! release it published itself, it sends each chunk out once before it sends any chunk twice.
//! A request for a chunk already sent is answered `ElsewhereAt` the peer that received it, and
//! the requester asks that peer at once, so the seed's port carries about one copy and the LAN's
//! other ports carry the rest.
//!
//! Plain data, no I/O. Bounded: one timestamp and one peer per chunk, for files this node
//! imported, dropped once every chunk went out once and the last hold ended (or, for a file
//! nobody asks for any more, when the next file starts). A chunk is refused for `HOLD_MS` after
//! it last went out, and only while the peer that got it is connected; the peer that got it is
//! served again at once (it asks again only when its copy did not arrive). So each chunk leaves
//! the seed at most once per hold, and a requester whose only source left is served at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use lanpatch_protocol::Hash32;

/// How long after a chunk last went out another request for it is answered `Elsewhere`.
pub const HOLD_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<P> {
    Serve,
    /// Sent to this peer already: take it from there.
    Elsewhere(P),
}

#[derive(Debug)]
struct InitialSeed<P> {
    /// When each chunk last went out (ms on the caller's clock), and to whom.
    sent: Vec<Option<(u64, P)>>,
    unsent: usize,
    /// When any chunk last went out.
    newest_ms: u64,
}

impl<P: Clone + PartialEq> InitialSeed<P> {
    fn new(chunks: usize) -> Self {
        InitialSeed { sent: vec![None; chunks], unsent: chunks, newest_ms: 0 }
    }

    fn answer(&mut self, idx: usize, to: &P, now_ms: u64, present: impl Fn(&P) -> bool) -> Answer<P> {
        let Some(sent) = self.sent.get_mut(idx) else { return Answer::Serve };
        match sent {
            Some((t, holder)) if now_ms.saturating_sub(*t) < HOLD_MS && holder != to && present(holder) => {
                Answer::Elsewhere(holder.clone())
            }
            // Its holder asks again (its copy did not arrive), the holder left, or the hold
            // ended: sent again, and the next hold names the new holder.
            _ => {
                if sent.is_none() {
                    self.unsent -= 1;
                }
                *sent = Some((now_ms, to.clone()));
                self.newest_ms = self.newest_ms.max(now_ms);
                Answer::Serve
            }
        }
    }

    /// Every chunk went out and no hold is running: nothing left to refuse.
    fn ended(&self, now_ms: u64) -> bool {
        self.unsent == 0 && now_ms.saturating_sub(self.newest_ms) >= HOLD_MS
    }
}

/// Files in initial seeding, by file hash; `P` names a peer.
#[derive(Debug)]
pub struct Seeding<P> {
    files: Mutex<HashMap<Hash32, InitialSeed<P>>>,
    /// The monotonic clock `answer` reads.
    epoch: Instant,
}

impl<P> Default for Seeding<P> {
    fn default() -> Self {
        Seeding { files: Mutex::default(), epoch: Instant::now() }
    }
}

impl<P: Clone + PartialEq> Seeding<P> {
    /// Starts initial seeding of a file this node just imported (and drops the state of files
    /// whose seeding ended while nobody asked).
    pub fn start(&self, file: Hash32, chunks: usize) {
        let now_ms = self.now_ms();
        let mut files = self.lock();
        files.retain(|_, seed| !seed.ended(now_ms));
        if chunks > 1 {
            files.insert(file, InitialSeed::new(chunks));
        }
    }

    /// Whether to send chunk `idx` of `file` to peer `to`, which asks for it now; `present`
    /// tells whether a peer is still connected (a holder that left is not named).
    pub fn answer(&self, file: &Hash32, idx: u32, to: &P, present: impl Fn(&P) -> bool) -> Answer<P> {
        self.answer_at(file, idx, to, self.now_ms(), present)
    }

    /// `answer` at `now_ms` on the seeding clock.
    pub fn answer_at(&self, file: &Hash32, idx: u32, to: &P, now_ms: u64, present: impl Fn(&P) -> bool) -> Answer<P> {
        let mut files = self.lock();
        let Some(seed) = files.get_mut(file) else { return Answer::Serve };
        if seed.ended(now_ms) {
            files.remove(file);
            return Answer::Serve;
        }
        seed.answer(idx as usize, to, now_ms, present)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    #[cfg(test)]
    fn is_seeding(&self, file: &Hash32) -> bool {
        self.lock().contains_key(file)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash32, InitialSeed<P>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &&str) -> bool {
        true
    }

    #[test]
    fn each_chunk_goes_out_once_before_any_goes_out_twice_and_a_refusal_names_the_holder() {
        let s = Seeding::default();
        let f = Hash32([7; 32]);
        s.start(f, 3);
        assert_eq!(s.answer_at(&f, 0, &"a", 0, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 0, &"b", 10, all), Answer::Elsewhere("a"), "chunk 0 is at a already");
        assert_eq!(s.answer_at(&f, 1, &"b", 20, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 2, &"c", 30, all), Answer::Serve);
        // Every chunk went out once, but the holds still run: a second copy is still refused.
        assert_eq!(s.answer_at(&f, 1, &"c", 40, all), Answer::Elsewhere("b"));
        assert!(s.is_seeding(&f));
        // Chunk 0's hold ended: it goes out again, and a new hold names its new holder.
        assert_eq!(s.answer_at(&f, 0, &"c", 10 + HOLD_MS, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 0, &"b", 20 + HOLD_MS, all), Answer::Elsewhere("c"));
        // Once the last hold ended the state is dropped and every chunk is served.
        assert_eq!(s.answer_at(&f, 1, &"a", 10 + 2 * HOLD_MS, all), Answer::Serve);
        assert!(!s.is_seeding(&f), "every chunk went out once and no hold runs: the state is dropped");
        assert_eq!(s.answer_at(&f, 1, &"b", 11 + 2 * HOLD_MS, all), Answer::Serve);
    }

    #[test]
    fn a_holder_that_left_is_not_named_and_the_chunk_goes_out_again() {
        let s = Seeding::default();
        let f = Hash32([5; 32]);
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 0, &"a", 0, all), Answer::Serve);
        let a_left = |p: &&str| *p != "a";
        assert_eq!(s.answer_at(&f, 0, &"b", 10, a_left), Answer::Serve, "a is gone: b gets it from the seed");
        assert_eq!(s.answer_at(&f, 0, &"c", 20, a_left), Answer::Elsewhere("b"), "and b is named from now on");
    }

    #[test]
    fn a_chunk_asked_for_again_after_the_hold_or_by_its_holder_is_served_and_the_hold_restarts() {
        let s = Seeding::default();
        let f = Hash32([1; 32]);
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 0, &"a", 1000, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 0, &"b", 1000 + HOLD_MS - 1, all), Answer::Elsewhere("a"));
        assert_eq!(
            s.answer_at(&f, 0, &"a", 1001, all),
            Answer::Serve,
            "the holder asks again: its copy did not arrive"
        );
        assert_eq!(
            s.answer_at(&f, 0, &"b", 1000 + HOLD_MS, all),
            Answer::Elsewhere("a"),
            "the hold runs from the last send"
        );
        assert_eq!(s.answer_at(&f, 0, &"b", 1001 + HOLD_MS, all), Answer::Serve, "at most once per hold");
        assert!(s.is_seeding(&f), "chunk 1 never went out");
    }

    #[test]
    fn unknown_files_and_out_of_range_chunks_are_served_normally() {
        let s = Seeding::default();
        let f = Hash32([2; 32]);
        assert_eq!(s.answer_at(&f, 0, &"a", 0, all), Answer::Serve);
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 99, &"a", 0, all), Answer::Serve);
    }

    #[test]
    fn a_file_whose_seeding_ended_unasked_is_dropped_when_the_next_starts() {
        let s = Seeding::default();
        let (f, g) = (Hash32([3; 32]), Hash32([4; 32]));
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 0, &"a", 0, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 1, &"a", 0, all), Answer::Serve);
        // Nobody asks again; HOLD_MS later (on the real clock, which starts at 0 here) another
        // file starts.
        let later = Seeding {
            files: Mutex::new(std::mem::take(&mut *s.lock())),
            epoch: Instant::now() - std::time::Duration::from_millis(HOLD_MS),
        };
        later.start(g, 2);
        assert!(!later.is_seeding(&f), "ended seeding state is not kept forever");
        assert!(later.is_seeding(&g));
    }
}
