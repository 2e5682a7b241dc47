//! While this node seeds a release it published (initial seeding, seeding.rs), it follows its
//! peers' have-maps the way a download does (a subscription per peer of its site, maps.rs), so
//! that the seed names a peer as the holder of a chunk only once that peer announced it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lanpatch_protocol::{Hash32, ReleaseManifest, Signed};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::maps::{HaveEvent, subscribe};
use crate::shared::Shared;

/// A broken subscription is opened again this much later.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How often the follower looks whether initial seeding ended.
const LOOK: Duration = Duration::from_secs(1);

/// Follows the peers' have-maps of `m` until initial seeding of all its files ended, telling
/// the seeding state each chunk a peer announced.
pub async fn follow(s: Arc<Shared>, m: Signed<ReleaseManifest>) {
    let hash = m.payload_hash();
    let files: Vec<(Hash32, usize)> = m.value().files.iter().map(|f| (f.hash, f.chunks.len())).collect();
    let n = files.iter().map(|(_, c)| c).sum();
    let (tx, mut rx) = mpsc::channel(256);
    let mut subs: HashMap<PeerId, AbortHandle> = HashMap::new();
    let mut retry: HashMap<PeerId, Instant> = HashMap::new();
    let mut ready = s.net.ready_changes();
    let mut shutdown = s.shutdown.clone();
    while files.iter().any(|(f, _)| s.seeding.is_seeding(f)) {
        let now = Instant::now();
        for p in s.net.ready_peers() {
            if !s.net.same_site(&p) || subs.contains_key(&p) || retry.get(&p).is_some_and(|t| *t > now) {
                continue;
            }
            let task = tokio::spawn(subscribe(s.net.clone(), p, hash, n, tx.clone()));
            subs.insert(p, task.abort_handle());
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = ready.changed() => {}
            _ = tokio::time::sleep(LOOK) => {}
            Some(ev) = rx.recv() => match ev {
                HaveEvent::Map(p, Ok(Some((bits, _)))) => {
                    announce(&s, &files, p, bits.iter().enumerate().filter(|(_, b)| **b).map(|(c, _)| c));
                }
                HaveEvent::Delta(p, chunks, _) => announce(&s, &files, p, chunks.iter().map(|c| *c as usize)),
                HaveEvent::Ended(p, _) => {
                    subs.remove(&p);
                    retry.insert(p, Instant::now() + RESUBSCRIBE);
                }
                HaveEvent::Map(..) => {}
            },
        }
    }
    for (_, task) in subs {
        task.abort();
    }
}

/// Tells the seeding state that `peer` holds these chunks (flat numbers over the files).
fn announce(s: &Shared, files: &[(Hash32, usize)], peer: PeerId, flat: impl Iterator<Item = usize>) {
    for mut c in flat {
        for (file, chunks) in files {
            if c < *chunks {
                s.seeding.announced(file, c as u32, &peer);
                break;
            }
            c -= chunks;
        }
    }
}
