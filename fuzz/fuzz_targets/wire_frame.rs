//! Any bytes as a transfer-protocol stream: a request frame, a response frame, a chunk body and a
//! have-map, as a node reads them from a peer.
#![no_main]
use futures::io::Cursor;
use lanpatch_node::wire::{self, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let _ = wire::read_frame::<_, Request>(&mut Cursor::new(data), wire::MAX_REQUEST).await;
        let mut r = Cursor::new(data);
        if let Ok(Response::Chunk { len }) = wire::read_frame::<_, Response>(&mut r, wire::MAX_RESPONSE).await {
            let _ = wire::read_chunk_body(&mut r, len, len.min(1 << 20)).await;
        }
    });
    let _ = wire::unpack_bits(data, data.len() * 8);
    let _ = wire::unpack_bits(data, data.len().saturating_mul(8).saturating_sub(3));
});
