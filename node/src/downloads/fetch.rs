//! One chunk request: to a peer (a stream each) or to an origin (an HTTP range request), and the
//! check against the signed manifest (step C1) before anything else touches the bytes.

use std::time::Duration;

use futures::AsyncWriteExt;
use lanpatch_protocol::{ChunkError, FileEntry, VerifiedChunk};
use libp2p::PeerId;
use tokio::time::timeout;

use crate::config::DropDownloads;
use crate::metrics::ChunkRefusal;
use crate::shared::Shared;
use crate::wire::{self, Request, Response, WireError};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Why one chunk request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer sent bytes that do not match the signed manifest: it lied.
    #[error(transparent)]
    Bad(#[from] ChunkError),
    #[error("peer sent a chunk of the wrong length: {0}")]
    BadLength(WireError),
    #[error("peer does not have the chunk")]
    NotFound,
    #[error("peer is busy")]
    Busy,
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

/// The metric reason for a chunk that failed its check, if that is why `e` happened.
pub fn chunk_refusal(e: &FetchError) -> Option<ChunkRefusal> {
    match e {
        FetchError::Bad(_) => Some(ChunkRefusal::HashMismatch),
        FetchError::BadLength(_) => Some(ChunkRefusal::WrongLength),
        _ => None,
    }
}

pub async fn fetch_from_origin(
    s: &Shared,
    base: &str,
    file: &FileEntry,
    idx: u32,
) -> Result<VerifiedChunk, FetchError> {
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

pub async fn fetch_chunk(s: &Shared, peer: PeerId, file: &FileEntry, idx: u32) -> Result<VerifiedChunk, FetchError> {
    let Some((_, expected)) = file.chunk_range(idx) else { return Err(FetchError::NotFound) };
    s.down_limit.acquire(u64::from(expected)).await;
    let fut = async {
        let mut stream = crate::request::open(&s.net, peer).await.map_err(|e| FetchError::Other(e.to_string()))?;
        let io = |e: WireError| FetchError::Other(e.to_string());
        wire::write_frame(&mut stream, &Request::Chunk { file: file.hash, index: idx }).await.map_err(io)?;
        stream.flush().await.map_err(|e| FetchError::Other(e.to_string()))?;
        let resp: Response = wire::read_frame(&mut stream, wire::MAX_RESPONSE).await.map_err(io)?;
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
