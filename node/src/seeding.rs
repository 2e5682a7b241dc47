//! Initial seeding (BitTorrent calls it super-seeding): while this node is the only holder of a
//! release it published itself, it sends each chunk out once before it sends any chunk twice.
//! A request for a chunk that went out already is answered `ElsewhereAt` the peer that got it,
//! and the requester asks that peer at once, so the seed's port carries about one copy and the
//! LAN's other ports carry the rest.
//!
//! A requester cannot capture the seed (make it point everyone at a peer that does not hold the
//! chunk). The rules, each unit-tested below:
//! - A chunk counts as sent only once it was fully written ([`Sending::finished`]); a send that was
//!   dropped half way ([`Seeding::abandoned`], also when the [`Sending`] guard is dropped) names
//!   nobody. While a send runs, other requesters are told plain `Elsewhere` (ask others, come
//!   back later) for at most [`SEND_GRACE_MS`]; after that they are served. A slow reader keeps
//!   others from at most one chunk per upload slot it holds, for that long.
//! - A holder is named only while it keeps its word: a requester sent to a holder that comes back
//!   for the same chunk (a redirect without progress) is served at once and holds the chunk from
//!   then on, and the old holder gets a strike; a peer with [`MAX_STRIKES`] is never named again
//!   for the file (strikes are kept for [`MAX_DISTRUSTED`] peers per file; past that nobody is
//!   named). An honest holder whose port is merely saturated loses one chunk's hold; a liar
//!   costs each chunk at most one wasted request before its hold moves.
//! - A holder that asks again for its own chunk (its copy did not arrive) is served, and is not
//!   named for that chunk any more: asking again cannot restart its hold.
//! - A hold lasts [`HOLD_MS`] from the completed send that started it, and only while the holder is
//!   connected; then the chunk is served to the next requester, who becomes the holder.
//!
//! Plain data, no I/O. Bounded: per chunk one state and at most [`MAX_REDIRECTED`] peers
//! redirected in its current hold; per file strikes for at most [`MAX_DISTRUSTED`] peers; state
//! only for files this node imported, dropped once every chunk went out once and the last hold
//! ended (or, for a file nobody asks for any more, when the next file starts).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use lanpatch_protocol::Hash32;

/// How long after a chunk went out to a holder another request for it is answered `ElsewhereAt`.
pub const HOLD_MS: u64 = 10_000;
/// How long a send that has not finished keeps other requesters away from the chunk. Long
/// enough for a chunk to cross a seed's port shared by all its upload slots: at 2 s, sends at a
/// 20 Mbit/s seed outlasted it and second copies went out (1.30 copies from the seed at N = 16).
pub const SEND_GRACE_MS: u64 = 10_000;
/// Requesters remembered per chunk as redirected in its current hold; past it, requesters are
/// served instead of redirected.
pub const MAX_REDIRECTED: usize = 32;
/// Peers per file whose strikes are kept; past it, nobody is named for the file.
pub const MAX_DISTRUSTED: usize = 64;
/// Failed redirects after which a holder is not named again for the file.
pub const MAX_STRIKES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<P> {
    /// Send the chunk; report how it went with [`Sending::finished`] (or drop the guard).
    Serve,
    /// The chunk is on its way to another peer: ask others, and this node again later
    /// (`Elsewhere` on the wire).
    Wait,
    /// Sent to this peer already: take it from there (`ElsewhereAt` on the wire).
    Elsewhere(P),
}

#[derive(Debug, Clone)]
enum Chunk<P> {
    /// Nobody is named: the next requester is served. `not` lost the right to be named for
    /// this chunk (it asked again for a copy it was sent).
    Open { not: Option<P> },
    /// A send to `to` started at `since` and has not finished.
    Sending { to: P, since: u64, not: Option<P> },
    /// `by` got the whole chunk at `since`; `redirected` were sent to it in this hold.
    Held { by: P, since: u64, redirected: Vec<P> },
}

fn distrusted<P: PartialEq>(strikes: &[(P, u32)], p: &P) -> bool {
    strikes.iter().any(|(q, n)| q == p && *n >= MAX_STRIKES)
}

