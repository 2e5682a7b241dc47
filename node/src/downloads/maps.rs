//! What this node knows of its peers' have-maps during one release's download, and how it
//! learns it.
//!
//! Pushed, not polled: each ready peer of the site gets one long-lived subscription stream
//! (`Subscribe`), which answers with the peer's whole map and then a `HaveDelta` whenever the
//! peer stores chunks or starts or stops taking part. Nothing is asked again while nothing
//! changes. Two kinds of peers are still polled (`Have`, at most every [`REFRESH`]): a peer of an
//! earlier version, which does not answer a subscription, and peers at other sites, asked only by
//! a fetcher that may take chunks from them, a few per round ([`REMOTE_FANOUT`]) and each at most
//! every [`REMOTE_REFRESH`], since every query crosses two sites' links.
//!
//! A failed request or a seed's `Elsewhere` clears a chunk from that peer's map in the
//! scheduler; [`Maps::restore`] puts back what the peers announced [`REFRESH`] later, as a new
//! have-map round used to.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures::AsyncWriteExt;
use lanpatch_protocol::Hash32;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};

use crate::net::NetHandle;
use crate::sched::Scheduler;
use crate::shared::Shared;
use crate::wire::{self, Request, Response};

/// How long a peer has to answer a have-map query or a subscription's first frame.
const HAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Polls of peers that cannot be subscribed to, and the restore of cleared map bits.
pub const REFRESH: Duration = Duration::from_millis(700);
/// A peer that did not know the release yet, was busy, or whose subscription broke is
/// subscribed to again this much later, doubled for each failure in a row up to 16 times that.
const RESUBSCRIBE: Duration = Duration::from_millis(500);
const RESUBSCRIBE_DOUBLINGS: u32 = 4;
/// Polls per round of peers of an earlier version.
const LEGACY_FANOUT: usize = 8;
/// Have-map queries per round to peers at other sites, and how often one such peer is asked.
const REMOTE_FANOUT: usize = 2;
const REMOTE_REFRESH: Duration = Duration::from_secs(2);
/// A downloading peer whose have-map has not grown for this long is presumed stalled; its share
/// of origin work moves to the others.
const STALL: Duration = Duration::from_secs(15);
/// A downloading peer whose have-map has not grown for this long is stalled even if nobody else
/// progressed either.
pub const STALL_ALWAYS: Duration = Duration::from_secs(60);
/// For this long after a download starts, a peer that said it is not downloading the release (and
/// does not hold all of it) still counts as a participant in the origin work.
pub const UNDECIDED: Duration = Duration::from_secs(5);

/// What this node last learned about a peer for the current release.
pub struct PeerView {
    pub downloading: bool,
    pub have_count: usize,
    pub last_progress: Instant,
    /// When the peer last told anything (a have-map, a delta).
    pub last_answer: Instant,
    /// A subscription to it runs: what it says arrives as it happens, so its silence is seen.
    pub live: bool,
}

/// A downloading peer is stalled when its have-map has not grown for [`STALL`] while this node's
/// did: it hung or lost its way to the origin while the site moved on. When the whole site waits
/// (a congested WAN link), nobody is stalled and the origin fetchers stay who they are; dropping
/// them then would only elect more fetchers and open more connections across the congested link.
///
/// The quiet must have been seen: the peer is subscribed to (its news would have arrived), or it
/// answered a poll [`STALL`] or more after its last progress. A polled peer not heard from lately
/// is not judged on an old map: judged on old maps, the busiest peers looked stalled to some
/// nodes and not to others, the nodes disagreed on who the fetchers were, and ranges were
/// fetched twice (1.15-1.32 x S from the origin at 64 nodes).
///
/// Whatever the site does, a peer whose have-map has not grown for [`STALL_ALWAYS`] is stalled:
/// peers that claim to download and never progress (a Sybil set ground to rank first as fetchers)
/// hold up the site's origin work for at most that long.
pub fn stalled(v: &PeerView, my_progress: Instant) -> bool {
    let quiet = v.last_progress.elapsed();
    let heard = if v.live { Instant::now() } else { v.last_answer };
    let seen_quiet = heard.saturating_duration_since(v.last_progress) >= STALL;
    quiet >= STALL_ALWAYS || (seen_quiet && my_progress > v.last_progress + STALL)
}

