//! Initial seeding (BitTorrent calls it super-seeding): while this node is the only holder of a
//! release it published itself, it sends each chunk out once before it sends any chunk twice.
//! A request for a chunk already sent is answered `Elsewhere` (the requester takes it from the
//! peer that received it, after its next have-map round), so the seed's port carries about one
//! copy and the LAN's other ports carry the rest.
//!
//! Plain data, no I/O. Bounded: one timestamp per chunk, for files this node imported, dropped
//! once every chunk went out once. A chunk is refused only for `HOLD_MS` after it first went out
//! (long enough for the peer that got it to show it in a have-map round), so a requester that
//! cannot find it elsewhere (the peer that got it left) is served soon after.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use lanpatch_protocol::Hash32;

/// How long after a chunk first went out a second request for it is answered `Elsewhere`.
pub const HOLD_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Serve,
    Elsewhere,
}

#[derive(Debug)]
struct InitialSeed {
    /// When each chunk first went out (ms on the caller's clock).
    sent_at: Vec<Option<u64>>,
    unsent: usize,
}

impl InitialSeed {
    fn new(chunks: usize) -> Self {
        InitialSeed { sent_at: vec![None; chunks], unsent: chunks }
    }

    fn answer(&mut self, idx: usize, now_ms: u64) -> Answer {
        let Some(sent_at) = self.sent_at.get_mut(idx) else { return Answer::Serve };
        match *sent_at {
            None => {
                *sent_at = Some(now_ms);
                self.unsent -= 1;
                Answer::Serve
            }
            Some(t) if now_ms.saturating_sub(t) < HOLD_MS => Answer::Elsewhere,
            Some(_) => Answer::Serve,
        }
    }
}

/// Files in initial seeding, by file hash.
#[derive(Debug)]
pub struct Seeding {
    files: Mutex<HashMap<Hash32, InitialSeed>>,
    /// The monotonic clock `answer` reads.
    epoch: Instant,
}

impl Default for Seeding {
    fn default() -> Self {
        Seeding { files: Mutex::default(), epoch: Instant::now() }
    }
}

impl Seeding {
    /// Starts initial seeding of a file this node just imported.
    pub fn start(&self, file: Hash32, chunks: usize) {
        if chunks > 1 {
            self.lock().insert(file, InitialSeed::new(chunks));
        }
    }

    /// Whether to send chunk `idx` of `file` to a peer that asks for it now.
    pub fn answer(&self, file: &Hash32, idx: u32) -> Answer {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answer_at(file, idx, now_ms)
    }

    /// `answer` at `now_ms` on the seeding clock.
    pub fn answer_at(&self, file: &Hash32, idx: u32, now_ms: u64) -> Answer {
        let mut files = self.lock();
        let Some(seed) = files.get_mut(file) else { return Answer::Serve };
        let a = seed.answer(idx as usize, now_ms);
        if seed.unsent == 0 {
            files.remove(file);
        }
        a
    }

    #[cfg(test)]
    fn is_seeding(&self, file: &Hash32) -> bool {
        self.lock().contains_key(file)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash32, InitialSeed>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_chunk_goes_out_once_before_any_goes_out_twice() {
        let s = Seeding::default();
        let f = Hash32([7; 32]);
        s.start(f, 3);
        assert_eq!(s.answer_at(&f, 0, 0), Answer::Serve);
        assert_eq!(s.answer_at(&f, 0, 10), Answer::Elsewhere, "chunk 0 is on the LAN already");
        assert_eq!(s.answer_at(&f, 1, 20), Answer::Serve);
        assert_eq!(s.answer_at(&f, 2, 30), Answer::Serve);
        assert!(!s.is_seeding(&f), "every chunk went out once: the state is dropped");
        assert_eq!(s.answer_at(&f, 0, 40), Answer::Serve);
    }

    #[test]
    fn a_chunk_asked_for_again_after_the_hold_is_served() {
        let s = Seeding::default();
        let f = Hash32([1; 32]);
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 0, 1000), Answer::Serve);
        assert_eq!(s.answer_at(&f, 0, 1000 + HOLD_MS - 1), Answer::Elsewhere);
        assert_eq!(s.answer_at(&f, 0, 1000 + HOLD_MS), Answer::Serve, "the peer that got it may have left");
        assert!(s.is_seeding(&f), "chunk 1 never went out");
    }

    #[test]
    fn unknown_files_and_out_of_range_chunks_are_served_normally() {
        let s = Seeding::default();
        let f = Hash32([2; 32]);
        assert_eq!(s.answer_at(&f, 0, 0), Answer::Serve);
        s.start(f, 2);
        assert_eq!(s.answer_at(&f, 99, 0), Answer::Serve);
    }
}