#[derive(Debug)]
struct InitialSeed<P> {
    chunks: Vec<Chunk<P>>,
    /// Whether each chunk was fully sent at least once.
    sent_once: Vec<bool>,
    unsent: usize,
    /// When any hold last started.
    newest_ms: u64,
    /// Peers a redirect to failed, and how often: at [`MAX_STRIKES`] never named again.
    strikes: Vec<(P, u32)>,
    /// More than [`MAX_DISTRUSTED`] peers failed: nobody is named for this file any more.
    name_nobody: bool,
}

impl<P: Clone + PartialEq> InitialSeed<P> {
    fn new(chunks: usize) -> Self {
        InitialSeed {
            chunks: vec![Chunk::Open { not: None }; chunks],
            sent_once: vec![false; chunks],
            unsent: chunks,
            newest_ms: 0,
            strikes: Vec::new(),
            name_nobody: false,
        }
    }

    fn answer(&mut self, idx: usize, to: &P, now_ms: u64, present: impl Fn(&P) -> bool) -> Answer<P> {
        let Some(chunk) = self.chunks.get_mut(idx) else { return Answer::Serve };
        let serve = |not: Option<P>| Chunk::Sending { to: to.clone(), since: now_ms, not };
        match chunk {
            Chunk::Open { not } => {
                let not = not.take();
                *chunk = serve(not);
                Answer::Serve
            }
            Chunk::Sending { to: other, since, .. }
                if other != to && now_ms.saturating_sub(*since) < SEND_GRACE_MS && present(other) =>
            {
                Answer::Wait
            }
            Chunk::Sending { not, .. } => {
                let not = not.take();
                *chunk = serve(not);
                Answer::Serve
            }
            Chunk::Held { by, .. } if by == to => {
                // Its copy did not arrive: sent again, but it is not named for this chunk again.
                let not = Some(by.clone());
                *chunk = serve(not);
                Answer::Serve
            }
            Chunk::Held { by, since, redirected } => {
                let live = now_ms.saturating_sub(*since) < HOLD_MS && present(by);
                let came_back = redirected.contains(to);
                if came_back {
                    // Sent there in this hold and asking again: the holder did not deliver.
                    let full = self.strikes.len() >= MAX_DISTRUSTED;
                    match self.strikes.iter_mut().find(|(p, _)| p == by) {
                        Some((_, n)) => *n += 1,
                        None if full => self.name_nobody = true,
                        None => self.strikes.push((by.clone(), 1)),
                    }
                }
                let trusted = !self.name_nobody && !distrusted(&self.strikes, by);
                if live && !came_back && trusted && redirected.len() < MAX_REDIRECTED {
                    redirected.push(to.clone());
                    return Answer::Elsewhere(by.clone());
                }
                *chunk = serve(None);
                Answer::Serve
            }
        }
    }

    /// The chunk was fully written to `to`: it holds it from now on, unless it may not be named.
    fn sent(&mut self, idx: usize, to: &P, now_ms: u64) {
        let Some(chunk) = self.chunks.get_mut(idx) else { return };
        if let Some(once) = self.sent_once.get_mut(idx)
            && !*once
        {
            *once = true;
            self.unsent -= 1;
        }
        let not = match chunk {
            Chunk::Open { not } | Chunk::Sending { not, .. } => not.take(),
            // A second send finished while the first holder's hold runs: the first stays named.
            Chunk::Held { .. } => return,
        };
        if self.name_nobody || not.as_ref() == Some(to) || distrusted(&self.strikes, to) {
            *chunk = Chunk::Open { not };
            return;
        }
        *chunk = Chunk::Held { by: to.clone(), since: now_ms, redirected: Vec::new() };
        self.newest_ms = self.newest_ms.max(now_ms);
    }