/// A peer's whole map and whether it takes part (`None`: it does not know the release yet).
pub type HaveResult = Result<Option<(Vec<bool>, bool)>>;

/// News about a peer's map, from its subscription or a poll.
pub enum HaveEvent {
    Map(PeerId, HaveResult),
    Delta(PeerId, Vec<u32>, bool),
    Ended(PeerId, SubEnd),
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubEnd {
    /// The peer never answered it: an earlier version, polled from now on.
    Legacy,
    /// The peer does not know the release yet, or serves too many subscriptions: again soon.
    NotYet,
    /// The stream broke (the peer left, or sent something wrong): again soon if it is still here.
    Closed,
}

/// The have-maps of one download: subscriptions, polls, and what each peer announced.
pub struct Maps {
    manifest: Hash32,
    n: usize,
    tx: mpsc::Sender<HaveEvent>,
    subscriptions: HashMap<PeerId, AbortHandle>,
    retry_at: HashMap<PeerId, Instant>,
    /// Subscriptions in a row that ended without a map, per peer.
    failures: HashMap<PeerId, u32>,
    legacy: HashSet<PeerId>,
    /// What each same-site peer announced: what the scheduler's maps are restored from.
    announced: HashMap<PeerId, Vec<bool>>,
    /// Since when the scheduler's maps lack bits the peers announced.
    cleared: Option<Instant>,
    asking: HashSet<PeerId>,
    last_asked: HashMap<PeerId, Instant>,
    last_poll: Option<Instant>,
    /// Whether the last round had peers to poll (then the next one is due at `REFRESH`).
    polling: bool,
    /// Whether the first look at the peers happened, and who of it has not answered yet.
    first_pass: bool,
    pub first_round_pending: HashSet<PeerId>,
    /// Same-site peers' views.
    pub views: HashMap<PeerId, PeerView>,
    /// Have-maps of peers at other sites. They never enter the scheduler: a chunk crosses to
    /// this site from another one like from an origin, fetched once by its owner among the
    /// site's fetchers (see upstream.rs).
    pub remote: HashMap<PeerId, Vec<bool>>,
}

impl Drop for Maps {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.drain() {
            task.abort();
        }
    }
}

impl Maps {
    pub fn new(manifest: Hash32, n: usize) -> (Maps, mpsc::Receiver<HaveEvent>) {
        let (tx, rx) = mpsc::channel(256);
        let maps = Maps {
            manifest,
            n,
            tx,
            subscriptions: HashMap::new(),
            retry_at: HashMap::new(),
            failures: HashMap::new(),
            legacy: HashSet::new(),
            announced: HashMap::new(),
            cleared: None,
            asking: HashSet::new(),
            last_asked: HashMap::new(),
            last_poll: None,
            polling: false,
            first_pass: false,
            first_round_pending: HashSet::new(),
            views: HashMap::new(),
            remote: HashMap::new(),
        };
        (maps, rx)
    }

    /// Whether every peer of the first look answered.
    pub fn first_round_done(&self) -> bool {
        self.first_pass && self.first_round_pending.is_empty()
    }

    /// Follows the ready peers: drops those that left (from the scheduler too), subscribes to
    /// the site's peers not followed yet, and on the first call asks every other site's peer once.
    pub fn follow(&mut self, s: &Arc<Shared>, sched: &mut Scheduler<PeerId>) {
        let ready: HashSet<PeerId> = s.net.ready_peers().into_iter().collect();
        let gone: Vec<PeerId> = sched
            .peers()
            .chain(self.views.keys().copied())
            .chain(self.subscriptions.keys().copied())
            .filter(|p| !ready.contains(p))
            .collect();
        for p in gone {
            self.forget(&p, sched);
        }
        self.remote.retain(|p, _| ready.contains(p));
        let now = Instant::now();
        let first = !self.first_pass;
        self.first_pass = true;
        for p in ready {
            if s.is_banned(&p) || sched.is_banned(&p) || self.subscriptions.contains_key(&p) || self.legacy.contains(&p)
            {
                continue;
            }
            if !s.net.same_site(&p) {
                if first && !self.asking.contains(&p) {
                    self.first_round_pending.insert(p);
                    self.ask(s, p);
                }
                continue;
            }
            if self.retry_at.get(&p).is_some_and(|t| *t > now) {
                continue;
            }
            if first {
                self.first_round_pending.insert(p);
            }
            self.retry_at.remove(&p);
            let task = tokio::spawn(subscribe(s.net.clone(), p, self.manifest, self.n, self.tx.clone()));
            self.subscriptions.insert(p, task.abort_handle());
        }
    }

