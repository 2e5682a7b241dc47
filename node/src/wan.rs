//! Splitting origin (WAN) work among the LAN nodes that want the same release.
//!
//! Each node computes the same owner for every chunk by rendezvous hashing over the participants
//! (the nodes downloading the release that are not stalled): the owner is the participant with
//! the highest `BLAKE3(manifest || chunk || node id)`. Only the owner fetches a chunk from the
//! origin; everyone else waits for it to appear in the owner's have-map and fetches it over the
//! LAN. When a participant leaves or stalls, only its chunks move, each to the next-highest node.
//!
//! The origin work of a site does not grow with the number of nodes: only `site_origin_fetchers`
//! participants (the ones with the highest `BLAKE3(manifest || node id)`) fetch from the origin at
//! all, so a site keeps about `site_origin_fetchers x max_origin_inflight` requests open across its
//! WAN link whether it has 8 nodes or 500. A shaped or congested link drops handshakes when
//! hundreds of connections open at once; a handful fills it. When a fetcher leaves or stalls, the
//! next-highest participant takes its place and only the leaver's chunks move.

use lanpatch_protocol::Hash32;

fn score(manifest: &Hash32, chunk: usize, node: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&manifest.0);
    h.update(&(chunk as u64).to_le_bytes());
    h.update(node);
    *h.finalize().as_bytes()
}

fn fetcher_score(manifest: &Hash32, node: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"lanpatch origin fetcher v1");
    h.update(&manifest.0);
    h.update(node);
    *h.finalize().as_bytes()
}

/// Index into `participants` of the node that fetches `chunk` from the origin.
pub fn owner<N: AsRef<[u8]>>(manifest: &Hash32, chunk: usize, participants: &[N]) -> Option<usize> {
    participants.iter().enumerate().max_by_key(|(_, n)| score(manifest, chunk, n.as_ref())).map(|(i, _)| i)
}

/// Indices into `participants` of the (at most `k`) nodes that fetch this release from the origin,
/// best first. Every node computes the same set from the same participants, whatever their order.
pub fn fetchers<N: AsRef<[u8]>>(manifest: &Hash32, participants: &[N], k: usize) -> Vec<usize> {
    let mut ranked: Vec<(usize, [u8; 32])> =
        participants.iter().enumerate().map(|(i, n)| (i, fetcher_score(manifest, n.as_ref()))).collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    ranked.into_iter().take(k).map(|(i, _)| i).collect()
}

/// Nodes of a site that announce a release they hold in Kademlia once their download ends.
/// A lookup from another site needs one holder per site to find the site (the rest are reached
/// over its LAN through that holder's peers); every node announcing sent each node's provider
/// record to the 20 closest peers, most of them across site links (about 2 MB over three sites
/// of six as a distribution ended). Two, so that one leaving does not hide the site.
pub const ANNOUNCERS_PER_SITE: usize = 2;

/// Whether the node `me` is one of the site's announcers of `manifest`, among the site's
/// `holders` (the same-site peers that hold or fetch the release, `me` included or not). Every
/// holder computes the same set from the same holders, whatever their order.
pub fn announces(manifest: &Hash32, me: &[u8], holders: &[Vec<u8>]) -> bool {
    let mut ids: Vec<&[u8]> = holders.iter().map(|h| h.as_slice()).filter(|h| *h != me).collect();
    ids.push(me);
    fetchers(manifest, &ids, ANNOUNCERS_PER_SITE).iter().any(|&i| ids[i] == me)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner of `chunk` among the fetchers, as an index into `participants`.
    fn owner_among_fetchers(m: &Hash32, chunk: usize, participants: &[Vec<u8>], k: usize) -> Option<usize> {
        let chosen = fetchers(m, participants, k);
        let ids: Vec<&Vec<u8>> = chosen.iter().map(|&i| &participants[i]).collect();
        owner(m, chunk, &ids).map(|j| chosen[j])
    }

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
    fn origin_fetchers_stay_at_k_however_large_the_site() {
        let m = Hash32([5; 32]);
        for n in [1u8, 3, 8, 32, 64, 200] {
            let p = nodes(n);
            let k = 4;
            let f = fetchers(&m, &p, k);
            assert_eq!(f.len(), usize::from(n).min(k), "n = {n}");
            let mut owners: Vec<usize> = (0..2000).filter_map(|c| owner_among_fetchers(&m, c, &p, k)).collect();
            owners.sort_unstable();
            owners.dedup();
            assert_eq!(owners.len(), f.len(), "n = {n}: every fetcher gets work, nobody else does");
            assert!(owners.iter().all(|o| f.contains(o)));
        }
    }

    #[test]
    fn a_leaving_fetcher_is_replaced_and_the_other_fetchers_keep_their_chunks() {
        let m = Hash32([7; 32]);
        let all = nodes(20);
        let k = 4;
        let before = fetchers(&m, &all, k);
        let gone = all[before[0]].clone();
        let rest: Vec<Vec<u8>> = all.iter().filter(|n| **n != gone).cloned().collect();
        let after = fetchers(&m, &rest, k);
        assert_eq!(after.len(), k);
        assert!(!after.iter().any(|&i| rest[i] == gone));
        for &i in &before[1..] {
            assert!(after.iter().any(|&j| rest[j] == all[i]), "a remaining fetcher lost its place");
        }
        let newcomer = after.iter().map(|&i| &rest[i]).find(|n| !before.iter().any(|&b| all[b] == **n)).unwrap();
        for c in 0..1000 {
            let was = &all[owner_among_fetchers(&m, c, &all, k).unwrap()];
            let now = &rest[owner_among_fetchers(&m, c, &rest, k).unwrap()];
            if *was != gone {
                // Rendezvous hashing: the newcomer takes its share, no chunk moves between the
                // fetchers that stayed.
                assert!(was == now || now == newcomer, "chunk {c} moved between two fetchers that stayed");
            }
        }
    }

    #[test]
    fn every_node_computes_the_same_fetchers_whatever_the_order() {
        let m = Hash32([4; 32]);
        let a = nodes(30);
        let mut b = a.clone();
        b.reverse();
        let fa: Vec<&Vec<u8>> = fetchers(&m, &a, 5).into_iter().map(|i| &a[i]).collect();
        let fb: Vec<&Vec<u8>> = fetchers(&m, &b, 5).into_iter().map(|i| &b[i]).collect();
        assert_eq!(fa, fb);
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

    #[test]
    fn only_two_holders_of_a_site_announce_a_release_and_a_lone_holder_always_does() {
        let m = Hash32([5; 32]);
        let site = nodes(12);
        let announcing = site.iter().filter(|me| announces(&m, me, &site)).count();
        assert_eq!(announcing, ANNOUNCERS_PER_SITE);
        assert!(announces(&m, &site[3], &[]), "a node with no holder beside it must announce");
        // The holder list may or may not name the node itself: same answer.
        for me in &site {
            let others: Vec<Vec<u8>> = site.iter().filter(|n| *n != me).cloned().collect();
            assert_eq!(announces(&m, me, &site), announces(&m, me, &others));
        }
    }
}
