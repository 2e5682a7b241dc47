//! Serving peers: chunk, have-map and catalog requests on the transfer protocol, each stream in
//! its own task, uploads bounded by a semaphore and the upload rate limit.

use lanpatch_protocol::control::RefusalKind;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncWriteExt, StreamExt};
use lanpatch_protocol::Hash32;
use libp2p::PeerId;
use tokio::time::timeout;

use crate::config::CorruptUploads;
use crate::seeding::Answer;
use crate::shared::Shared;
use crate::wire::{self, Request, Response};

/// How long a request for a chunk this node is still fetching waits for it. The seed names this
/// node to peers as soon as it finished sending it a chunk (`ElsewhereAt`), so those peers often
/// ask before the chunk is verified and stored here: the request is answered when it is,
/// instead of with `NotFound`. "Finished" at the seed means written to its socket: on a
/// saturated 20 Mbit/s port the chunk may still be a few seconds away, and a requester answered
/// `NotFound` goes back to the seed, which then sends a second copy.
pub const PARK: Duration = Duration::from_secs(6);
/// Most requests waiting that way at once; past it, `NotFound` at once.
pub const MAX_PARKED: usize = 64;
/// Most have-map subscriptions served at once (one per downloading peer and release), and per
/// peer: a peer downloads a few releases at a time, and one member cannot take every slot.
pub const MAX_SUBSCRIPTIONS: usize = 512;
pub const MAX_SUBSCRIPTIONS_PER_PEER: u32 = 8;

/// The subscriptions being served: one slot each, counted per peer.
#[derive(Default)]
struct Subscribers {
    per_peer: std::sync::Mutex<std::collections::HashMap<PeerId, u32>>,
}

/// A subscription's slot; given back when dropped.
struct Slot<'a> {
    subscribers: &'a Subscribers,
    peer: PeerId,
}

impl Subscribers {
    /// A slot for `peer`, unless `MAX_SUBSCRIPTIONS` are served or the peer has its share.
    fn take(&self, peer: PeerId) -> Option<Slot<'_>> {
        let mut map = self.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        let total: u32 = map.values().sum();
        let mine = map.entry(peer).or_default();
        if total as usize >= MAX_SUBSCRIPTIONS || *mine >= MAX_SUBSCRIPTIONS_PER_PEER {
            return None;
        }
        *mine += 1;
        Some(Slot { subscribers: self, peer })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = self.subscribers.per_peer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Per-peer request budget: a token bucket of `rate` per second, bursts of twice that.
struct Budget {
    tokens: f64,
    last: std::time::Instant,
}

pub async fn serve(s: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams) {
    let mut shutdown = s.shutdown.clone();
    let rate = f64::from(s.cfg.max_requests_per_peer_per_sec.max(1));
    let mut budgets: std::collections::HashMap<PeerId, Budget> = std::collections::HashMap::new();
    let subscribers = Arc::new(Subscribers::default());
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            n = incoming.next() => n,
        };
        let Some((peer, stream)) = next else { break };
        if s.is_banned(&peer) {
            continue;
        }
        let now = std::time::Instant::now();
        if budgets.len() > 4096 {
            budgets.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(60));
        }
        let b = budgets.entry(peer).or_insert(Budget { tokens: 2.0 * rate, last: now });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(2.0 * rate);
        b.last = now;
        if b.tokens < 1.0 {
            drop(stream);
            let s = s.clone();
            tokio::spawn(async move {
                s.refuse_peer(peer, RefusalKind::RequestFlood, format!("more than {rate} requests a second")).await;
            });
            continue;
        }
        b.tokens -= 1.0;
        let (s, subscribers) = (s.clone(), subscribers.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(&s, &subscribers, peer, stream).await {
                tracing::debug!(%peer, "request failed: {e:#}");
            }
        });
    }
}

