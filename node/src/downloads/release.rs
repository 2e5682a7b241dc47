//! One release's swarm download: the [`Scheduler`] decides which chunk to ask from whom, this
//! module does the I/O, and the download reports its progress to the owner.
//!
//! Driven by events, not a clock: a finished chunk request, news of a peer's have-map
//! (maps.rs: subscriptions, pushed as peers store chunks), a peer arriving or leaving. After
//! each batch of events [`Download::plan`] starts what is due: requests to peers, upstream work
//! (upstream.rs), resubscriptions. Between events the loop sleeps until the next thing that
//! is due (a backoff ending, the origin settle time, a map restore) or [`TICK`], whichever
//! comes first; the tick checks that the release is still current and lets the site's
//! fetchers be judged again. Chunk requests run in their own tasks, each on a fresh stream,
//! and report back over a channel, so a slow peer never holds up the loop. Every chunk is
//! verified against the signed manifest before it is written (fetch.rs); a peer that sends a
//! bad chunk is banned at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{DownloadProgress, FileEntry, Hash32, ReleaseManifest, Signed, VerifiedChunk};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fetch::{FetchError, chunk_refusal, fetch_chunk, fetch_from_origin};
use super::handle::Progress;
use super::maps::{HaveEvent, Maps};
use super::upstream::{ORIGIN_SETTLE, Upstream, remote_holder};
use crate::metrics::ByteSource;
use crate::report::ReleaseRef;
use crate::sched::Scheduler;
use crate::shared::Shared;
use crate::site::Upstream as SiteUpstream;
use crate::wan;

/// The loop looks again at least this often while a download runs: is the release still
/// current (not yanked, not expired), and who are the site's fetchers now.
const TICK: Duration = Duration::from_secs(1);
/// Most events of each kind taken in between two plans.
const BATCH: usize = 64;
const BACKOFF_MS: u64 = 1500;
/// A peer that answered `Busy` is asked again this soon: it holds the chunk, and at the end of a
/// transfer every node asks the few holders of the last chunks at once.
const BUSY_BACKOFF_MS: u64 = 150;
/// Every this many bytes stored, the partial file's writes so far go to disk in the background
/// (see `Library::sync_partial`).
const SYNC_STEP: u64 = 8 * 1024 * 1024;
/// How often a running download looks up the release's holders in Kademlia.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(60);

pub enum Outcome {
    /// Every chunk verified and stored; `announce`: this node is one of its site's announcers
    /// of the release in Kademlia (see `wan::announces`).
    Complete {
        announce: bool,
    },
    Stopped,
}

/// Maps a flat chunk number of a release to (file, chunk index).
struct Layout {
    files: Vec<FileEntry>,
    starts: Vec<usize>,
}

