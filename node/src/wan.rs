//! Splitting origin (WAN) work among the LAN nodes that want the same release.
//!
//! The origin work of a site does not grow with the number of nodes: only `site_origin_fetchers`
//! participants (the nodes downloading the release that are not stalled, ranked by
//! `BLAKE3(manifest || node id)`) fetch from the origin at all, so a site keeps about
//! `site_origin_fetchers x max_origin_inflight` requests open across its WAN link whether it has
//! 8 nodes or 500. A shaped or congested link drops handshakes when hundreds of connections open
//! at once; a handful fills it. When a fetcher leaves or stalls, the next-highest participant
//! takes its place.
//!
//! Each node computes the same owner for every chunk among the fetchers ([`assign`]): rendezvous
//! hashing on `BLAKE3(manifest || chunk || node id)` with bounded loads, so that every fetcher owns
//! at most its fair share rounded up. Only the owner fetches a chunk from the origin; everyone
//! else waits for it to appear in the owner's have-map and fetches it over the LAN.

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

/// The owner of every chunk of a release among its site's origin `fetchers`, as indices into
/// `fetchers`: rendezvous hashing with bounded loads. Chunks are taken in order; each goes to the
/// fetcher with the highest `score` among those that own fewer than `ceil(chunks / k)` so far.
/// No fetcher owns more than the fair share rounded up, so they all finish their share at about
/// the same time: with plain rendezvous hashing the largest of 4 shares of 128 chunks is on
/// average 1.18 x the fair share, and where each fetcher is held to its part of
/// `site_origin_limit` the last one finished that much later. Deterministic and independent of
/// the order of `fetchers`; when a fetcher leaves, its chunks move and, through the raised bound,
/// a few others (see the tests).
/// Empty when there are no fetchers.
pub fn assign<N: AsRef<[u8]>>(manifest: &Hash32, chunks: usize, fetchers: &[N]) -> Vec<usize> {
    let k = fetchers.len();
    if k == 0 {
        return Vec::new();
    }
    let cap = chunks.div_ceil(k);
    let mut load = vec![0usize; k];
    let mut ranked: Vec<(usize, [u8; 32])> = Vec::with_capacity(k);
    (0..chunks)
        .map(|c| {
            ranked.clear();
            ranked.extend(fetchers.iter().enumerate().map(|(i, f)| (i, score(manifest, c, f.as_ref()))));
            ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
            // Every fetcher at the bound would mean more than k x cap chunks: one always has room.
            let at = ranked.iter().map(|(i, _)| *i).find(|i| load[*i] < cap).unwrap_or(ranked[0].0);
            load[at] += 1;
            at
        })
        .collect()
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

    /// The owner of every chunk among the fetchers, as indices into `participants`.
    fn owners_among_fetchers(m: &Hash32, chunks: usize, participants: &[Vec<u8>], k: usize) -> Vec<usize> {
        let chosen = fetchers(m, participants, k);
        let ids: Vec<&Vec<u8>> = chosen.iter().map(|&i| &participants[i]).collect();
        assign(m, chunks, &ids).into_iter().map(|j| chosen[j]).collect()
    }

    fn nodes(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 8]).collect()
    }

    #[test]
    fn no_fetcher_owns_more_than_its_fair_share_rounded_up() {
        for (chunks, k) in [(128usize, 4u8), (4000, 8), (129, 4), (3, 4), (1, 1), (0, 3), (4096, 5)] {
            let m = Hash32([chunks as u8; 32]);
            let a = assign(&m, chunks, &nodes(k));
            assert_eq!(a.len(), chunks);
            let mut counts = vec![0usize; usize::from(k)];
            for o in &a {
                counts[*o] += 1;
            }
            let hi = counts.iter().max().unwrap();
            assert!(*hi <= chunks.div_ceil(usize::from(k)), "{chunks} chunks over {k}: {counts:?}");
        }
        assert!(assign(&Hash32([0; 32]), 10, &Vec::<Vec<u8>>::new()).is_empty());
    }

    #[test]
    fn a_leaving_fetcher_moves_its_own_chunks_and_few_others() {
        let m = Hash32([1; 32]);
        let all = nodes(5);
        let without: Vec<Vec<u8>> = all.iter().filter(|n| n[0] != 2).cloned().collect();
        let (before, after) = (assign(&m, 1000, &all), assign(&m, 1000, &without));
        let moved_between_stayers =
            (0..1000).filter(|&c| all[before[c]][0] != 2 && all[before[c]] != without[after[c]]).count();
        // Plain rendezvous hashing moves none; the bound moves some where a fetcher's share grew
        // past what its first choices give it. Far fewer than a reshuffle (~800).
        assert!(
            moved_between_stayers <= 150,
            "{moved_between_stayers} of 1000 chunks moved between fetchers that stayed"
        );
    }

    #[test]
    fn origin_fetchers_stay_at_k_however_large_the_site() {
        let m = Hash32([5; 32]);
        for n in [1u8, 3, 8, 32, 64, 200] {
            let p = nodes(n);
            let k = 4;
            let f = fetchers(&m, &p, k);
            assert_eq!(f.len(), usize::from(n).min(k), "n = {n}");
            let mut owners = owners_among_fetchers(&m, 2000, &p, k);
            owners.sort_unstable();
            owners.dedup();
            assert_eq!(owners.len(), f.len(), "n = {n}: every fetcher gets work, nobody else does");
            assert!(owners.iter().all(|o| f.contains(o)));
        }
    }

    #[test]
    fn a_leaving_fetcher_is_replaced_and_the_other_fetchers_keep_most_of_their_chunks() {
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
        let (was, now) = (owners_among_fetchers(&m, 1000, &all, k), owners_among_fetchers(&m, 1000, &rest, k));
        let moved = (0..1000)
            .filter(|&c| all[was[c]] != gone && rest[now[c]] != *newcomer && all[was[c]] != rest[now[c]])
            .count();
        assert!(moved <= 150, "{moved} of 1000 chunks moved between two fetchers that stayed");
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
        let (oa, ob) = (assign(&m, 200, &a), assign(&m, 200, &b));
        for c in 0..200 {
            assert_eq!(a[oa[c]], b[ob[c]]);
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
