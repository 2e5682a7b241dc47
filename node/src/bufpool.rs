//! Chunk buffers, reused. Every chunk a node receives, serves or fetches from an origin passes
//! through a buffer of the chunk's size (256 KiB for releases up to 3 GiB). glibc maps each such
//! buffer on its own (the mmap threshold is fixed at 128 KiB, see `main.rs`) and unmaps it when it
//! is freed, so every chunk cost 64 page faults and the zeroing of 64 fresh pages: 6 % of the
//! CPU at 64 nodes, more on a LAN-bound transfer. Buffers given back here are kept for the next
//! chunk instead, at most [`MAX_POOLED_BYTES`] of them in all, so what the pool holds stays
//! bounded whatever the release and the number of transfers in flight.

use std::sync::Mutex;

/// The most bytes of free buffers the pool keeps (16 chunks of 256 KiB).
pub const MAX_POOLED_BYTES: usize = 4 * 1024 * 1024;
/// Buffers larger than this are not kept (a release of larger chunks allocates as before).
pub const MAX_POOLED_LEN: usize = 1024 * 1024;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { free: Vec::new(), bytes: 0 });

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for at least `len` bytes.
pub fn with_capacity(len: usize) -> Vec<u8> {
    let mut pool = lock();
    if let Some(at) = pool.free.iter().position(|b| b.capacity() >= len) {
        let buf = pool.free.swap_remove(at);
        pool.bytes -= buf.capacity();
        return buf;
    }
    drop(pool);
    Vec::with_capacity(len)
}

/// A buffer of `len` zero bytes (whatever it held before it was given back is gone).
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut buf = with_capacity(len);
    buf.resize(len, 0);
    buf
}

/// Gives a buffer back for a later chunk; dropped if it is too large or the pool is full.
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if cap == 0 || cap > MAX_POOLED_LEN {
        return;
    }
    buf.clear();
    let mut pool = lock();
    if pool.bytes + cap <= MAX_POOLED_BYTES {
        pool.bytes += cap;
        pool.free.push(buf);
    }
}

#[cfg(test)]
fn pooled_bytes() -> usize {
    lock().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is process-wide, and tests run on parallel threads.
    #[test]
    fn a_buffer_given_back_is_reused_zeroed_and_the_pool_stays_within_its_bound() {
        let mut a = zeroed(256 * 1024);
        a.fill(0xab);
        let at = a.as_ptr();
        give(a);
        let b = zeroed(256 * 1024);
        assert_eq!(b.as_ptr(), at, "the buffer given back is the one taken next");
        assert!(b.iter().all(|x| *x == 0), "a reused buffer comes back zeroed");
        assert_eq!(b.len(), 256 * 1024);
        give(b);

        // Far more buffers given back than the bound: the pool keeps MAX_POOLED_BYTES at most.
        let many: Vec<Vec<u8>> = (0..64).map(|_| zeroed(256 * 1024)).collect();
        for buf in many {
            give(buf);
        }
        assert!(pooled_bytes() <= MAX_POOLED_BYTES, "pool holds {} bytes", pooled_bytes());
        assert!(pooled_bytes() >= MAX_POOLED_BYTES / 2, "the pool keeps buffers up to its bound");

        // A buffer larger than MAX_POOLED_LEN is not kept.
        let before = pooled_bytes();
        give(Vec::with_capacity(MAX_POOLED_LEN + 1));
        assert_eq!(pooled_bytes(), before);

        // A request larger than any pooled buffer gets a fresh one of the right size.
        let big = zeroed(MAX_POOLED_LEN);
        assert_eq!(big.len(), MAX_POOLED_LEN);
    }
}