impl Layout {
    fn new(files: &[FileEntry]) -> Self {
        let mut starts = Vec::with_capacity(files.len());
        let mut n = 0;
        for f in files {
            starts.push(n);
            n += f.chunks.len();
        }
        Layout { files: files.to_vec(), starts }
    }
    fn locate(&self, flat: usize) -> Option<(&FileEntry, u32)> {
        let i = self.starts.partition_point(|s| *s <= flat).checked_sub(1)?;
        let f = self.files.get(i)?;
        let idx = flat - self.starts[i];
        (idx < f.chunks.len()).then_some((f, idx as u32))
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Download progress goes to the fleet (a report of the `Downloading` state) at every tenth of
/// the chunks, at most once per [`PROGRESS_REPORT_INTERVAL`], and always at the last chunk: a
/// handful of reports per node and release, enough for the console to show a rollout moving.
/// Every report crosses every site link (gossip), so in a fast distribution the spacing, not the
/// tenths, sets how many go out: at 2 s, progress was most of what crossed a site link besides
/// the release while it downloaded.
struct ProgressReports {
    next_tenth: usize,
    last: Option<Instant>,
}

const PROGRESS_REPORT_INTERVAL: Duration = Duration::from_secs(5);

impl ProgressReports {
    fn new() -> Self {
        ProgressReports { next_tenth: 1, last: None }
    }

    fn due(&mut self, p: &Progress) -> Option<DownloadProgress> {
        if p.total_chunks == 0 {
            return None;
        }
        let tenths = p.have_chunks * 10 / p.total_chunks;
        let complete = p.have_chunks >= p.total_chunks;
        let spaced = self.last.is_none_or(|t| t.elapsed() >= PROGRESS_REPORT_INTERVAL);
        if !(complete || (tenths >= self.next_tenth && spaced)) {
            return None;
        }
        self.next_tenth = tenths + 1;
        self.last = Some(Instant::now());
        Some(DownloadProgress {
            have_chunks: u32::try_from(p.have_chunks).unwrap_or(u32::MAX),
            total_chunks: u32::try_from(p.total_chunks).unwrap_or(u32::MAX),
            from_peers: p.from_peers,
            from_origin: p.from_origin,
        })
    }
}

/// A finished request: from a peer, from an origin (by index into the manifest's origins), or
/// from a peer at another site in an origin's stead.
enum Source {
    Peer(PeerId),
    Origin(usize),
    Remote(PeerId),
}

type ChunkResult = (Source, usize, Result<VerifiedChunk, FetchError>);

/// One release's download in progress.
struct Download {
    s: Arc<Shared>,
    hash: Hash32,
    release: ReleaseRef,
    layout: Layout,
    /// This node's tie-breaker (from its peer id): nodes that start together pick differently.
    seed: u64,
    sched: Scheduler<PeerId>,
    progress: Progress,
    reports: ProgressReports,
    chunks: mpsc::Sender<ChunkResult>,
    maps: Maps,
    upstream: Upstream,
    start: Instant,
    /// When this node last got a chunk it did not have (the site's progress, as seen from here).
    last_new_chunk: Instant,
    last_provider_lookup: Option<Instant>,
    /// What the next plan must look at again besides requests to peers: the ready peers
    /// (subscriptions), the upstream work. Deltas that only add chunks set neither.
    peers_dirty: bool,
    upstream_dirty: bool,
    /// Bytes stored since the last background sync was started, and whether one is running.
    unsynced: u64,
    syncing: Arc<AtomicBool>,
}

pub async fn download(s: Arc<Shared>, m: Signed<ReleaseManifest>) -> Result<Outcome> {
    let (mut d, mut chunk_rx, mut have_rx) = Download::new(s, &m).await?;
    let mut ready = d.s.net.ready_changes();
    let mut shutdown = d.s.shutdown.clone();
    while !d.sched.is_done() {
        if d.stopped() {
            return Ok(Outcome::Stopped);
        }
        d.plan().await;
        let wake = d.next_wake();
        tokio::select! {
            _ = shutdown.changed() => return Ok(Outcome::Stopped),
            _ = tokio::time::sleep_until(wake) => d.look_again(),
            r = ready.changed() => {
                if r.is_err() {
                    return Ok(Outcome::Stopped);
                }
                d.look_again();
            }
            Some(c) = chunk_rx.recv() => d.on_chunk(c).await?,
            Some(ev) = have_rx.recv() => d.on_have(ev),
        }
        // Whatever else arrived meanwhile is taken in before the next plan (a bounded batch, so
        // a stream of news cannot hold requests back).
        for _ in 0..BATCH {
            let Ok(ev) = have_rx.try_recv() else { break };
            d.on_have(ev);
        }
        for _ in 0..BATCH {
            let Ok(c) = chunk_rx.try_recv() else { break };
            d.on_chunk(c).await?;
        }
    }
    d.finish().await
}

impl Download {
    async fn new(
        s: Arc<Shared>,
        m: &Signed<ReleaseManifest>,
    ) -> Result<(Download, mpsc::Receiver<ChunkResult>, mpsc::Receiver<HaveEvent>)> {
        let hash = m.payload_hash();
        let files = m.value().files.clone();
        let (lib, files2) = (s.library.clone(), files.clone());
        let resumed = tokio::task::spawn_blocking(move || -> Result<usize> {
            let mut resumed = 0;
            for f in &files2 {
                resumed += lib.register(f)?.resumed_chunks;
            }
            Ok(resumed)
        })
        .await??;
        let file_hashes: Vec<Hash32> = files.iter().map(|f| f.hash).collect();
        let have = s.library.have_flat(&file_hashes).ok_or_else(|| anyhow!("files not registered"))?;
        let seed =
            u64::from_le_bytes(blake3::hash(&s.net.local.to_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let sched = Scheduler::<PeerId>::new(have, s.cfg.max_inflight_per_peer, seed);
        // This download's progress, owned here and sent to the download owner as it changes.
        let progress = Progress {
            total_chunks: sched.len(),
            have_chunks: sched.len() - sched.missing(),
            resumed_chunks: resumed,
            ..Progress::default()
        };
        s.downloads.report(hash, progress.clone()).await;
        if resumed > 0 {
            tracing::info!(manifest = %hash.short(), resumed, missing = sched.missing(), "resuming download");
        }
        let (chunks, chunk_rx) = mpsc::channel(64);
        let (maps, have_rx) = Maps::new(hash, sched.len());
        let now = Instant::now();
        let d = Download {
            hash,
            release: crate::shared::release_ref(m),
            layout: Layout::new(&files),
            seed,
            sched,
            progress,
            reports: ProgressReports::new(),
            chunks,
            maps,
            upstream: Upstream::new(m.value().origins.clone()),
            start: now,
            last_new_chunk: now,
            last_provider_lookup: None,
            peers_dirty: true,
            upstream_dirty: true,
            unsynced: 0,
            syncing: Arc::new(AtomicBool::new(false)),
            s,
        };
        Ok((d, chunk_rx, have_rx))
    }

    /// Yanked, or no longer current (expired, superseded, or absent from a fresh statement).
    fn stopped(&self) -> bool {
        let t = self.s.trust();
        t.yanks.contains_key(&self.hash) || !t.is_current(&self.hash, crate::clock::now())
    }

    /// Other sites come first (for provider lookups, their have-maps and upstream work) when
    /// configured so, when no origin is usable, or while the origin keeps failing (a remote
    /// endpoint that cannot reach it).
    fn remote_needed(&self) -> bool {
        self.s.cfg.site_upstream == SiteUpstream::Peers
            || self.upstream.usable_origin().is_none()
            || self.upstream.origin_failing()
    }

    /// Something changed that is not a chunk's news (time passed, peers came or went): the next
    /// plan looks at everything.
    fn look_again(&mut self) {
        self.peers_dirty = true;
        self.upstream_dirty = true;
    }

    /// Starts what is due now.
    async fn plan(&mut self) {
        let remote_needed = self.remote_needed();
        // Nodes holding the release at other sites (or beyond this node's peers) are found in
        // Kademlia and dialed, and asked again while the download runs, but only while this node
        // may take chunks from other sites: a lookup crosses every site's link.
        if remote_needed && self.last_provider_lookup.is_none_or(|t| t.elapsed() >= PROVIDER_LOOKUP) {
            self.s.net.find_providers(self.hash).await;
            self.last_provider_lookup = Some(Instant::now());
        }
        if std::mem::take(&mut self.peers_dirty) {
            self.maps.follow(&self.s, &mut self.sched);
        }
        // Other sites' have-maps matter only to a fetcher that would take chunks from them.
        self.maps.poll(&self.s, &self.sched, self.upstream.was_fetcher && remote_needed);
        self.maps.restore(&mut self.sched);
        for (peer, flat) in self.sched.next_requests(elapsed_ms(self.start)) {
            let Some((file, idx)) = self.layout.locate(flat) else { continue };
            let (s, tx, file) = (self.s.clone(), self.chunks.clone(), file.clone());
            tokio::spawn(async move {
                let r = fetch_chunk(&s, peer, &file, idx).await;
                let _ = tx.send((Source::Peer(peer), flat, r)).await;
            });
        }
        if std::mem::take(&mut self.upstream_dirty) {
            self.upstream_work(remote_needed);
        }
    }

    /// Origin work starts once the first look at the peers is answered, at [`ORIGIN_SETTLE`]
    /// at the latest (peers that have not answered count as participants).
    fn settled(&self) -> bool {
        self.start.elapsed() >= ORIGIN_SETTLE || self.maps.first_round_done()
    }

    /// Upstream work: chunks nobody at this site holds, split among the site's nodes that want
    /// the release, fetched from an origin or from a peer at another site.
    fn upstream_work(&mut self, remote_needed: bool) {
        let origin_ready = self.upstream.origin_ready();
        if !((origin_ready || !self.maps.remote.is_empty()) && self.settled()) {
            return;
        }
        let mut participants = self.maps.participants(&self.s, &self.sched, self.start, self.last_new_chunk);
        participants.push(self.s.net.local);
        let Some(at) = self.upstream.role(&self.s, &self.hash, &participants, self.sched.len()) else { return };
        let max = self.s.cfg.max_origin_inflight;
        if self.sched.origin_inflight() >= max {
            return;
        }
        let usable_origin = self.upstream.usable_origin();
        for flat in self.upstream.mine(at, self.sched.origin_candidates(), self.seed) {
            if self.sched.origin_inflight() >= max {
                break;
            }
            let Some((file, idx)) = self.layout.locate(flat) else { continue };
            let banned = |p: &PeerId| self.sched.is_banned(p) || self.s.is_banned(p);
            let holder = remote_holder(&self.maps.remote, flat, self.seed, banned);
            let source = match (remote_needed, holder, usable_origin) {
                (true, Some(p), _) => Source::Remote(p),
                (_, _, Some(oi)) if origin_ready => Source::Origin(oi),
                (false, Some(p), None) => Source::Remote(p),
                _ => continue,
            };
            self.sched.start_origin(flat);
            let (s, tx, file) = (self.s.clone(), self.chunks.clone(), file.clone());
            match source {
                Source::Origin(oi) => {
                    let base = self.upstream.origins[oi].clone();
                    tokio::spawn(async move {
                        let r = fetch_from_origin(&s, &base, &file, idx).await;
                        let _ = tx.send((Source::Origin(oi), flat, r)).await;
                    });
                }
                Source::Remote(p) | Source::Peer(p) => {
                    tracing::debug!(peer = %p, chunk = flat, "fetching a chunk from another site");
                    tokio::spawn(async move {
                        let r = fetch_chunk(&s, p, &file, idx).await;
                        let _ = tx.send((Source::Remote(p), flat, r)).await;
                    });
                }
            }
        }
    }

    /// The next time something is due if no news arrives.
    fn next_wake(&self) -> Instant {
        let backoff =
            self.sched.next_backoff_end(elapsed_ms(self.start)).map(|ms| self.start + Duration::from_millis(ms));
        let settle = (!self.settled()).then(|| self.start + ORIGIN_SETTLE);
        [backoff, settle, self.upstream.backoff_end(), self.maps.next_wake()]
            .into_iter()
            .flatten()
            .fold(Instant::now() + TICK, Instant::min)
    }

    fn on_have(&mut self, ev: HaveEvent) {
        let peer = match &ev {
            HaveEvent::Map(p, _) | HaveEvent::Delta(p, _, _) | HaveEvent::Ended(p, _) => *p,
        };
        let same_site = self.s.net.same_site(&peer);
        if matches!(ev, HaveEvent::Ended(..)) {
            self.peers_dirty = true;
        }
        if self.maps.on_event(ev, same_site, &mut self.sched) {
            self.upstream_dirty = true;
        }
    }

    async fn on_chunk(&mut self, (source, flat, result): ChunkResult) -> Result<()> {
        let Some((file, idx)) = self.layout.locate(flat).map(|(f, i)| (f.clone(), i)) else { return Ok(()) };
        let byte_source = match source {
            Source::Peer(_) | Source::Remote(_) => ByteSource::Peer,
            Source::Origin(_) => ByteSource::Origin,
        };
        // Counted here once, for peers and origins alike.
        if let Err(e) = &result
            && let Some(reason) = chunk_refusal(e)
        {
            self.s.metrics.chunk_refused(byte_source, reason);
        }
        if !matches!(source, Source::Peer(_)) {
            // An upstream slot is free again.
            self.upstream_dirty = true;
        }
        match (source, result) {
            (source, Ok(chunk)) => self.on_stored(source, flat, &file, idx, chunk).await?,
            (Source::Origin(oi), Err(e)) => {
                self.sched.origin_finished(flat, false);
                self.upstream.failed(&self.s, oi, flat, e).await;
            }
            (Source::Remote(peer), Err(e)) => self.on_remote_failed(peer, flat, e).await,
            (Source::Peer(peer), Err(e)) => self.on_peer_failed(peer, flat, e).await,
        }
        Ok(())
    }

    /// A verified chunk: stored, counted, reported.
    async fn on_stored(
        &mut self,
        source: Source,
        flat: usize,
        file: &FileEntry,
        idx: u32,
        chunk: VerifiedChunk,
    ) -> Result<()> {
        let len = chunk.len() as u64;
        let (lib, fh) = (self.s.library.clone(), file.hash);
        tokio::task::spawn_blocking(move || lib.write_chunk(&fh, chunk))
            .await?
            .with_context(|| format!("storing chunk {idx} of {}", file.path))?;
        self.sync_in_background(fh, len);
        let (new, from, byte_source) = match source {
            Source::Peer(peer) => (self.sched.completed(&peer, flat), peer.to_string(), ByteSource::Peer),
            Source::Origin(oi) => {
                self.upstream.succeeded(oi);
                let from = format!("origin {}", self.upstream.origins.get(oi).map(String::as_str).unwrap_or("?"));
                (self.sched.origin_finished(flat, true), from, ByteSource::Origin)
            }
            Source::Remote(peer) => (self.sched.origin_finished(flat, true), peer.to_string(), ByteSource::Peer),
        };
        self.s.metrics.received(byte_source, len, new);
        if new {
            self.last_new_chunk = Instant::now();
            self.count_new_chunk(&from, len, byte_source).await;
        }
        let _ = self.s.store.add_transfer(from, len, 0).await;
        Ok(())
    }

    /// Every [`SYNC_STEP`] bytes stored, the partial file's writes go to disk in the background.
    fn sync_in_background(&mut self, file: Hash32, len: u64) {
        self.unsynced += len;
        if self.unsynced < SYNC_STEP || self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unsynced = 0;
        let (lib, syncing) = (self.s.library.clone(), self.syncing.clone());
        tokio::task::spawn_blocking(move || {
            // A failure here is not the download's: finalize syncs again and fails then.
            if let Err(e) = lib.sync_partial(&file) {
                tracing::debug!("background sync: {e:#}");
            }
            syncing.store(false, Ordering::Release);
        });
    }

    async fn count_new_chunk(&mut self, from: &str, len: u64, source: ByteSource) {
        let p = &mut self.progress;
        p.have_chunks += 1;
        p.fetched_chunks += 1;
        *p.bytes_from.entry(from.to_string()).or_default() += len;
        match source {
            ByteSource::Peer => p.from_peers += len,
            ByteSource::Origin => p.from_origin += len,
        }
        self.s.downloads.report(self.hash, self.progress.clone()).await;
        if let Some(due) = self.reports.due(&self.progress)
            && let Err(e) = self.s.lifecycle.progress(&self.release, due).await
        {
            tracing::warn!(manifest = %self.hash.short(), "cannot report download progress: {e:#}");
        }
    }

    async fn on_remote_failed(&mut self, peer: PeerId, flat: usize, e: FetchError) {
        self.sched.origin_finished(flat, false);
        if let Some(bits) = self.maps.remote.get_mut(&peer)
            && let Some(b) = bits.get_mut(flat)
        {
            // Not asked for this chunk again until its next have-map says it holds it.
            *b = false;
        }
        if matches!(e, FetchError::Bad(_) | FetchError::BadLength(_)) {
            self.maps.remote.remove(&peer);
            self.sched.ban(&peer);
            self.s.ban(peer, format!("sent a corrupt chunk: {e}")).await;
        } else {
            tracing::debug!(%peer, chunk = flat, "chunk request to another site failed: {e}");
        }
    }

    async fn on_peer_failed(&mut self, peer: PeerId, flat: usize, e: FetchError) {
        let now = elapsed_ms(self.start);
        match e {
            FetchError::Bad(_) | FetchError::BadLength(_) => {
                self.sched.failed(&peer, flat, now, BACKOFF_MS);
                self.sched.ban(&peer);
                let what = if matches!(e, FetchError::Bad(_)) { "corrupt" } else { "malformed" };
                self.s.ban(peer, format!("sent a {what} chunk: {e}")).await;
            }
            FetchError::Busy => {
                // Jitter, so the nodes turned away together do not come back together.
                let jitter = (self.seed ^ flat as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57;
                self.sched.busy(&peer, flat, now, BUSY_BACKOFF_MS + jitter);
            }
            FetchError::Elsewhere(holder) => {
                self.sched.elsewhere(&peer, flat);
                self.maps.note_cleared();
                // The seed named the peer it sent the chunk to: ask that peer now rather than
                // after its next have-map shows it (a peer of this site, connected, not banned).
                if let Some(h) = holder
                    && h != peer
                    && h != self.s.net.local
                    && self.s.net.same_site(&h)
                    && !self.s.is_banned(&h)
                {
                    self.sched.hint(h, flat);
                }
            }
            other => {
                tracing::debug!(%peer, chunk = flat, "chunk request failed: {other}");
                self.sched.failed(&peer, flat, now, BACKOFF_MS);
                self.maps.note_cleared();
            }
        }
    }

    /// Every chunk is here: each file is checked whole and moved into blobs/.
    async fn finish(self) -> Result<Outcome> {
        for f in &self.layout.files {
            let (lib, fh) = (self.s.library.clone(), f.hash);
            tokio::task::spawn_blocking(move || lib.finalize(&fh)).await??;
        }
        let holders = self.maps.holders(&self.s);
        Ok(Outcome::Complete { announce: wan::announces(&self.hash, &self.s.net.local.to_bytes(), &holders) })
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    fn at(have: usize) -> Progress {
        Progress { total_chunks: 100, have_chunks: have, ..Default::default() }
    }

    #[test]
    fn progress_is_reported_at_tenths_spaced_in_time_and_always_at_the_end() {
        let mut r = ProgressReports::new();
        assert!(r.due(&at(5)).is_none(), "below the first tenth");
        assert_eq!(r.due(&at(10)).map(|p| p.have_chunks), Some(10));
        // The next tenth came too soon after the last report: not reported.
        assert!(r.due(&at(25)).is_none());
        // The last chunk is always reported.
        assert_eq!(r.due(&at(100)).map(|p| (p.have_chunks, p.total_chunks)), Some((100, 100)));
        let mut r = ProgressReports::new();
        r.last = Some(Instant::now() - PROGRESS_REPORT_INTERVAL);
        assert!(r.due(&at(31)).is_some());
        r.last = Some(Instant::now() - PROGRESS_REPORT_INTERVAL);
        assert!(r.due(&at(35)).is_none(), "still in the same tenth");
        assert!(ProgressReports::new().due(&Progress::default()).is_none());
    }
}
