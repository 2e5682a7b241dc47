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

static POOL: Mutex<Pool> = Mutex::new(Pool::new());

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for at least `len` bytes.
pub fn with_capacity(len: usize) -> Vec<u8> {
    let mut buf = lock().take(len).unwrap_or_else(|| Vec::with_capacity(len));
    buf.clear();
    buf
}

/// A buffer of `len` bytes for a read that overwrites all of them (`read_exact`): a buffer given
/// back keeps what it held (an earlier chunk's bytes), so that taking it does not clear 256 KiB
/// that the read writes again at once (memset was 2 % of all CPU at LAN N = 16). A fresh buffer
/// is zeroed.
pub fn for_overwrite(len: usize) -> Vec<u8> {
    let taken = lock().take(len);
    Pool::sized(taken, len)
}

/// Gives a buffer back for a later chunk; dropped if it is too large or the pool is full.
pub fn give(buf: Vec<u8>) {
    lock().give(buf);
}

impl Pool {
    const fn new() -> Pool {
        Pool { free: Vec::new(), bytes: 0 }
    }

    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let at = self.free.iter().position(|b| b.capacity() >= len)?;
        let buf = self.free.swap_remove(at);
        self.bytes -= buf.capacity();
        Some(buf)
    }

    fn sized(taken: Option<Vec<u8>>, len: usize) -> Vec<u8> {
        match taken {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => vec![0; len],
        }
    }

    fn give(&mut self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > MAX_POOLED_LEN {
            return;
        }
        if self.bytes + cap <= MAX_POOLED_BYTES {
            self.bytes += cap;
            self.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_reused_at_the_asked_length_and_the_pool_stays_within_its_bound() {
        // A pool of the test's own: the process-wide one is shared with tests on other threads.
        let mut pool = Pool::new();
        let mut a = Pool::sized(pool.take(256 * 1024), 256 * 1024);
        assert!(a.iter().all(|x| *x == 0), "a fresh buffer is zeroed");
        a.fill(0xab);
        let at = a.as_ptr();
        pool.give(a);
        let b = Pool::sized(pool.take(100 * 1024), 100 * 1024);
        assert_eq!(b.as_ptr(), at, "the buffer given back is the one taken next");
        assert_eq!(b.len(), 100 * 1024, "cut to the asked length");
        pool.give(b);
        let c = Pool::sized(pool.take(256 * 1024), 256 * 1024);
        assert_eq!(c.as_ptr(), at);
        assert_eq!(c.len(), 256 * 1024, "grown back to a whole chunk");
        pool.give(c);

        // Far more buffers given back than the bound: the pool keeps MAX_POOLED_BYTES at most.
        for _ in 0..64 {
            pool.give(vec![0; 256 * 1024]);
        }
        assert!(pool.bytes <= MAX_POOLED_BYTES, "pool holds {} bytes", pool.bytes);
        assert!(pool.bytes >= MAX_POOLED_BYTES / 2, "the pool keeps buffers up to its bound");

        // A buffer larger than MAX_POOLED_LEN is not kept.
        let before = pool.bytes;
        pool.give(Vec::with_capacity(MAX_POOLED_LEN + 1));
        assert_eq!(pool.bytes, before);

        // A request larger than any pooled buffer gets a fresh one of the right size.
        let big = Pool::sized(pool.take(MAX_POOLED_LEN), MAX_POOLED_LEN);
        assert_eq!(big.len(), MAX_POOLED_LEN);
    }

    #[test]
    fn with_capacity_hands_out_an_empty_buffer() {
        let c = with_capacity(1000);
        assert!(c.is_empty() && c.capacity() >= 1000);
    }
}
