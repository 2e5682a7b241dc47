//! Swarm download of one release: the [`Scheduler`] decides, this module does the I/O and
//! reports progress to the download owner.
//!
//! Peers' have-maps are refreshed in rounds (every 0.7 s, sooner when idle); chunk requests and
//! have-map queries run in their own tasks, each on a fresh stream, and report back over channels,
//! so a slow peer never holds up the loop. Every chunk is verified against the signed manifest
//! before it is written; a peer that sends a bad chunk is banned at once.
//!
//! The first round asks every peer (peers that have not answered yet count as participants in the
//! origin work, so the site's origin fetchers are chosen alike on every node); later
//! rounds ask the site's origin fetchers (where new chunks appear first) and at most
//! [`HAVE_FANOUT`] others, least recently asked first, and never a peer that already holds the
//! whole release. A node's have-map queries per round therefore stay bounded at any fleet size
//! instead of growing with N (N x N across the site).

use crate::metrics::{ByteSource, ChunkRefusal, OriginFailure};
use lanpatch_protocol::control::RefusalKind;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::AsyncWriteExt;
use lanpatch_protocol::{ChunkError, DownloadProgress, FileEntry, Hash32, ReleaseManifest, Signed, VerifiedChunk};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::handle::Progress;
use super::origins::{self, Origins, Verdict};
use crate::config::DropDownloads;
use crate::sched::Scheduler;
use crate::shared::Shared;
use crate::wan;
use crate::wire::{self, Request, Response, WireError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const HAVE_TIMEOUT: Duration = Duration::from_secs(3);
const REFRESH: Duration = Duration::from_millis(700);
/// Origin fetching starts once every peer asked in the first have-map round has answered (or
/// failed), so that chunks a site peer already holds are not fetched across the WAN, and at the
/// latest this long after the download started, so that a peer slow to answer on a loaded site
/// does not hold up the site's origin work. Who fetches does not wait on answers: a connected
/// peer that has not answered counts as a participant (see [`Download::upstream_work`]).
/// On an idle LAN the answers are in within tens of milliseconds; a fixed 0.8 s wait was 6 % of
/// the physical limit of a 32 MiB release over a 20 Mbit/s link.
const ORIGIN_SETTLE: Duration = Duration::from_millis(800);
/// When nothing is in flight, have-maps are refreshed this soon rather than after `REFRESH`, so a
/// node waiting for the last chunks notices them quickly.
const IDLE_REFRESH: Duration = Duration::from_millis(150);
/// A downloading peer whose have-map has not grown for this long is presumed stalled; its share
/// of origin work moves to the others.
const STALL: Duration = Duration::from_secs(15);
/// A downloading peer whose have-map has not grown for this long is stalled even if nobody else
/// progressed either.
const STALL_ALWAYS: Duration = Duration::from_secs(60);
/// For this long after a download starts, a peer that said it is not downloading the release (and
/// does not hold all of it) still counts as a participant in the origin work.
const UNDECIDED: Duration = Duration::from_secs(5);
/// A request the peer never took is sent again after this (plus up to 31 ms of jitter).
const DROPPED_BACKOFF_MS: u64 = 20;
/// Requests a peer may leave unanswered in a row (see `FetchError::Dropped`) before the next one
/// counts as a failure: a peer that drops every request, whatever the reason, does not hold its
/// chunks hostage (a failure clears the chunk from its map, so the origin or another peer gets it).
const DROPPED_STREAK: u32 = 4;
/// Have-map queries per refresh round besides the origin fetchers.
const HAVE_FANOUT: usize = 8;
/// The first wait before a chunk is asked of a peer again after a failed request.
const BACKOFF_MS: u64 = 1500;
/// A peer that answered `Busy` is asked again this soon: it holds the chunk, and at the end of a
/// transfer every node asks the few holders of the last chunks at once.
const BUSY_BACKOFF_MS: u64 = 150;
/// Every this many bytes stored, the partial file's writes so far go to disk in the background
/// (see `Library::sync_partial`).
const SYNC_STEP: u64 = 8 * 1024 * 1024;
/// Have-map queries per round to peers at other sites, and how often one such peer is asked.
const REMOTE_FANOUT: usize = 2;
const REMOTE_REFRESH: Duration = Duration::from_secs(2);
/// How often a running download looks up the release's holders in Kademlia.
const PROVIDER_LOOKUP: Duration = Duration::from_secs(60);

/// A peer at another site that holds `flat`, spread over the holders by chunk (every call for
/// the same chunk picks the same one while the holders stay the same).
fn remote_holder(
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

pub enum Outcome {
    /// Every chunk verified and stored; `announce`: this node is one of its site's announcers
    /// of the release in Kademlia (see `wan::announces`).
    Complete {
        announce: bool,
    },
    Stopped,
}

/// Why one chunk request failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The peer sent bytes that do not match the signed manifest: it lied.
    #[error(transparent)]
    Bad(#[from] ChunkError),
    #[error("peer sent a chunk of the wrong length: {0}")]
    BadLength(WireError),
    #[error("peer does not have the chunk")]
    NotFound,
    #[error("peer is busy")]
    Busy,
    /// The stream closed before the peer answered: it never took the request. libp2p-stream
    /// hands a node's inbound streams to its serving task through a one-slot channel and drops a
    /// stream that finds the slot taken, so a burst of requests to a loaded node loses some.
    #[error("peer dropped the request unanswered: {0}")]
    Dropped(WireError),
    /// The peer (a seed) sent that chunk to another peer already, named if it said which.
    #[error("peer sent that chunk to another peer already")]
    Elsewhere(Option<PeerId>),
    #[error("timed out")]
    Timeout,
    /// The origin redirected where the policy does not allow (another origin, a file:// URL).
    #[error("{0}")]
    Redirect(String),
    #[error("{0}")]
    Other(String),
}

impl FetchError {
    /// The peer still holds the chunk and is asked again soon: it was busy, or never took the
    /// request.
    fn retry_soon(&self) -> bool {
        matches!(self, FetchError::Busy | FetchError::Dropped(_))
    }
}

/// An error before the response header is in: an I/O error means the peer never took the
/// request (see [`FetchError::Dropped`]); anything else is a failure.
fn unanswered(e: WireError) -> FetchError {
    match e {
        WireError::Io(_) => FetchError::Dropped(e),
        other => FetchError::Other(other.to_string()),
    }
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

/// A downloading peer is stalled when its have-map has not grown for [`STALL`] while this node's
/// did: it hung or lost its way to the origin while the site moved on. When the whole site waits
/// (a congested WAN link), nobody is stalled and the origin fetchers stay who they are; dropping
/// them then would only elect more fetchers and open more connections across the congested link.
///
/// The quiet must have been seen: the peer answered a have-map query [`STALL`] or more after its
/// last progress. A peer this node has not heard from lately (its answers late on a loaded site,
/// or not asked again yet: at 64 nodes each is asked about every 5 s) is not judged on an old
/// map. Judged on old maps, the busiest peers (the fetchers, uploading to everyone) looked stalled
/// to some nodes and not to others, the nodes disagreed on who the fetchers were, and ranges were
/// fetched twice (1.15-1.32 x S from the origin at 64 nodes).
///
/// Whatever the site does, a peer whose have-map has not grown for [`STALL_ALWAYS`] is stalled:
/// peers that claim to download and never progress (a Sybil set ground to rank first as fetchers)
/// hold up the site's origin work for at most that long.
fn stalled(v: &PeerView, my_progress: Instant) -> bool {
    let quiet = v.last_progress.elapsed();
    let seen_quiet = v.last_answer.saturating_duration_since(v.last_progress) >= STALL;
    quiet >= STALL_ALWAYS || (seen_quiet && my_progress > v.last_progress + STALL)
}

/// What this node last learned about a peer for the current release.
struct PeerView {
    downloading: bool,
    have_count: usize,
    last_progress: Instant,
    /// When the peer last answered a have-map query.
    last_answer: Instant,
}

/// What one have-map query returned: the peer's chunks and whether it is downloading, `None`
/// when it does not know the release; an error; or no answer in time.
type HaveResult = Result<Result<Option<(Vec<bool>, bool)>>, tokio::time::error::Elapsed>;
type HaveAnswer = (PeerId, HaveResult);

/// The have-map queries of one download: who is being asked, who was asked when.
struct Refresh {
    tx: mpsc::Sender<HaveAnswer>,
    asking: HashSet<PeerId>,
    last_asked: HashMap<PeerId, Instant>,
    /// Whether the first round (every peer) has been sent.
    first_round_sent: bool,
    /// Peers of the first round that have not answered yet.
    first_round_pending: HashSet<PeerId>,
    /// Have-maps of peers at other sites. They never enter the scheduler: a chunk crosses to
    /// this site from another one like from an origin, fetched once by its owner among the
    /// site's fetchers (see [`Download::upstream_work`]).
    remote: HashMap<PeerId, Vec<bool>>,
}

impl Refresh {
    fn new(tx: mpsc::Sender<HaveAnswer>) -> Self {
        Refresh {
            tx,
            asking: HashSet::new(),
            last_asked: HashMap::new(),
            first_round_sent: false,
            first_round_pending: HashSet::new(),
            remote: HashMap::new(),
        }
    }
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

/// What a request task sends back: where the chunk came from, which chunk, and what happened.
type Fetched = (Source, usize, Result<VerifiedChunk, FetchError>);

/// The chunk channels of a download: finished chunk requests and have-map answers.
struct Inbox {
    chunks: mpsc::Receiver<Fetched>,
    haves: mpsc::Receiver<HaveAnswer>,
}

/// Which of the site's nodes fetch from upstream, as this node last saw it, and who owns which
/// chunk among them (`wan::assign`).
#[derive(Default)]
struct Upstream {
    /// Whether this node is one of the fetchers.
    fetcher: bool,
    set: Vec<Vec<u8>>,
    owners: Vec<usize>,
}

/// Bytes stored since the last background sync of the partial files, and whether one runs.
#[derive(Default)]
struct Syncs {
    unsynced: u64,
    running: Arc<std::sync::atomic::AtomicBool>,
}

/// One release being downloaded: everything the loop keeps between events. [`download`] runs it:
/// each round it [`Download::plan`]s requests, then waits for one event and hands it to the
/// method for that event.
struct Download {
    s: Arc<Shared>,
    hash: Hash32,
    release: crate::report::ReleaseRef,
    files: Vec<FileEntry>,
    layout: Layout,
    /// Spreads this node's choices (chunk order, jitter) from other nodes'.
    seed: u64,
    sched: Scheduler<PeerId>,
    progress: Progress,
    progress_reports: ProgressReports,
    chunks: mpsc::Sender<Fetched>,
    refresh: Refresh,
    views: HashMap<PeerId, PeerView>,
    origins: Origins,
    upstream: Upstream,
    syncs: Syncs,
    start: Instant,
    last_refresh: Option<Instant>,
    /// Nodes holding the release at other sites (or beyond this node's peers) are found in
    /// Kademlia and dialed, and asked again while the download runs for holders that appear
    /// later, but only while this node may take chunks from other sites (see
    /// [`Download::remote_needed`]): a lookup crosses every site's link, and at a site that pulls
    /// from its origin lookups from every node cost more of the link than the release's gossip
    /// and reports.
    last_provider_lookup: Option<Instant>,
    /// When this node last got a chunk it did not have (the site's progress, as seen from here).
    last_new_chunk: Instant,
    /// Requests each peer left unanswered in a row (see [`DROPPED_STREAK`]).
    dropped: HashMap<PeerId, u32>,
}

pub async fn download(s: Arc<Shared>, m: Signed<ReleaseManifest>) -> Result<Outcome> {
    let (mut d, mut inbox) = Download::open(s, &m).await?;
    let mut shutdown = d.s.shutdown.clone();
    while !d.sched.is_done() {
        if d.stopped() {
            return Ok(Outcome::Stopped);
        }
        d.plan().await;
        tokio::select! {
            _ = shutdown.changed() => return Ok(Outcome::Stopped),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            Some((source, flat, result)) = inbox.chunks.recv() => d.fetched(source, flat, result).await?,
            Some((peer, answer)) = inbox.haves.recv() => d.have_answer(peer, answer),
        }
    }
    d.finish().await
}

impl Download {
    /// Registers the release's files (resuming what is on disk) and reports the starting progress.
    async fn open(s: Arc<Shared>, m: &Signed<ReleaseManifest>) -> Result<(Download, Inbox)> {
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
        let id = blake3::hash(&s.net.local.to_bytes());
        let seed = u64::from_le_bytes(id.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let sched = Scheduler::<PeerId>::new(have, s.cfg.max_inflight_per_peer, seed);
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
        let (chunks, chunks_rx) = mpsc::channel(64);
        let (have_tx, haves_rx) = mpsc::channel(64);
        let start = Instant::now();
        let d = Download {
            hash,
            release: crate::shared::release_ref(m),
            layout: Layout::new(&files),
            files,
            seed,
            sched,
            progress,
            progress_reports: ProgressReports::new(),
            chunks,
            refresh: Refresh::new(have_tx),
            views: HashMap::new(),
            origins: Origins::new(m.value().origins.clone(), start),
            upstream: Upstream::default(),
            syncs: Syncs::default(),
            start,
            last_refresh: None,
            last_provider_lookup: None,
            last_new_chunk: start,
            dropped: HashMap::new(),
            s,
        };
        Ok((d, Inbox { chunks: chunks_rx, haves: haves_rx }))
    }

    /// Yanked, or no longer current (expired, replaced): checked before every round, so a
    /// download stops as soon as the metadata says so.
    fn stopped(&self) -> bool {
        let t = self.s.trust();
        t.yanks.contains_key(&self.hash) || !t.is_current(&self.hash, crate::clock::now())
    }

    /// Other sites come first (for provider lookups, their have-maps and upstream work) when
    /// configured so, when no origin is usable, or while the origin keeps failing (a remote
    /// endpoint that cannot reach it).
    fn remote_needed(&self) -> bool {
        self.s.cfg.site_upstream == crate::site::Upstream::Peers
            || self.origins.usable().is_none()
            || self.origins.failing()
    }

    /// One round: a provider lookup and a have-map round when due, chunk requests to peers, and
    /// this node's share of the upstream work.
    async fn plan(&mut self) {
        let remote_needed = self.remote_needed();
        if remote_needed && self.last_provider_lookup.is_none_or(|t| t.elapsed() >= PROVIDER_LOOKUP) {
            self.s.net.find_providers(self.hash).await;
            self.last_provider_lookup = Some(Instant::now());
        }
        let idle = self.sched.inflight_total() == 0 && self.sched.origin_inflight() == 0;
        let due = if idle { IDLE_REFRESH } else { REFRESH };
        if self.last_refresh.is_none_or(|t| t.elapsed() >= due) {
            // Other sites' have-maps matter only to a fetcher that would take chunks from them.
            let want_remote = self.upstream.fetcher && remote_needed;
            self.refresh_round(want_remote);
            self.last_refresh = Some(Instant::now());
        }
        for (peer, flat) in self.sched.next_requests(elapsed_ms(self.start)) {
            if !self.spawn_fetch(Source::Peer(peer), flat) {
                self.sched.failed(&peer, flat, elapsed_ms(self.start), BACKOFF_MS);
            }
        }
        self.upstream_work(remote_needed);
    }

    /// Starts one chunk request in its own task; its result comes back through the inbox.
    /// False when there is nothing to start (a chunk or an origin out of range).
    fn spawn_fetch(&self, source: Source, flat: usize) -> bool {
        let Some((file, idx)) = self.layout.locate(flat) else { return false };
        let (s, tx, file) = (self.s.clone(), self.chunks.clone(), file.clone());
        let base = match source {
            Source::Origin(oi) => match self.origins.url(oi) {
                Some(u) => Some(u.to_string()),
                None => return false,
            },
            Source::Peer(_) | Source::Remote(_) => None,
        };
        tokio::spawn(async move {
            let r = match (&source, base) {
                (Source::Origin(_), Some(base)) => fetch_from_origin(&s, &base, &file, idx).await,
                (Source::Peer(p) | Source::Remote(p), _) => fetch_chunk(&s, *p, &file, idx).await,
                (Source::Origin(_), None) => Err(FetchError::NotFound),
            };
            let _ = tx.send((source, flat, r)).await;
        });
        true
    }

    /// Upstream work: chunks nobody at this site holds, split among the site's nodes that want
    /// the release, fetched from an origin or from a peer at another site. Only a handful of the
    /// site's nodes fetch (see wan.rs); the others have no upstream work and spend nothing on it.
    fn upstream_work(&mut self, remote_needed: bool) {
        let origin_ready = self.origins.ready(Instant::now());
        // Origin work starts when the first round is answered, at ORIGIN_SETTLE at the latest
        // whether or not every peer has answered (those that have not count as participants).
        let settled = self.start.elapsed() >= ORIGIN_SETTLE
            || (self.refresh.first_round_sent && self.refresh.first_round_pending.is_empty());
        if !((origin_ready || !self.refresh.remote.is_empty()) && settled) {
            return;
        }
        let Some(me_at) = self.fetcher_role() else { return };
        if self.sched.origin_inflight() >= self.s.cfg.max_origin_inflight {
            return;
        }
        let seed = self.seed;
        let mut mine: Vec<usize> = self
            .sched
            .origin_candidates()
            .into_iter()
            .filter(|c| self.upstream.owners.get(*c) == Some(&me_at))
            .collect();
        mine.sort_by_key(|c| (*c as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let usable_origin = self.origins.usable();
        for flat in mine {
            if self.sched.origin_inflight() >= self.s.cfg.max_origin_inflight {
                break;
            }
            let holder =
                remote_holder(&self.refresh.remote, flat, seed, |p| self.sched.is_banned(p) || self.s.is_banned(p));
            let source = match (remote_needed, holder, usable_origin) {
                (true, Some(p), _) => Source::Remote(p),
                (_, _, Some(oi)) if origin_ready => Source::Origin(oi),
                (false, Some(p), None) => Source::Remote(p),
                _ => continue,
            };
            if let Source::Remote(p) = &source {
                tracing::debug!(peer = %p, chunk = flat, "fetching a chunk from another site");
            }
            if self.spawn_fetch(source, flat) {
                self.sched.start_origin(flat);
            }
        }
    }

    /// Who fetches upstream for the site as this node sees it: this node's place among the
    /// fetchers, `None` when it is not one. The owners of the chunks are recomputed only when the
    /// fetcher set changes; a fetcher whose set changes hands chunks to or takes them from
    /// others, which is logged: a changed set on a site that did not change is how ranges get
    /// fetched twice.
    fn fetcher_role(&mut self) -> Option<usize> {
        let me = self.s.net.local;
        let mut participants = self.participants();
        participants.push(me);
        let ids: Vec<Vec<u8>> = participants.iter().map(|p| p.to_bytes()).collect();
        let fetchers: Vec<&Vec<u8>> =
            wan::fetchers(&self.hash, &ids, self.s.cfg.site_origin_fetchers).into_iter().map(|i| &ids[i]).collect();
        let my_id = me.to_bytes();
        let me_at = fetchers.iter().position(|f| **f == my_id);
        let (manifest, n) = (self.hash.short(), participants.len());
        if me_at.is_some() != self.upstream.fetcher {
            self.upstream.fetcher = me_at.is_some();
            tracing::debug!(%manifest, participants = n, fetcher = self.upstream.fetcher, views = self.views.len(), "origin fetcher role changed");
        }
        if fetchers.iter().map(|f| f.as_slice()).ne(self.upstream.set.iter().map(Vec::as_slice)) {
            self.upstream.set = fetchers.iter().map(|f| (*f).clone()).collect();
            self.upstream.owners = wan::assign(&self.hash, self.sched.len(), &fetchers);
            if self.upstream.fetcher {
                let set: Vec<String> = fetchers
                    .iter()
                    .filter_map(|f| PeerId::from_bytes(f).ok())
                    .map(|p| p.to_base58().chars().rev().take(6).collect())
                    .collect();
                tracing::debug!(%manifest, participants = n, fetchers = ?set, "origin fetcher set");
            }
        }
        if self.s.cfg.site_origin_limit > 0 {
            let share = self.s.cfg.site_origin_limit / fetchers.len().max(1) as u64;
            let cfg = &self.s.cfg;
            let rate = if cfg.origin_limit > 0 { share.min(cfg.origin_limit) } else { share };
            self.s.origin_limit.set_rate(rate.max(1));
        }
        me_at
    }

    /// A finished chunk request, from wherever it went.
    async fn fetched(&mut self, source: Source, flat: usize, result: Result<VerifiedChunk, FetchError>) -> Result<()> {
        let from = match &source {
            Source::Peer(p) | Source::Remote(p) => p.to_string(),
            Source::Origin(i) => format!("origin {}", self.origins.url(*i).unwrap_or("?")),
        };
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
        if let (Source::Peer(p), r) = (&source, &result)
            && matches!(r, Ok(_) | Err(FetchError::Busy | FetchError::NotFound | FetchError::Elsewhere(_)))
        {
            // It answered: its streak of unanswered requests ends.
            self.dropped.remove(p);
        }
        match (source, result) {
            (source, Ok(chunk)) => self.stored(source, flat, chunk, from, byte_source).await?,
            (Source::Origin(oi), Err(e)) => self.origin_failed(oi, flat, e, from).await,
            (Source::Remote(peer), Err(e)) => self.remote_failed(peer, flat, e).await,
            (Source::Peer(peer), Err(e)) => self.peer_failed(peer, flat, e).await,
        }
        Ok(())
    }

    /// A verified chunk: stored, counted, and reported when it was new.
    async fn stored(
        &mut self,
        source: Source,
        flat: usize,
        chunk: VerifiedChunk,
        from: String,
        byte_source: ByteSource,
    ) -> Result<()> {
        let Some((file, idx)) = self.layout.locate(flat) else { return Ok(()) };
        let (len, lib, fh, path) = (chunk.len() as u64, self.s.library.clone(), file.hash, file.path.clone());
        tokio::task::spawn_blocking(move || lib.write_chunk(&fh, chunk))
            .await?
            .with_context(|| format!("storing chunk {idx} of {path}"))?;
        self.sync_in_background(fh, len);
        let new = match source {
            Source::Peer(peer) => self.sched.completed(&peer, flat),
            Source::Origin(oi) => {
                self.origins.delivered(oi, Instant::now());
                self.sched.origin_finished(flat, true)
            }
            Source::Remote(_) => self.sched.origin_finished(flat, true),
        };
        self.s.metrics.received(byte_source, len, new);
        if new {
            self.last_new_chunk = Instant::now();
            let p = &mut self.progress;
            p.have_chunks += 1;
            p.fetched_chunks += 1;
            *p.bytes_from.entry(from.clone()).or_default() += len;
            match byte_source {
                ByteSource::Peer => p.from_peers += len,
                ByteSource::Origin => p.from_origin += len,
            }
            self.s.downloads.report(self.hash, self.progress.clone()).await;
            if let Some(p) = self.progress_reports.due(&self.progress)
                && let Err(e) = self.s.lifecycle.progress(&self.release, p).await
            {
                tracing::warn!(manifest = %self.hash.short(), "cannot report download progress: {e:#}");
            }
        }
        let _ = self.s.store.add_transfer(from, len, 0).await;
        Ok(())
    }

    /// Every [`SYNC_STEP`] bytes stored, the partial file's writes so far go to disk in the
    /// background, one sync at a time.
    fn sync_in_background(&mut self, file: Hash32, len: u64) {
        use std::sync::atomic::Ordering;
        self.syncs.unsynced += len;
        if self.syncs.unsynced < SYNC_STEP || self.syncs.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.syncs.unsynced = 0;
        let (lib, running) = (self.s.library.clone(), self.syncs.running.clone());
        tokio::task::spawn_blocking(move || {
            // A failure here is not the download's: finalize syncs again and fails then.
            if let Err(e) = lib.sync_partial(&file) {
                tracing::debug!("background sync: {e:#}");
            }
            running.store(false, Ordering::Release);
        });
    }

    async fn origin_failed(&mut self, oi: usize, flat: usize, e: FetchError, from: String) {
        self.sched.origin_finished(flat, false);
        // Wrong bytes or a refused redirect: this origin is not used again for the release.
        let refused = matches!(e, FetchError::Bad(_) | FetchError::BadLength(_) | FetchError::Redirect(_));
        self.s.metrics.origin_failed(if refused { OriginFailure::Bad } else { OriginFailure::Error });
        match self.origins.failed(oi, refused, self.s.cfg.origin_max_failures, Instant::now()) {
            Verdict::Refused => {
                let why = format!("{e}; not using this origin for the rest of the release");
                self.s.refuse(from, RefusalKind::OriginChunk, why).await;
            }
            Verdict::Failing { failures } => {
                let why =
                    format!("{e}; {failures} failures in a row, not using this origin for the rest of the release");
                self.s.refuse(from, RefusalKind::OriginFailing, why).await;
            }
            Verdict::Congested => {
                let wait = origins::BACKOFF.as_millis();
                tracing::info!(origin = %from, chunk = flat, "origin request failed: {e}; the origin is alive (congestion?), next try in {wait} ms");
            }
            Verdict::Retry { failures, wait } => {
                let wait = wait.as_millis();
                tracing::warn!(origin = %from, chunk = flat, failures, "origin request failed: {e}; next try in {wait} ms");
            }
        }
    }

    async fn remote_failed(&mut self, peer: PeerId, flat: usize, e: FetchError) {
        self.sched.origin_finished(flat, false);
        if let Some(bits) = self.refresh.remote.get_mut(&peer)
            && let Some(b) = bits.get_mut(flat)
        {
            // Not asked for this chunk again until its next have-map says it holds it.
            *b = false;
        }
        if matches!(e, FetchError::Bad(_) | FetchError::BadLength(_)) {
            self.refresh.remote.remove(&peer);
            self.sched.ban(&peer);
            self.s.ban(peer, format!("sent a corrupt chunk: {e}")).await;
        } else {
            tracing::debug!(%peer, chunk = flat, "chunk request to another site failed: {e}");
        }
    }

    async fn peer_failed(&mut self, peer: PeerId, flat: usize, e: FetchError) {
        let now_ms = elapsed_ms(self.start);
        let streak = match &e {
            FetchError::Dropped(_) => {
                let n = self.dropped.entry(peer).or_default();
                *n += 1;
                *n
            }
            _ => 0,
        };
        match e {
            FetchError::Bad(e) => {
                self.sched.failed(&peer, flat, now_ms, BACKOFF_MS);
                self.sched.ban(&peer);
                self.s.ban(peer, format!("sent a corrupt chunk: {e}")).await;
            }
            FetchError::BadLength(e) => {
                self.sched.failed(&peer, flat, now_ms, BACKOFF_MS);
                self.sched.ban(&peer);
                self.s.ban(peer, format!("sent a malformed chunk: {e}")).await;
            }
            // A request the peer never took (see `FetchError::Dropped`) is a busy peer, not a
            // failed one: it still holds the chunk. Counted as a failure, it cleared the chunk
            // from the peer's map and backed off for 1.5 s; when that peer was the only holder
            // (the seed, early in a release), the whole node waited: the 1.5-s steps of the
            // loopback soak's fan-out times.
            e if e.retry_soon() && streak <= DROPPED_STREAK => {
                tracing::debug!(%peer, chunk = flat, "chunk request: {e}; asking again soon");
                // Jitter, so the nodes turned away together do not come back together. A dropped
                // request found the peer's serving task a moment behind, not its uploads full: it
                // is asked again almost at once.
                let mix = (self.seed ^ flat as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let wait = match e {
                    FetchError::Dropped(_) => DROPPED_BACKOFF_MS + (mix >> 59),
                    _ => BUSY_BACKOFF_MS + (mix >> 57),
                };
                self.sched.busy(&peer, flat, now_ms, wait);
            }
            FetchError::Elsewhere(holder) => {
                self.sched.elsewhere(&peer, flat);
                // The seed named the peer it sent the chunk to: ask that peer now rather than
                // after a have-map round shows it (a peer of this site, connected, not banned).
                if let Some(h) = holder
                    && h != peer
                    && h != self.s.net.local
                    && self.s.net.same_site(&h)
                    && !self.s.is_banned(&h)
                {
                    self.sched.hint(h, flat);
                }
            }
            e => {
                tracing::debug!(%peer, chunk = flat, "chunk request failed: {e}");
                self.sched.failed(&peer, flat, now_ms, BACKOFF_MS);
            }
        }
    }

    /// Every chunk is in: the files are finalized (synced, moved into place), and this node says
    /// whether it is one of its site's announcers of the release in Kademlia.
    async fn finish(self) -> Result<Outcome> {
        for f in &self.files {
            let (lib, fh) = (self.s.library.clone(), f.hash);
            tokio::task::spawn_blocking(move || lib.finalize(&fh)).await??;
        }
        // The site's holders as this node last saw them: peers that fetched or hold chunks of it
        // (`views` holds same-site peers only; other sites' have-maps live in `refresh.remote`).
        let holders: Vec<Vec<u8>> = self
            .views
            .iter()
            .filter(|(p, v)| (v.downloading || v.have_count > 0) && !self.s.is_banned(p))
            .map(|(p, _)| p.to_bytes())
            .collect();
        Ok(Outcome::Complete { announce: wan::announces(&self.hash, &self.s.net.local.to_bytes(), &holders) })
    }
}

impl Download {
    /// The same-site peers that take part in the release's origin work as this node sees them
    /// (this node not included). The site's origin fetchers are the best-ranked of them (see
    /// wan.rs), for the origin work and for the have-map rounds alike.
    fn participants(&self) -> Vec<PeerId> {
        // A connected peer that has not answered a have-map query yet counts (for the first
        // STALL_ALWAYS of the download, as long as a downloading peer that stopped progressing
        // would): on a loaded site answers are slow, and a node that counted only the peers that
        // answered would elect itself a fetcher, so that dozens of nodes would open origin
        // connections at once.
        let unknown_counts = self.start.elapsed() < STALL_ALWAYS;
        // A peer that said it is not downloading may only not have queued the release yet (on a
        // loaded site that takes a while): early on it counts too, unless it holds it all.
        let undecided_counts = self.start.elapsed() < UNDECIDED;
        let n = self.sched.len();
        let s = &self.s;
        s.net
            .ready_peers()
            .into_iter()
            .filter(|p| !self.sched.is_banned(p) && !s.is_banned(p) && s.net.same_site(p))
            .filter(|p| match self.views.get(p) {
                Some(v) if v.downloading => !stalled(v, self.last_new_chunk),
                Some(v) => undecided_counts && v.have_count < n,
                None => unknown_counts,
            })
            .collect()
    }

    /// Starts a round of have-map queries (see the module docs for whom it asks) and drops the
    /// peers that disconnected. Answers arrive through the inbox and go to
    /// [`Download::have_answer`].
    fn refresh_round(&mut self, want_remote: bool) {
        let ready: Vec<PeerId> = self.s.net.ready_peers();
        // Peers that disconnected drop out; their in-flight chunks become free and their share
        // of origin work moves to the others.
        let ready_set: HashSet<PeerId> = ready.iter().copied().collect();
        let gone: Vec<PeerId> = self
            .sched
            .peers()
            .filter(|p| !ready_set.contains(p))
            .chain(self.views.keys().filter(|p| !ready_set.contains(*p)).copied())
            .collect();
        for p in gone {
            self.sched.remove_peer(&p);
            self.views.remove(&p);
            self.refresh.last_asked.remove(&p);
            self.refresh.first_round_pending.remove(&p);
        }
        self.refresh.remote.retain(|p, _| ready_set.contains(p));
        let candidates: Vec<PeerId> = ready
            .into_iter()
            .filter(|p| !self.s.is_banned(p) && !self.sched.is_banned(p) && !self.refresh.asking.contains(p))
            .collect();
        let ask: Vec<PeerId> = if !self.refresh.first_round_sent {
            self.refresh.first_round_sent = true;
            self.refresh.first_round_pending = candidates.iter().copied().collect();
            candidates
        } else {
            self.later_round(candidates, want_remote)
        };
        let (now, n, manifest) = (Instant::now(), self.sched.len(), self.hash);
        for p in ask {
            self.refresh.asking.insert(p);
            self.refresh.last_asked.insert(p, now);
            let (s, tx) = (self.s.clone(), self.refresh.tx.clone());
            tokio::spawn(async move {
                let answer = timeout(HAVE_TIMEOUT, request_have(&s, p, manifest, n)).await;
                let _ = tx.send((p, answer)).await;
            });
        }
    }

    /// Whom a round after the first asks, of `candidates` (connected, not banned, not being
    /// asked): the site's origin fetchers, then at most [`HAVE_FANOUT`] others, then a few peers
    /// at other sites when `want_remote`.
    fn later_round(&self, candidates: Vec<PeerId>, want_remote: bool) -> Vec<PeerId> {
        let (s, refresh, n) = (&self.s, &self.refresh, self.sched.len());
        // A peer holding every chunk has nothing new to tell (as long as no request to it failed:
        // a failure clears that chunk from its map until it is asked again).
        let useful: Vec<PeerId> = candidates
            .into_iter()
            .filter(|p| !self.sched.peer_has_all(p) && !refresh.remote.get(p).is_some_and(|b| b.iter().all(|x| *x)))
            .collect();
        // The site's origin fetchers, chosen from the same participants as the origin work: the
        // new chunks appear there first. Chosen from the peers that said they are downloading
        // only, a fetcher whose first answer came before it had queued the release (on a loaded
        // site of 64) was missed until the rotation below reached it again, past UNDECIDED: the
        // node then saw another fetcher set than the rest and fetched others' chunks again.
        let parts = self.participants();
        let mut ids: Vec<Vec<u8>> = parts.iter().map(|p| p.to_bytes()).collect();
        ids.push(s.net.local.to_bytes());
        let useful_set: HashSet<PeerId> = useful.iter().copied().collect();
        let fetchers: HashSet<PeerId> = wan::fetchers(&self.hash, &ids, s.cfg.site_origin_fetchers)
            .into_iter()
            .filter_map(|i| parts.get(i).copied())
            .filter(|p| useful_set.contains(p))
            .collect();
        let (mut others, mut remote): (Vec<PeerId>, Vec<PeerId>) =
            useful.into_iter().filter(|p| !fetchers.contains(p)).partition(|p| s.net.same_site(p));
        // Peers that said they are not downloading (yet) first: whether they are decides who the
        // site's fetchers are. Then the least recently asked.
        let undecided = |p: &PeerId| self.views.get(p).is_some_and(|v| !v.downloading && v.have_count < n);
        others.sort_by_key(|p| (!undecided(p), refresh.last_asked.get(p).copied()));
        others.truncate(HAVE_FANOUT);
        // Peers at other sites are asked only by a fetcher that may take chunks from them, a
        // few per round and each at most every REMOTE_REFRESH: every query crosses two sites'
        // links, and a site's nodes asking every other site's every 0.15 s cost more than the
        // release itself.
        if want_remote {
            let now = Instant::now();
            remote.retain(|p| refresh.last_asked.get(p).is_none_or(|t| now.duration_since(*t) >= REMOTE_REFRESH));
            remote.sort_by_key(|p| refresh.last_asked.get(p).copied());
            remote.truncate(REMOTE_FANOUT);
        } else {
            remote.clear();
        }
        fetchers.into_iter().chain(others).chain(remote).collect()
    }

    /// A peer's have-map answer: what it holds, whether it is downloading, whether it made
    /// progress.
    fn have_answer(&mut self, peer: PeerId, answer: HaveResult) {
        self.refresh.asking.remove(&peer);
        self.refresh.first_round_pending.remove(&peer);
        // A peer that did not answer keeps its last have-map and view: on a busy site a slow
        // answer is not a departure, and dropping it would move its share of origin work to
        // others and fetch those chunks twice.
        // A peer that does not know the release (`None`) most likely has not received it yet: it
        // stays unknown, which counts as a participant early in the download (see the origin
        // work).
        let Ok(Ok(Some((bits, downloading)))) = answer else { return };
        if self.sched.is_banned(&peer) {
            return;
        }
        if !self.s.net.same_site(&peer) {
            self.refresh.remote.insert(peer, bits);
            return;
        }
        let count = bits.iter().filter(|b| **b).count();
        let now = Instant::now();
        let view = self.views.entry(peer).or_insert(PeerView {
            downloading,
            have_count: count,
            last_progress: now,
            last_answer: now,
        });
        if count > view.have_count || (downloading && !view.downloading) {
            view.last_progress = now;
        }
        view.last_answer = now;
        view.have_count = count;
        view.downloading = downloading;
        self.sched.set_peer_have(peer, bits);
    }
}

async fn request_have(s: &Shared, peer: PeerId, manifest: Hash32, n: usize) -> Result<Option<(Vec<bool>, bool)>> {
    Ok(match crate::request::ask(&s.net, peer, &Request::Have { manifest }).await? {
        Response::Have { bits, downloading } => {
            let have =
                wire::unpack_bits(&bits, n).ok_or_else(|| anyhow!("peer {peer} sent a have-map of the wrong size"))?;
            Some((have, downloading))
        }
        _ => None,
    })
}

/// The metric reason for a chunk that failed its check, if that is why `e` happened.
fn chunk_refusal(e: &FetchError) -> Option<ChunkRefusal> {
    match e {
        FetchError::Bad(_) => Some(ChunkRefusal::HashMismatch),
        FetchError::BadLength(_) => Some(ChunkRefusal::WrongLength),
        _ => None,
    }
}

async fn fetch_from_origin(s: &Shared, base: &str, file: &FileEntry, idx: u32) -> Result<VerifiedChunk, FetchError> {
    let Some((_, expected)) = file.chunk_range(idx) else { return Err(FetchError::NotFound) };
    s.origin_limit.acquire(u64::from(expected)).await;
    s.metrics.origin_request();
    let bytes = s.origins.fetch(base, file, idx).await.map_err(|e| match e {
        crate::origin::OriginError::WrongLength { .. } => FetchError::BadLength(WireError::Malformed(e.to_string())),
        crate::origin::OriginError::Redirect(why) => FetchError::Redirect(why),
        other => FetchError::Other(other.to_string()),
    })?;
    // Step C1, as for peers.
    verified(file, idx, bytes)
}

/// Step C1: the bytes are checked against the signed manifest before anything else touches
/// them; a refused chunk's buffer goes back to the pool.
fn verified(file: &FileEntry, idx: u32, bytes: Vec<u8>) -> Result<VerifiedChunk, FetchError> {
    VerifiedChunk::verify(file, idx, bytes).map_err(|(e, bytes)| {
        crate::bufpool::give(bytes);
        FetchError::Bad(e)
    })
}

async fn fetch_chunk(s: &Shared, peer: PeerId, file: &FileEntry, idx: u32) -> Result<VerifiedChunk, FetchError> {
    let Some((_, expected)) = file.chunk_range(idx) else { return Err(FetchError::NotFound) };
    s.down_limit.acquire(u64::from(expected)).await;
    let fut = async {
        let mut stream = crate::request::open(&s.net, peer).await.map_err(|e| FetchError::Other(e.to_string()))?;
        wire::write_frame(&mut stream, &Request::Chunk { file: file.hash, index: idx }).await.map_err(unanswered)?;
        stream.flush().await.map_err(|e| unanswered(e.into()))?;
        let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await.map_err(unanswered)?;
        let bytes = match resp {
            Response::Chunk { .. } if s.cfg.fault_injection.drop_downloads == DropDownloads::AfterHeader => {
                return Err(FetchError::Other("dropped after the header (fault injection)".into()));
            }
            Response::Chunk { len } => {
                wire::read_chunk_body(&mut stream, len, expected).await.map_err(|e| match e {
                    WireError::WrongLength { .. } => FetchError::BadLength(e),
                    other => FetchError::Other(other.to_string()),
                })?
            }
            Response::Busy => return Err(FetchError::Busy),
            Response::Elsewhere => return Err(FetchError::Elsewhere(None)),
            Response::ElsewhereAt { holder } => {
                let holder = (holder.len() <= wire::MAX_PEER_ID).then(|| PeerId::from_bytes(&holder).ok()).flatten();
                return Err(FetchError::Elsewhere(holder));
            }
            _ => return Err(FetchError::NotFound),
        };
        let _ = stream.close().await;
        Ok(bytes)
    };
    let bytes = timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| FetchError::Timeout)??;
    verified(file, idx, bytes)
}

#[cfg(test)]
mod remote_tests {
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

#[cfg(test)]
mod fetch_error_tests {
    use super::*;

    #[test]
    fn a_request_dropped_before_the_answer_is_retried_soon_like_busy_and_a_malformed_answer_is_a_failure() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "unexpected end of file");
        assert!(unanswered(WireError::Io(eof)).retry_soon());
        let reset = std::io::Error::new(std::io::ErrorKind::WriteZero, "connection is closed");
        assert!(unanswered(WireError::Io(reset)).retry_soon());
        assert!(FetchError::Busy.retry_soon());
        assert!(!unanswered(WireError::Malformed("x".into())).retry_soon());
        assert!(!unanswered(WireError::TooLarge { len: 9, max: 1 }).retry_soon());
        assert!(!FetchError::Timeout.retry_soon());
        assert!(!FetchError::NotFound.retry_soon());
    }
}

#[cfg(test)]
mod stall_tests {
    use super::*;

    fn view(progress_ago: Duration, answer_ago: Duration) -> PeerView {
        let now = Instant::now();
        PeerView { downloading: true, have_count: 3, last_progress: now - progress_ago, last_answer: now - answer_ago }
    }

    #[test]
    fn a_peer_is_stalled_only_on_a_seen_quiet_or_after_the_hard_limit() {
        let me_now = Instant::now();
        // Answered 16 s after its last progress while this node progressed: stalled.
        assert!(stalled(&view(Duration::from_secs(17), Duration::from_secs(1)), me_now));
        // Not heard from since its last progress 17 s ago (slow answers, not asked again):
        // not judged on the old map.
        assert!(!stalled(&view(Duration::from_secs(17), Duration::from_secs(17)), me_now));
        // Heard from, but this node did not progress either (the whole site waits): not stalled.
        assert!(!stalled(&view(Duration::from_secs(17), Duration::from_secs(1)), me_now - Duration::from_secs(10)));
        // Past STALL_ALWAYS a peer is stalled whatever was seen.
        assert!(stalled(&view(STALL_ALWAYS, STALL_ALWAYS), me_now));
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
