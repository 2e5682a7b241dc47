//! The peer protocol for bulk data, spoken on its own libp2p streams (`/lanpatch/<fleet>/xfer/1`).
//!
//! One request per stream. Every frame is a 4-byte big-endian length and a postcard body; a
//! chunk response is a header frame followed by the raw chunk bytes. Every length read from a
//! peer is checked against a limit before anything is allocated. See docs/PROTOCOL.md.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use lanpatch_protocol::Hash32;
use serde::{Deserialize, Serialize};

/// Largest request frame.
pub const MAX_REQUEST: usize = 4 * 1024;
/// Largest non-chunk response frame (a catalog of signed metadata, or a have-map).
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// Most peers in one peer-exchange response, and addresses per peer.
pub const MAX_PEERS: usize = 64;
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Most envelopes in one catalog response.
pub const MAX_CATALOG_ITEMS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// One chunk of a file, by file hash and index.
    Chunk { file: Hash32, index: u32 },
    /// Which chunks of a release the peer holds.
    Have { manifest: Hash32 },
    /// All signed metadata the peer holds (roots, manifests, approvals, yanks): lets a node that
    /// joins late catch up without waiting for new gossip.
    Catalog,
    /// Peers the responder is connected to, with their listen addresses (peer exchange, so
    /// nodes that know one static peer find the rest).
    Peers,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// `len` raw bytes follow.
    Chunk {
        len: u32,
    },
    /// One bit per chunk over the release's files in manifest order, least significant bit first.
    Have {
        #[serde(with = "serde_bytes")]
        bits: Vec<u8>,
        /// The responder is downloading this release (and so takes a share of origin work).
        downloading: bool,
    },
    Catalog {
        items: Vec<serde_bytes::ByteBuf>,
    },
    Peers {
        peers: Vec<(String, Vec<String>)>,
    },
    NotFound,
    /// The peer is at its upload limit; ask someone else or later.
    Busy,
    /// The peer is seeding a release it published and sent this chunk to another peer already:
    /// take it from a peer that holds it. The requester drops the chunk from this peer's
    /// have-map until its next have-map round, so it comes back here if nobody else has it.
    Elsewhere,
    /// `Elsewhere`, naming the peer the chunk went to (its peer id's bytes, at most
    /// [`MAX_PEER_ID`]): the requester asks that peer for it at once, without waiting for a
    /// have-map round to show who holds it. The named peer serves it as soon as it has stored
    /// it (see serve.rs).
    ElsewhereAt {
        #[serde(with = "serde_bytes")]
        holder: Vec<u8>,
    },
}

/// Longest peer id accepted in a response (an Ed25519 peer id is 38 bytes).
pub const MAX_PEER_ID: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer sent a {len}-byte frame, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("peer sent a malformed frame: {0}")]
    Malformed(String),
    #[error("peer sent a {actual}-byte chunk, expected {expected}")]
    WrongLength { expected: u32, actual: u32 },
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<(), WireError> {
    let body = lanpatch_protocol::encoding::encode(value);
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    lanpatch_protocol::encoding::decode("frame", &body, max).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Reads a chunk body of exactly `expected` bytes after a `Response::Chunk { len }` header.
pub async fn read_chunk_body<R: AsyncRead + Unpin>(
    r: &mut R,
    announced: u32,
    expected: u32,
) -> Result<Vec<u8>, WireError> {
    if announced != expected {
        return Err(WireError::WrongLength { expected, actual: announced });
    }
    let mut buf = crate::bufpool::for_overwrite(expected as usize);
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

pub async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), WireError> {
    let len =
        u32::try_from(bytes.len()).map_err(|_| WireError::TooLarge { len: bytes.len(), max: u32::MAX as usize })?;
    write_frame(w, &Response::Chunk { len }).await?;
    w.write_all(bytes).await?;
    Ok(())
}

/// Packs a have-list into bits.
pub fn pack_bits(have: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; have.len().div_ceil(8)];
    for (i, h) in have.iter().enumerate() {
        if *h {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Unpacks `n` bits; `None` if the peer sent the wrong number of bytes.
pub fn unpack_bits(bits: &[u8], n: usize) -> Option<Vec<bool>> {
    if bits.len() != n.div_ceil(8) {
        return None;
    }
    Some((0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn request_and_chunk_response_round_trip_over_a_byte_stream() {
        block_on(async {
            let mut buf = Cursor::new(Vec::new());
            let req = Request::Chunk { file: Hash32([5; 32]), index: 7 };
            write_frame(&mut buf, &req).await.unwrap();
            write_chunk(&mut buf, b"hello").await.unwrap();
            let mut r = Cursor::new(buf.into_inner());
            assert_eq!(read_frame::<_, Request>(&mut r, MAX_REQUEST).await.unwrap(), req);
            let Response::Chunk { len } = read_frame(&mut r, MAX_RESPONSE).await.unwrap() else {
                panic!("not a chunk header")
            };
            assert_eq!(read_chunk_body(&mut r, len, 5).await.unwrap(), b"hello");
        });
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        block_on(async {
            let mut r = Cursor::new([0xff, 0xff, 0xff, 0xf0].to_vec());
            assert!(matches!(read_frame::<_, Request>(&mut r, MAX_REQUEST).await, Err(WireError::TooLarge { .. })));
        });
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors_not_panics() {
        block_on(async {
            let mut r = Cursor::new([0, 0, 0, 10, 1, 2].to_vec());
            assert!(matches!(read_frame::<_, Request>(&mut r, MAX_REQUEST).await, Err(WireError::Io(_))));
            let mut r = Cursor::new([0, 0, 0, 3, 9, 9, 9].to_vec());
            assert!(matches!(read_frame::<_, Request>(&mut r, MAX_REQUEST).await, Err(WireError::Malformed(_))));
        });
    }

    #[test]
    fn chunk_of_unexpected_length_is_refused() {
        block_on(async {
            let mut r = Cursor::new(vec![0u8; 10]);
            assert!(matches!(
                read_chunk_body(&mut r, 10, 5).await,
                Err(WireError::WrongLength { expected: 5, actual: 10 })
            ));
        });
    }

    #[test]
    fn bits_round_trip_and_wrong_sizes_are_refused() {
        let have = vec![true, false, true, true, false, false, false, false, true];
        assert_eq!(unpack_bits(&pack_bits(&have), have.len()), Some(have.clone()));
        assert_eq!(unpack_bits(&[0xff], have.len()), None);
    }
}
