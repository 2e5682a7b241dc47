//! Swarm download of one release: the [`Scheduler`] decides, this module does the I/O.
//!
//! Peers' have-maps are refreshed every second; chunk requests run in their own tasks, each on a
//! fresh stream, and report back over a channel. Every chunk is verified against the signed
//! manifest before it is written; a peer that sends a bad chunk is banned at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::AsyncWriteExt;
use lanpatch_protocol::{ChunkError, FileEntry, Hash32, ReleaseManifest, Signed, verify_chunk};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::node::Shared;
use crate::sched::Scheduler;
use crate::wire::{self, Request, Response, WireError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const HAVE_TIMEOUT: Duration = Duration::from_secs(3);
const REFRESH: Duration = Duration::from_secs(1);
const BACKOFF_MS: u64 = 1500;

pub enum Outcome {
    Complete,
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
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Other(String),
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

pub async fn download(s: Arc<Shared>, m: Signed<ReleaseManifest>) -> Result<Outcome> {
    let hash = m.payload_hash();
    let files = m.value().files.clone();
    let lib = s.library.clone();
    let files2 = files.clone();
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
    let layout = Layout::new(&files);
    let seed = u64::from_le_bytes(blake3::hash(&s.net.local.to_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]));
    let mut sched = Scheduler::<PeerId>::new(have, s.cfg.max_inflight_per_peer, seed);
    {
        let mut p = s.progress();
        if let Some(e) = p.get_mut(&hash) {
            e.total_chunks = sched.len();
            e.have_chunks = sched.len() - sched.missing();
            e.resumed_chunks = resumed;
        }
    }
    if resumed > 0 {
        tracing::info!(manifest = %hash.short(), resumed, missing = sched.missing(), "resuming download");
    }
    let (tx, mut rx) = mpsc::channel::<(PeerId, usize, Result<Vec<u8>, FetchError>)>(64);
    let start = Instant::now();
    let mut last_refresh: Option<Instant> = None;
    let mut shutdown = s.shutdown.clone();
    while !sched.is_done() {
        if s.trust().yanks.contains_key(&hash) {
            return Ok(Outcome::Stopped);
        }
        if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
            refresh_peers(&s, hash, &mut sched).await;
            last_refresh = Some(Instant::now());
        }
        for (peer, flat) in sched.next_requests(elapsed_ms(start)) {
            let Some((file, idx)) = layout.locate(flat) else { continue };
            let (s2, tx2, file) = (s.clone(), tx.clone(), file.clone());
            tokio::spawn(async move {
                let r = fetch_chunk(&s2, peer, &file, idx).await;
                let _ = tx2.send((peer, flat, r)).await;
            });
        }
        let msg = tokio::select! {
            _ = shutdown.changed() => return Ok(Outcome::Stopped),
            _ = tokio::time::sleep(Duration::from_millis(250)) => None,
            m = rx.recv() => m,
        };
        let Some((peer, flat, result)) = msg else { continue };
        let Some((file, idx)) = layout.locate(flat) else { continue };
        match result {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                let lib = s.library.clone();
                let fh = file.hash;
                tokio::task::spawn_blocking(move || lib.write_chunk(&fh, idx, &bytes))
                    .await?
                    .with_context(|| format!("storing chunk {idx} of {}", file.path))?;
                if sched.completed(&peer, flat) {
                    let mut p = s.progress();
                    if let Some(e) = p.get_mut(&hash) {
                        e.have_chunks += 1;
                        e.fetched_chunks += 1;
                        *e.bytes_from.entry(peer.to_string()).or_default() += len;
                    }
                }
                let _ = s.store.add_transfer(peer.to_string(), len, 0).await;
            }
            Err(FetchError::Bad(e)) => {
                sched.failed(&peer, flat, elapsed_ms(start), BACKOFF_MS);
                sched.ban(&peer);
                s.ban(peer, format!("sent a corrupt chunk: {e}")).await;
            }
            Err(FetchError::BadLength(e)) => {
                sched.failed(&peer, flat, elapsed_ms(start), BACKOFF_MS);
                sched.ban(&peer);
                s.ban(peer, format!("sent a malformed chunk: {e}")).await;
            }
            Err(e) => {
                tracing::debug!(%peer, chunk = flat, "chunk request failed: {e}");
                sched.failed(&peer, flat, elapsed_ms(start), BACKOFF_MS);
            }
        }
    }
    for f in &files {
        let lib = s.library.clone();
        let fh = f.hash;
        tokio::task::spawn_blocking(move || lib.finalize(&fh)).await??;
    }
    Ok(Outcome::Complete)
}