    fn forget(&mut self, p: &PeerId, sched: &mut Scheduler<PeerId>) {
        sched.remove_peer(p);
        self.views.remove(p);
        self.announced.remove(p);
        self.last_asked.remove(p);
        self.first_round_pending.remove(p);
        self.retry_at.remove(p);
        self.failures.remove(p);
        if let Some(task) = self.subscriptions.remove(p) {
            task.abort();
        }
    }

    /// Polls the peers that cannot be subscribed to (see the module docs), at most every
    /// [`REFRESH`]; `want_remote`: this node may take chunks from other sites.
    pub fn poll(&mut self, s: &Arc<Shared>, sched: &Scheduler<PeerId>, want_remote: bool) {
        if self.last_poll.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        let now = Instant::now();
        let usable = |p: &PeerId| !self.asking.contains(p) && !s.is_banned(p) && !sched.is_banned(p);
        let mut legacy: Vec<PeerId> =
            self.legacy.iter().copied().filter(|p| usable(p) && !sched.peer_has_all(p)).collect();
        legacy.sort_by_key(|p| self.last_asked.get(p).copied());
        legacy.truncate(LEGACY_FANOUT);
        let mut remote: Vec<PeerId> = Vec::new();
        if want_remote {
            remote = s
                .net
                .ready_peers()
                .into_iter()
                .filter(|p| !s.net.same_site(p) && usable(p))
                .filter(|p| !self.remote.get(p).is_some_and(|b| b.iter().all(|x| *x)))
                .filter(|p| self.last_asked.get(p).is_none_or(|t| now.duration_since(*t) >= REMOTE_REFRESH))
                .collect();
            remote.sort_by_key(|p| self.last_asked.get(p).copied());
            remote.truncate(REMOTE_FANOUT);
        }
        self.polling = !self.legacy.is_empty() || want_remote;
        self.last_poll = Some(now);
        for p in legacy.into_iter().chain(remote) {
            self.ask(s, p);
        }
    }

    fn ask(&mut self, s: &Arc<Shared>, p: PeerId) {
        self.asking.insert(p);
        self.last_asked.insert(p, Instant::now());
        let (net, tx, manifest, n) = (s.net.clone(), self.tx.clone(), self.manifest, self.n);
        tokio::spawn(async move {
            let answer = timeout(HAVE_TIMEOUT, request_have(&net, p, manifest, n))
                .await
                .unwrap_or_else(|_| Err(anyhow!("no have-map from {p} in time")));
            let _ = tx.send(HaveEvent::Map(p, answer)).await;
        });
    }

    /// A request cleared a chunk from a peer's map in the scheduler.
    pub fn note_cleared(&mut self) {
        self.cleared.get_or_insert_with(Instant::now);
    }

    /// Puts back into the scheduler what the peers announced, [`REFRESH`] after a chunk was
    /// cleared from a map.
    pub fn restore(&mut self, sched: &mut Scheduler<PeerId>) {
        if self.cleared.is_none_or(|t| t.elapsed() < REFRESH) {
            return;
        }
        self.cleared = None;
        for (p, bits) in &self.announced {
            if !sched.is_banned(p) {
                sched.set_peer_have(*p, bits.clone());
            }
        }
    }

    /// The next time something here is due without news: a resubscription, a restore, a poll.
    pub fn next_wake(&self) -> Option<Instant> {
        let restore = self.cleared.map(|t| t + REFRESH);
        let poll = self.polling.then(|| self.last_poll.map(|t| t + REFRESH)).flatten();
        self.retry_at.values().copied().chain(restore).chain(poll).min()
    }

