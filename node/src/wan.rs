//! Splitting origin (WAN) work among the LAN nodes that want the same release.
//!
//! Each node computes the same owner for every chunk by rendezvous hashing over the participants
//! (the nodes downloading the release that are not stalled): the owner is the participant with
//! the highest `BLAKE3(manifest || chunk || node id)`. Only the owner fetches a chunk from the
//! origin; everyone else waits for it to appear in the owner's have-map and fetches it over the
//! LAN. When a participant leaves or stalls, only its chunks move, each to the next-highest node.

use lanpatch_protocol::Hash32;

fn score(manifest: &Hash32, chunk: usize, node: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&manifest.0);
    h.update(&(chunk as u64).to_le_bytes());
    h.update(node);
    *h.finalize().as_bytes()
}

/// Index into `participants` of the node that fetches `chunk` from the origin.
pub fn owner<N: AsRef<[u8]>>(manifest: &Hash32, chunk: usize, participants: &[N]) -> Option<usize> {
    participants.iter().enumerate().max_by_key(|(_, n)| score(manifest, chunk, n.as_ref())).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 8]).collect()
    }

    #[test]
    fn work_is_split_about_evenly() {
        let m = Hash32([9; 32]);
        let p = nodes(8);
        let mut counts = [0usize; 8];
        for c in 0..4000 {
            counts[owner(&m, c, &p).unwrap()] += 1;
        }
        assert!(counts.iter().all(|n| (400..600).contains(n)), "{counts:?}");
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_chunks() {
        let m = Hash32([1; 32]);
        let all = nodes(5);
        let without: Vec<Vec<u8>> = all.iter().filter(|n| n[0] != 2).cloned().collect();
        for c in 0..1000 {
            let before = &all[owner(&m, c, &all).unwrap()];
            let after = &without[owner(&m, c, &without).unwrap()];
            if before[0] != 2 {
                assert_eq!(before, after, "chunk {c} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_the_order() {
        let m = Hash32([3; 32]);
        let a = nodes(6);
        let mut b = a.clone();
        b.reverse();
        for c in 0..200 {
            assert_eq!(a[owner(&m, c, &a).unwrap()], b[owner(&m, c, &b).unwrap()]);
        }
    }
}
