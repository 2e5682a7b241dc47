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
/// saturated 20 Mbit/s port the chunk may still be seconds away, and a requester answered
/// `NotFound` goes back to the seed, which then sends a second copy.
pub const PARK: Duration = Duration::from_secs(6);
/// Most requests waiting that way at once; past it, `NotFound` at once.
pub const MAX_PARKED: usize = 64;

/// Per-peer request budget: a token bucket of `rate` per second, bursts of twice that.
struct Budget {
    tokens: f64,
    last: std::time::Instant,
}

pub async fn serve(s: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams) {
    let mut shutdown = s.shutdown.clone();
    let rate = f64::from(s.cfg.max_requests_per_peer_per_sec.max(1));
    let mut budgets: std::collections::HashMap<PeerId, Budget> = std::collections::HashMap::new();
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
        let s = s.clone();
        tokio::spawn(async move {
            if let Err(e) = timeout(Duration::from_secs(60), handle(&s, peer, stream))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
            {
                tracing::debug!(%peer, "request failed: {e:#}");
            }
        });
    }
}

async fn handle(s: &Arc<Shared>, peer: PeerId, mut stream: libp2p::Stream) -> anyhow::Result<()> {
    let req: Request = timeout(Duration::from_secs(10), wire::read_frame(&mut stream, wire::MAX_REQUEST)).await??;
    match req {
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
    // A chunk this node cannot read (a disk error, no descriptors left) is answered `NotFound`,
    // never by closing the stream unanswered: a requester takes a stream closed before any
    // answer for one the node never took (see `FetchError::Dropped`) and asks again soon.
    let data = match tokio::task::spawn_blocking(move || lib.read_chunk(&file, index)).await {
        Ok(Ok(data)) => data,
        Ok(Err(e)) => {
            tracing::warn!(file = %file.short(), index, "cannot read a chunk to serve: {e:#}");
            None
        }
        Err(e) => {
            tracing::warn!(file = %file.short(), index, "chunk read task failed: {e}");
            None
        }
    };
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
    let _ = s.store.add_upload(peer.to_string(), file, len).await;
    Ok(())
}