    /// A send to `to` did not finish (the requester dropped the stream, or it timed out).
    fn abandoned(&mut self, idx: usize, to: &P) {
        if let Some(chunk) = self.chunks.get_mut(idx)
            && let Chunk::Sending { to: sending, not, .. } = chunk
            && sending == to
        {
            let not = not.take();
            *chunk = Chunk::Open { not };
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

/// A send the seed started: reports [`Seeding::abandoned`] when dropped before
/// [`Sending::finished`] (the request failed or its task was cancelled).
#[must_use]
pub struct Sending<'a, P: Clone + PartialEq> {
    seeding: &'a Seeding<P>,
    file: Hash32,
    idx: u32,
    to: P,
    done: bool,
}

impl<P: Clone + PartialEq> Sending<'_, P> {
    /// The whole chunk was written: the requester holds it now.
    pub fn finished(mut self) {
        self.done = true;
        let now_ms = self.seeding.now_ms();
        self.seeding.sent_at(&self.file, self.idx, &self.to, now_ms);
    }
}

impl<P: Clone + PartialEq> Drop for Sending<'_, P> {
    fn drop(&mut self) {
        if !self.done {
            self.seeding.abandoned(&self.file, self.idx, &self.to);
        }
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
    /// tells whether a peer is still connected (a holder that left is not named). On
    /// [`Answer::Serve`] the returned guard tracks the send: call [`Sending::finished`] once the
    /// whole chunk was written.
    pub fn answer(
        &self,
        file: &Hash32,
        idx: u32,
        to: &P,
        present: impl Fn(&P) -> bool,
    ) -> (Answer<P>, Option<Sending<'_, P>>) {
        let answer = self.answer_at(file, idx, to, self.now_ms(), present);
        let guard =
            (answer == Answer::Serve).then(|| Sending { seeding: self, file: *file, idx, to: to.clone(), done: false });
        (answer, guard)
    }

    /// `answer` at `now_ms` on the seeding clock, without a guard.
    pub fn answer_at(&self, file: &Hash32, idx: u32, to: &P, now_ms: u64, present: impl Fn(&P) -> bool) -> Answer<P> {
        let mut files = self.lock();
        let Some(seed) = files.get_mut(file) else { return Answer::Serve };
        if seed.ended(now_ms) {
            files.remove(file);
            return Answer::Serve;
        }
        seed.answer(idx as usize, to, now_ms, present)
    }

    /// Chunk `idx` of `file` was fully written to `to` at `now_ms`.
    pub fn sent_at(&self, file: &Hash32, idx: u32, to: &P, now_ms: u64) {
        if let Some(seed) = self.lock().get_mut(file) {
            seed.sent(idx as usize, to, now_ms);
        }
    }

    /// A send of chunk `idx` of `file` to `to` did not finish.
    pub fn abandoned(&self, file: &Hash32, idx: u32, to: &P) {
        if let Some(seed) = self.lock().get_mut(file) {
            seed.abandoned(idx as usize, to);
        }
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

    /// Asks for a chunk at `t` and, when served, finishes the send at once.
    fn get(s: &Seeding<&'static str>, f: &Hash32, idx: u32, to: &'static str, t: u64) -> Answer<&'static str> {
        let a = s.answer_at(f, idx, &to, t, all);
        if a == Answer::Serve {
            s.sent_at(f, idx, &to, t);
        }
        a
    }

    #[test]
    fn each_chunk_goes_out_once_before_any_goes_out_twice_and_a_refusal_names_the_holder() {
        let s = Seeding::default();
        let f = Hash32([7; 32]);
        s.start(f, 3);
        assert_eq!(get(&s, &f, 0, "a", 0), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "b", 10), Answer::Elsewhere("a"), "chunk 0 is at a already");
        assert_eq!(get(&s, &f, 1, "b", 20), Answer::Serve);
        assert_eq!(get(&s, &f, 2, "c", 30), Answer::Serve);
        // Every chunk went out once, but the holds still run: a second copy is still refused.
        assert_eq!(get(&s, &f, 1, "c", 40), Answer::Elsewhere("b"));
        assert!(s.is_seeding(&f));
        // Chunk 0's hold ended: it goes out again, and a new hold names its new holder.
        assert_eq!(get(&s, &f, 0, "c", HOLD_MS), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "b", 20 + HOLD_MS), Answer::Elsewhere("c"));
        // Once the last hold ended the state is dropped and every chunk is served.
        assert_eq!(get(&s, &f, 1, "a", 2 * HOLD_MS), Answer::Serve);
        assert!(!s.is_seeding(&f), "every chunk went out once and no hold runs: the state is dropped");
        assert_eq!(get(&s, &f, 1, "b", 1 + 2 * HOLD_MS), Answer::Serve);
    }

    #[test]
    fn a_chunk_counts_as_sent_only_once_fully_written_and_a_dropped_send_names_nobody() {
        let s = Seeding::default();
        let f = Hash32([8; 32]);
        s.start(f, 2);
        // The attacker is served, and drops the stream once the seed commits to sending.
        assert_eq!(s.answer_at(&f, 0, &"mallory", 0, all), Answer::Serve);
        // While that send runs, others wait (plain Elsewhere) for at most SEND_GRACE_MS ...
        assert_eq!(s.answer_at(&f, 0, &"b", 10, all), Answer::Wait);
        s.abandoned(&f, 0, &"mallory");
        // ... and once it was dropped nobody is named: the next requester is served.
        assert_eq!(get(&s, &f, 0, "b", 20), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "c", 30), Answer::Elsewhere("b"), "b got the whole chunk: it is named");
        // A send that never reports back keeps others away only for the grace period.
        assert_eq!(s.answer_at(&f, 1, &"mallory", 100, all), Answer::Serve);
        assert_eq!(s.answer_at(&f, 1, &"b", 100 + SEND_GRACE_MS - 1, all), Answer::Wait);
        assert_eq!(get(&s, &f, 1, "b", 100 + SEND_GRACE_MS), Answer::Serve);
        // The stalled send finishing late does not take the hold from b.
        s.sent_at(&f, 1, &"mallory", 200 + SEND_GRACE_MS);
        assert_eq!(get(&s, &f, 1, "c", 300 + SEND_GRACE_MS), Answer::Elsewhere("b"));
    }

    #[test]
    fn the_guard_reports_a_send_dropped_half_way_as_abandoned() {
        let s: Seeding<&str> = Seeding::default();
        let f = Hash32([9; 32]);
        s.start(f, 2);
        let (a, guard) = s.answer(&f, 0, &"mallory", |_| true);
        assert_eq!(a, Answer::Serve);
        drop(guard);
        let (a, guard) = s.answer(&f, 0, &"b", |_| true);
        assert_eq!(a, Answer::Serve, "the dropped send named nobody");
        guard.expect("a guard for a send").finished();
        let (a, guard) = s.answer(&f, 0, &"c", |_| true);
        assert_eq!(a, Answer::Elsewhere("b"));
        assert!(guard.is_none(), "no send, no guard");
    }

    #[test]
    fn a_redirect_without_progress_is_served_and_a_holder_that_keeps_failing_is_never_named_again() {
        let s = Seeding::default();
        let f = Hash32([6; 32]);
        s.start(f, 5);
        // mallory takes whole chunks and then serves nobody.
        for c in 0..4 {
            assert_eq!(get(&s, &f, c, "mallory", 0), Answer::Serve);
        }
        for (c, who) in [(0, "b"), (1, "c"), (2, "d")] {
            assert_eq!(get(&s, &f, c, who, 10), Answer::Elsewhere("mallory"));
            // The requester comes back for the same chunk: it is served at once, and holds it.
            assert_eq!(get(&s, &f, c, who, 20), Answer::Serve);
            assert_eq!(get(&s, &f, c, "x", 30), Answer::Elsewhere(who), "the hold moved to {who}");
        }
        // Three strikes: mallory is named for no chunk of the file any more, in a hold or later.
        assert_eq!(get(&s, &f, 3, "e", 40), Answer::Serve, "mallory's last hold is not used either");
        assert_eq!(get(&s, &f, 4, "mallory", 50), Answer::Serve);
        assert_eq!(get(&s, &f, 4, "g", 60), Answer::Serve, "a distrusted peer is not made a holder");
        assert_eq!(get(&s, &f, 4, "h", 70), Answer::Elsewhere("g"));
    }

    #[test]
    fn one_failed_redirect_moves_the_hold_but_leaves_the_holder_named_elsewhere() {
        let s = Seeding::default();
        let f = Hash32([10; 32]);
        s.start(f, 2);
        assert_eq!(get(&s, &f, 0, "a", 0), Answer::Serve);
        assert_eq!(get(&s, &f, 1, "a", 0), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "b", 10), Answer::Elsewhere("a"));
        assert_eq!(get(&s, &f, 0, "b", 20), Answer::Serve, "a's port was busy: b is served");
        assert_eq!(get(&s, &f, 1, "c", 30), Answer::Elsewhere("a"), "one strike: a still holds chunk 1");
    }

    #[test]
    fn a_holder_asking_again_is_served_but_cannot_restart_its_hold() {
        let s = Seeding::default();
        let f = Hash32([1; 32]);
        s.start(f, 2);
        assert_eq!(get(&s, &f, 0, "a", 1000), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "b", 1000 + HOLD_MS - 1), Answer::Elsewhere("a"));
        assert_eq!(get(&s, &f, 0, "a", 1001), Answer::Serve, "the holder asks again: its copy did not arrive");
        // It is not named for that chunk again; the next requester is served and named.
        assert_eq!(get(&s, &f, 0, "c", 1002), Answer::Serve);
        assert_eq!(get(&s, &f, 0, "b", 1003), Answer::Elsewhere("c"));
        // mallory asking again for the chunk it got is served, but never named for it again.
        assert_eq!(get(&s, &f, 1, "mallory", 2000), Answer::Serve);
        assert_eq!(get(&s, &f, 1, "mallory", 2001), Answer::Serve);
        assert_eq!(get(&s, &f, 1, "b", 2002), Answer::Serve, "mallory is not named after asking again");
        assert_eq!(get(&s, &f, 1, "c", 2003), Answer::Elsewhere("b"));
    }

    #[test]
    fn a_holder_that_left_is_not_named_and_the_chunk_goes_out_again() {
        let s = Seeding::default();
        let f = Hash32([5; 32]);
        s.start(f, 2);
        assert_eq!(get(&s, &f, 0, "a", 0), Answer::Serve);
        let a_left = |p: &&str| *p != "a";
        assert_eq!(s.answer_at(&f, 0, &"b", 10, a_left), Answer::Serve, "a is gone: b gets it from the seed");
        s.sent_at(&f, 0, &"b", 10);
        assert_eq!(s.answer_at(&f, 0, &"c", 20, a_left), Answer::Elsewhere("b"), "and b is named from now on");
    }

    #[test]
    fn redirects_per_hold_and_peers_with_strikes_per_file_are_bounded() {
        let s = Seeding::default();
        let f = Hash32([4; 32]);
        s.start(f, 2);
        assert_eq!(get(&s, &f, 0, "a", 0), Answer::Serve);
        let names: Vec<&'static str> =
            (0..MAX_REDIRECTED + 1).map(|i| &*Box::leak(format!("p{i}").into_boxed_str())).collect();
        for n in &names[..MAX_REDIRECTED] {
            assert_eq!(s.answer_at(&f, 0, n, 1, all), Answer::Elsewhere("a"));
        }
        assert_eq!(s.answer_at(&f, 0, &names[MAX_REDIRECTED], 1, all), Answer::Serve, "past the bound: served");
        let last = MAX_DISTRUSTED + 1;
        let mut seed: InitialSeed<usize> = InitialSeed::new(last + 1);
        for liar in 0..=MAX_DISTRUSTED {
            let (chunk, requester) = (liar, 10_000 + liar);
            assert_eq!(seed.answer(chunk, &liar, 0, |_| true), Answer::Serve);
            seed.sent(chunk, &liar, 0);
            assert_eq!(seed.answer(chunk, &requester, 0, |_| true), Answer::Elsewhere(liar));
            assert_eq!(seed.answer(chunk, &requester, 0, |_| true), Answer::Serve, "came back");
            assert!(seed.strikes.len() <= MAX_DISTRUSTED);
        }
        assert!(seed.name_nobody, "more liars than the bound: nobody is named");
        assert_eq!(seed.answer(last, &1, 0, |_| true), Answer::Serve);
        seed.sent(last, &1, 0);
        assert_eq!(seed.answer(last, &2, 0, |_| true), Answer::Serve, "nobody is named for the file any more");
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
        assert_eq!(get(&s, &f, 0, "a", 0), Answer::Serve);
        assert_eq!(get(&s, &f, 1, "a", 0), Answer::Serve);
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