    /// Takes in news about a peer's map; `same_site`: the peer is at this node's site. Returns
    /// whether the site's participants may have changed (then the upstream work is planned
    /// again); a delta that only adds chunks does not change them.
    pub fn on_event(&mut self, ev: HaveEvent, same_site: bool, sched: &mut Scheduler<PeerId>) -> bool {
        match ev {
            HaveEvent::Map(peer, answer) => {
                self.asking.remove(&peer);
                self.first_round_pending.remove(&peer);
                // A peer that did not answer keeps its last map and view: on a busy site a slow
                // answer is not a departure. One that does not know the release (`None`) most
                // likely has not received it yet: it stays unknown, which counts as a
                // participant early in the download (see `participants`).
                if let Ok(Some((bits, downloading))) = answer
                    && !sched.is_banned(&peer)
                {
                    if !same_site {
                        self.remote.insert(peer, bits);
                        return true;
                    }
                    let count = bits.iter().filter(|b| **b).count();
                    self.view(peer, count, downloading);
                    self.failures.remove(&peer);
                    self.announced.insert(peer, bits.clone());
                    sched.set_peer_have(peer, bits);
                }
                true
            }
            HaveEvent::Delta(peer, chunks, downloading) => {
                if sched.is_banned(&peer) || !same_site {
                    return false;
                }
                let n = self.n;
                let bits = self.announced.entry(peer).or_insert_with(|| vec![false; n]);
                let flat: Vec<usize> = chunks.iter().map(|c| *c as usize).filter(|c| *c < n).collect();
                for c in &flat {
                    bits[*c] = true;
                }
                let count = bits.iter().filter(|b| **b).count();
                let changed = self.view(peer, count, downloading);
                sched.add_peer_chunks(peer, &flat);
                changed
            }
            HaveEvent::Ended(peer, end) => {
                self.subscriptions.remove(&peer);
                self.first_round_pending.remove(&peer);
                if let Some(v) = self.views.get_mut(&peer) {
                    v.live = false;
                }
                match end {
                    SubEnd::Legacy => {
                        self.legacy.insert(peer);
                    }
                    SubEnd::NotYet | SubEnd::Closed => {
                        let failures = self.failures.entry(peer).or_default();
                        let wait = RESUBSCRIBE * (1 << (*failures).min(RESUBSCRIBE_DOUBLINGS));
                        *failures += 1;
                        self.retry_at.insert(peer, Instant::now() + wait);
                    }
                }
                true
            }
        }
    }

    /// Updates a peer's view; returns whether who takes part may have changed (a new view, or
    /// its `downloading` flipped).
    fn view(&mut self, peer: PeerId, count: usize, downloading: bool) -> bool {
        let now = Instant::now();
        let live = self.subscriptions.contains_key(&peer);
        let changed = self.views.get(&peer).is_none_or(|v| v.downloading != downloading);
        let view = self.views.entry(peer).or_insert(PeerView {
            downloading,
            have_count: count,
            last_progress: now,
            last_answer: now,
            live,
        });
        if count > view.have_count || (downloading && !view.downloading) {
            view.last_progress = now;
        }
        view.last_answer = now;
        view.have_count = count;
        view.downloading = downloading;
        view.live = live;
        changed
    }

    /// The same-site peers that take part in the release's origin work as this node sees them
    /// (this node not included). The site's origin fetchers are the best-ranked of them (see
    /// wan.rs).
    pub fn participants(
        &self,
        s: &Shared,
        sched: &Scheduler<PeerId>,
        start: Instant,
        my_progress: Instant,
    ) -> Vec<PeerId> {
        // A connected peer that has not told its map yet counts (for the first STALL_ALWAYS of
        // the download, as long as a downloading peer that stopped progressing would): on a
        // loaded site answers are slow, and a node that counted only the peers that answered
        // would elect itself a fetcher, so that dozens of nodes would open origin connections
        // at once.
        let unknown_counts = start.elapsed() < STALL_ALWAYS;
        // A peer that said it is not downloading may only not have queued the release yet (on a
        // loaded site that takes a while): early on it counts too, unless it holds it all.
        let undecided_counts = start.elapsed() < UNDECIDED;
        let n = sched.len();
        s.net
            .ready_peers()
            .into_iter()
            .filter(|p| !sched.is_banned(p) && !s.is_banned(p) && s.net.same_site(p))
            .filter(|p| match self.views.get(p) {
                Some(v) if v.downloading => !stalled(v, my_progress),
                Some(v) => undecided_counts && v.have_count < n,
                None => unknown_counts,
            })
            .collect()
    }