async fn handle(
    s: &Arc<Shared>,
    subscribers: &Subscribers,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> anyhow::Result<()> {
    let req: Request = timeout(Duration::from_secs(10), wire::read_frame(&mut stream, wire::MAX_REQUEST)).await??;
    if let Request::Subscribe { manifest } = req {
        let Some(_slot) = subscribers.take(peer) else {
            wire::write_frame(&mut stream, &Response::Busy).await?;
            return Ok(stream.close().await?);
        };
        // Long-lived: it ends when the subscriber closes the stream, or at shutdown.
        return subscription(s, stream, manifest).await;
    }
    timeout(Duration::from_secs(60), answer(s, peer, stream, req))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
}

/// Answers one request on its stream.
async fn answer(s: &Arc<Shared>, peer: PeerId, mut stream: libp2p::Stream, req: Request) -> anyhow::Result<()> {
    match req {
        Request::Subscribe { .. } => {}
        Request::Chunk { file, index } => serve_chunk(s, peer, &mut stream, file, index).await?,
        Request::Have { manifest } => {
            let files: Option<Vec<Hash32>> =
                s.trust().manifests.get(&manifest).map(|m| m.value().files.iter().map(|f| f.hash).collect());
            let resp = match files.and_then(|f| s.library.have_flat(&f)) {
                Some(have) => {
                    // Downloading it, or queued to: either way a participant in the site's origin
                    // work (a node counting only running downloads would elect itself a fetcher).
                    let downloading = s.downloads.takes_part(&manifest);
                    Response::Have { bits: wire::pack_bits(&have), downloading }
                }
                None => Response::NotFound,
            };
            wire::write_frame(&mut stream, &resp).await?;
        }
        Request::Peers => {
            let peers = s
                .net
                .peers()
                .await?
                .into_iter()
                .filter(|p| p.peer != peer && !s.is_banned(&p.peer))
                .take(wire::MAX_PEERS)
                .map(|p| (p.peer.to_string(), p.listen.iter().map(|a| a.to_string()).collect()))
                .collect();
            wire::write_frame(&mut stream, &Response::Peers { peers }).await?;
        }
        Request::Catalog => {
            let mut items = s.trust().catalog(crate::clock::now());
            // The revocation list goes first: a late joiner learns who is cut off before
            // anything else, and truncation never drops it.
            if let Some(r) = s.members.as_ref().and_then(|m| m.revocations_bytes()) {
                items.insert(0, r);
            }
            items.truncate(wire::MAX_CATALOG_ITEMS);
            let items = items.into_iter().map(serde_bytes::ByteBuf::from).collect();
            wire::write_frame(&mut stream, &Response::Catalog { items }).await?;
        }
    }
    stream.flush().await?;
    let _ = stream.close().await;
    Ok(())
}

/// A have-map subscription: the release's have-map now, then a `HaveDelta` for every batch of
/// chunks stored and every change of whether this node takes part in the download, until the
/// subscriber closes the stream or the node stops. At most `MAX_SUBSCRIPTIONS` at once and
/// `MAX_SUBSCRIPTIONS_PER_PEER` per peer (past it `Busy`); nothing is sent while nothing changes.
async fn subscription(s: &Arc<Shared>, mut stream: libp2p::Stream, manifest: Hash32) -> anyhow::Result<()> {
    let release: Option<(Vec<Hash32>, usize)> = s.trust().manifests.get(&manifest).map(|m| {
        let v = m.value();
        (v.files.iter().map(|f| f.hash).collect(), v.total_chunks())
    });
    let Some((files, n)) = release else {
        wire::write_frame(&mut stream, &Response::NotFound).await?;
        return Ok(stream.close().await?);
    };
    // Listening before the snapshot, so a chunk stored in between is in one or the other.
    let mut news = s.library.news();
    let mut part = s.downloads.taking_part_changes();
    // A release this node knows but does not download (yet, or at all: not targeted) has an
    // empty map; its chunks are told as they come, should it start.
    let have = s.library.have_flat(&files).unwrap_or_else(|| vec![false; n]);
    let mut downloading = s.downloads.takes_part(&manifest);
    wire::write_frame(&mut stream, &Response::Have { bits: wire::pack_bits(&have), downloading }).await?;
    stream.flush().await?;
    let starts = flat_starts(s, &manifest, &files);
    let mut shutdown = s.shutdown.clone();
    let mut probe = [0u8; 1];
    loop {
        let mut chunks: Vec<u32> = Vec::new();
        let mut full = false;
        tokio::select! {
            _ = shutdown.changed() => break,
            // The subscriber sends nothing after its request: any byte or the end closes it.
            _ = futures::AsyncReadExt::read(&mut stream, &mut probe) => break,
            r = news.recv() => match r {
                Ok(c) => push_flat(&starts, c, &mut chunks),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => full = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            r = part.changed() => if r.is_err() { break },
        }
        // Everything else that is already here goes in the same frame.
        loop {
            match news.try_recv() {
                Ok(c) => push_flat(&starts, c, &mut chunks),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => full = true,
                Err(_) => break,
            }
        }
        let now = s.downloads.takes_part(&manifest);
        if chunks.is_empty() && !full && now == downloading {
            continue;
        }
        downloading = now;
        let frame = if full || chunks.len() > wire::MAX_DELTA {
            let have = s.library.have_flat(&files).unwrap_or_else(|| vec![false; n]);
            Response::Have { bits: wire::pack_bits(&have), downloading }
        } else {
            Response::HaveDelta { chunks, downloading }
        };
        wire::write_frame(&mut stream, &frame).await?;
        stream.flush().await?;
    }
    let _ = stream.close().await;
    Ok(())
}

/// Where each file of a release starts in its flat chunk numbering.
fn flat_starts(s: &Shared, manifest: &Hash32, files: &[Hash32]) -> Vec<(Hash32, u32)> {
    let counts: Vec<usize> = s
        .trust()
        .manifests
        .get(manifest)
        .map(|m| m.value().files.iter().map(|f| f.chunks.len()).collect())
        .unwrap_or_default();
    let mut at = 0u32;
    files
        .iter()
        .zip(counts)
        .map(|(f, c)| {
            let start = at;
            at = at.saturating_add(u32::try_from(c).unwrap_or(u32::MAX));
            (*f, start)
        })
        .collect()
}

/// The flat numbers of a stored chunk in the release (a file may appear more than once).
fn push_flat(starts: &[(Hash32, u32)], (file, idx): (Hash32, u32), out: &mut Vec<u32>) {
    for (f, start) in starts {
        if *f == file {
            out.push(start.saturating_add(idx));
        }
    }
}

async fn serve_chunk(
    s: &Arc<Shared>,
    peer: PeerId,
    stream: &mut libp2p::Stream,
    file: Hash32,
    index: u32,
) -> anyhow::Result<()> {
    // A chunk of a file this node is assembling that is not here yet: wait for it, briefly and
    // without holding an upload slot.
    if s.library.holds(&file, index) == Some(false)
        && let Ok(_parked) = s.parked.try_acquire()
    {
        s.library.wait_for_chunk(&file, index, PARK).await;
    }
    let Ok(_permit) = s.uploads.try_acquire() else {
        wire::write_frame(stream, &Response::Busy).await?;
        return Ok(());
    };
    // After the permit, so that a send starts only when it can go out; it counts as sent only
    // once the whole chunk was written (`sending.finished()` below; dropped early, the guard
    // tells the seeding state the send was abandoned).
    let connected = |p: &PeerId| s.net.same_site(p);
    let (answer, sending) = s.seeding.answer(&file, index, &peer, connected);
    match answer {
        Answer::Serve => {}
        Answer::Wait => {
            wire::write_frame(stream, &Response::Elsewhere).await?;
            return Ok(());
        }
        Answer::Elsewhere(holder) => {
            wire::write_frame(stream, &Response::ElsewhereAt { holder: holder.to_bytes() }).await?;
            return Ok(());
        }
    }
    let lib = s.library.clone();
    let data = tokio::task::spawn_blocking(move || lib.read_chunk(&file, index)).await??;
    let Some(mut data) = data else {
        wire::write_frame(stream, &Response::NotFound).await?;
        return Ok(());
    };
    s.up_limit.acquire(data.len() as u64).await;
    if s.cfg.fault_injection.corrupt_uploads == CorruptUploads::Always
        && let Some(b) = data.first_mut()
    {
        *b ^= 0xff;
    }
    wire::write_chunk(stream, &data).await?;
    stream.flush().await?;
    if let Some(sending) = sending {
        sending.finished();
    }
    let len = data.len() as u64;
    crate::bufpool::give(data);
    s.metrics.served(len);
    let _ = s.store.add_transfer(peer.to_string(), 0, len).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_bounded_per_peer_and_in_all_and_a_dropped_slot_is_given_back() {
        let subs = Subscribers::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let slots: Vec<Slot<'_>> = (0..MAX_SUBSCRIPTIONS_PER_PEER).map(|_| subs.take(a).unwrap()).collect();
        assert!(subs.take(a).is_none(), "a peer has at most its share");
        assert!(subs.take(b).is_some(), "another peer still gets one");
        drop(slots);
        assert!(subs.take(a).is_some(), "slots come back when their subscriptions end");
        let many: Vec<Slot<'_>> = (0..MAX_SUBSCRIPTIONS).filter_map(|_| subs.take(PeerId::random())).collect();
        assert_eq!(many.len(), MAX_SUBSCRIPTIONS, "the total bound counts every peer's");
        assert!(subs.take(PeerId::random()).is_none());
    }
}