/// Asks every ready peer which chunks it holds, concurrently.
async fn refresh_peers(s: &Arc<Shared>, manifest: Hash32, sched: &mut Scheduler<PeerId>) {
    let peers: Vec<PeerId> =
        s.net.ready_peers().into_iter().filter(|p| !s.is_banned(p) && !sched.is_banned(p)).collect();
    let n = sched.len();
    let answers = futures::future::join_all(peers.iter().map(|p| {
        let s = s.clone();
        let p = *p;
        async move { (p, timeout(HAVE_TIMEOUT, request_have(&s, p, manifest, n)).await) }
    }))
    .await;
    let mut seen = std::collections::HashSet::new();
    for (peer, answer) in answers {
        if let Ok(Ok(Some(bits))) = answer {
            sched.set_peer_have(peer, bits);
            seen.insert(peer);
        }
    }
    // Peers that left or no longer answer drop out; their in-flight chunks become free.
    for p in peers.iter().filter(|p| !seen.contains(*p)) {
        sched.remove_peer(p);
    }
    let ready: std::collections::HashSet<PeerId> = s.net.ready_peers().into_iter().collect();
    let gone: Vec<PeerId> = sched.peers().filter(|p| !ready.contains(p)).collect();
    for p in gone {
        sched.remove_peer(&p);
    }
}

async fn open(s: &Shared, peer: PeerId) -> Result<libp2p::Stream> {
    let mut control = s.net.control.clone();
    control.open_stream(peer, s.net.protocol.clone()).await.map_err(|e| anyhow!("open stream to {peer}: {e}"))
}

async fn request_have(s: &Shared, peer: PeerId, manifest: Hash32, n: usize) -> Result<Option<Vec<bool>>> {
    let mut stream = open(s, peer).await?;
    wire::write_frame(&mut stream, &Request::Have { manifest }).await?;
    stream.flush().await?;
    let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await?;
    let _ = stream.close().await;
    Ok(match resp {
        Response::Have { bits } => {
            Some(wire::unpack_bits(&bits, n).ok_or_else(|| anyhow!("peer {peer} sent a have-map of the wrong size"))?)
        }
        _ => None,
    })
}

/// Fetches every signed envelope a peer holds.
pub async fn request_catalog(s: &Shared, peer: PeerId) -> Result<Vec<Vec<u8>>> {
    let fut = async {
        let mut stream = open(s, peer).await?;
        wire::write_frame(&mut stream, &Request::Catalog).await?;
        stream.flush().await?;
        let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await?;
        let _ = stream.close().await;
        match resp {
            Response::Catalog { items } if items.len() <= wire::MAX_CATALOG_ITEMS => {
                Ok(items.into_iter().map(|b| b.into_vec()).collect())
            }
            Response::Catalog { items } => {
                bail!("peer sent {} catalog items, the limit is {}", items.len(), wire::MAX_CATALOG_ITEMS)
            }
            other => bail!("unexpected catalog response {other:?}"),
        }
    };
    timeout(Duration::from_secs(10), fut).await.map_err(|_| anyhow!("catalog request timed out"))?
}

/// Peer exchange: the peers a peer knows, with their listen addresses (bounded, unparseable
/// entries dropped).
pub async fn request_peers(s: &Shared, peer: PeerId) -> Result<Vec<(PeerId, Vec<libp2p::Multiaddr>)>> {
    let fut = async {
        let mut stream = open(s, peer).await?;
        wire::write_frame(&mut stream, &Request::Peers).await?;
        stream.flush().await?;
        let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await?;
        let _ = stream.close().await;
        let Response::Peers { peers } = resp else { bail!("unexpected peer-exchange response") };
        Ok(peers
            .into_iter()
            .take(wire::MAX_PEERS)
            .filter_map(|(id, addrs)| {
                let id = id.parse::<PeerId>().ok()?;
                let addrs = addrs.iter().take(wire::MAX_ADDRS_PER_PEER).filter_map(|a| a.parse().ok()).collect();
                Some((id, addrs))
            })
            .collect())
    };
    timeout(Duration::from_secs(10), fut).await.map_err(|_| anyhow!("peer exchange timed out"))?
}

async fn fetch_chunk(s: &Shared, peer: PeerId, file: &FileEntry, idx: u32) -> Result<Vec<u8>, FetchError> {
    let Some((_, expected)) = file.chunk_range(idx) else { return Err(FetchError::NotFound) };
    s.down_limit.acquire(u64::from(expected)).await;
    let fut = async {
        let mut stream = open(s, peer).await.map_err(|e| FetchError::Other(e.to_string()))?;
        let io = |e: WireError| FetchError::Other(e.to_string());
        wire::write_frame(&mut stream, &Request::Chunk { file: file.hash, index: idx }).await.map_err(io)?;
        stream.flush().await.map_err(|e| FetchError::Other(e.to_string()))?;
        let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await.map_err(io)?;
        let bytes = match resp {
            Response::Chunk { len } => {
                wire::read_chunk_body(&mut stream, len, expected).await.map_err(|e| match e {
                    WireError::WrongLength { .. } => FetchError::BadLength(e),
                    other => FetchError::Other(other.to_string()),
                })?
            }
            Response::Busy => return Err(FetchError::Busy),
            _ => return Err(FetchError::NotFound),
        };
        let _ = stream.close().await;
        Ok(bytes)
    };
    let bytes = timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| FetchError::Timeout)??;
    // Step C1: verify before anything else touches the bytes.
    verify_chunk(file, idx, &bytes)?;
    Ok(bytes)
}