    /// The site's holders as this node last saw them: peers that fetched or hold chunks of it.
    pub fn holders(&self, s: &Shared) -> Vec<Vec<u8>> {
        self.views
            .iter()
            .filter(|(p, v)| (v.downloading || v.have_count > 0) && !s.is_banned(p))
            .map(|(p, _)| p.to_bytes())
            .collect()
    }
}

async fn request_have(net: &NetHandle, peer: PeerId, manifest: Hash32, n: usize) -> HaveResult {
    Ok(match crate::request::ask(net, peer, &Request::Have { manifest }).await? {
        Response::Have { bits, downloading } => Some((unpack(peer, &bits, n)?, downloading)),
        _ => None,
    })
}

fn unpack(peer: PeerId, bits: &[u8], n: usize) -> Result<Vec<bool>> {
    wire::unpack_bits(bits, n).ok_or_else(|| anyhow!("peer {peer} sent a have-map of the wrong size"))
}

/// One subscription, until it ends; says why.
pub(super) async fn subscribe(net: NetHandle, peer: PeerId, manifest: Hash32, n: usize, tx: mpsc::Sender<HaveEvent>) {
    let end = match follow_peer(&net, peer, manifest, n, &tx).await {
        Ok(end) => end,
        Err(e) => {
            tracing::debug!(%peer, "have-map subscription ended: {e:#}");
            SubEnd::Closed
        }
    };
    let _ = tx.send(HaveEvent::Ended(peer, end)).await;
}

async fn follow_peer(
    net: &NetHandle,
    peer: PeerId,
    manifest: Hash32,
    n: usize,
    tx: &mpsc::Sender<HaveEvent>,
) -> Result<SubEnd> {
    let mut stream = crate::request::open(net, peer).await?;
    wire::write_frame(&mut stream, &Request::Subscribe { manifest }).await?;
    stream.flush().await?;
    let first = match timeout(HAVE_TIMEOUT, wire::read_frame::<_, Response>(&mut stream, wire::MAX_RESPONSE)).await {
        Err(_) => return Ok(SubEnd::Closed),
        // The stream closed unanswered: a node of an earlier version could not read the request.
        Ok(Err(_)) => return Ok(SubEnd::Legacy),
        Ok(Ok(r)) => r,
    };
    let mut frame = first;
    loop {
        let event = match frame {
            Response::Have { bits, downloading } => {
                HaveEvent::Map(peer, Ok(Some((unpack(peer, &bits, n)?, downloading))))
            }
            Response::HaveDelta { chunks, downloading } => {
                if chunks.len() > wire::MAX_DELTA || chunks.iter().any(|c| *c as usize >= n) {
                    bail!("peer {peer} sent a have-map delta beyond the release");
                }
                HaveEvent::Delta(peer, chunks, downloading)
            }
            Response::NotFound | Response::Busy => return Ok(SubEnd::NotYet),
            other => bail!("peer {peer} answered a subscription with {other:?}"),
        };
        if tx.send(event).await.is_err() {
            return Ok(SubEnd::Closed);
        }
        frame = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(progress_ago: Duration, answer_ago: Duration, live: bool) -> PeerView {
        let now = Instant::now();
        PeerView {
            downloading: true,
            have_count: 3,
            last_progress: now - progress_ago,
            last_answer: now - answer_ago,
            live,
        }
    }

    #[test]
    fn a_peer_is_stalled_only_on_a_seen_quiet_or_after_the_hard_limit() {
        let me_now = Instant::now();
        // Answered 16 s after its last progress while this node progressed: stalled.
        assert!(stalled(&view(Duration::from_secs(17), Duration::from_secs(1), false), me_now));
        // Not heard from since its last progress 17 s ago (slow answers, not asked again):
        // not judged on the old map.
        assert!(!stalled(&view(Duration::from_secs(17), Duration::from_secs(17), false), me_now));
        // Subscribed to: its silence is seen.
        assert!(stalled(&view(Duration::from_secs(17), Duration::from_secs(17), true), me_now));
        // Heard from, but this node did not progress either (the whole site waits): not stalled.
        assert!(!stalled(
            &view(Duration::from_secs(17), Duration::from_secs(1), true),
            me_now - Duration::from_secs(10)
        ));
        // Past STALL_ALWAYS a peer is stalled whatever was seen.
        assert!(stalled(&view(STALL_ALWAYS, STALL_ALWAYS, false), me_now));
    }
}
