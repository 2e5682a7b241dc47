//! State shared by the node's tasks, and the handles they reach each other through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lanpatch_protocol::{Hash32, ReleaseManifest, Signed};
use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore, watch};

use crate::clock::now;
use crate::config::Config;
use crate::library::Library;
use crate::lifecycle::Lifecycle;
use crate::net::NetHandle;
use crate::policy::Facts;
use crate::ratelimit::RateLimiter;
use crate::report::{ReleaseRef, Reporter};
use crate::store::Store;
use crate::trust::Trust;

/// Download progress of one release, for status.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub total_chunks: usize,
    pub have_chunks: usize,
    pub resumed_chunks: usize,
    pub fetched_chunks: usize,
    pub bytes_from: BTreeMap<String, u64>,
    /// When the download finished in this process (ms since the epoch).
    pub finished_ms: Option<u64>,
}

/// State shared by the node's tasks.
pub struct Shared {
    pub cfg: Config,
    pub facts: Facts,
    pub store: Store,
    pub library: Library,
    pub trust: Mutex<Trust>,
    pub net: NetHandle,
    pub progress: Mutex<HashMap<Hash32, Progress>>,
    pub downloading: Mutex<HashSet<Hash32>>,
    /// Downloads waiting for a slot.
    pub queue: Mutex<Vec<Signed<ReleaseManifest>>>,
    pub queue_changed: Notify,
    /// Signs this node's reports and inventories (its libp2p ed25519 identity).
    pub reporter: Arc<Reporter>,
    /// The owner of every release's state.
    pub lifecycle: Lifecycle,
    pub inventory_changed: Arc<Notify>,
    /// Notified when trusted metadata changed (an approval, a yank, a new release): the
    /// installer looks again.
    pub metadata_changed: Notify,
    pub banned: Mutex<HashSet<PeerId>>,
    pub up_limit: RateLimiter,
    pub down_limit: RateLimiter,
    pub origin_limit: RateLimiter,
    pub origins: crate::origin::Origins,
    pub uploads: Semaphore,
    pub refusals: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn trust(&self) -> std::sync::MutexGuard<'_, Trust> {
        self.trust.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn progress(&self) -> std::sync::MutexGuard<'_, HashMap<Hash32, Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn node_public(&self) -> lanpatch_protocol::PublicKey {
        self.reporter.node_public()
    }
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.lock().unwrap_or_else(|p| p.into_inner()).contains(peer)
    }

    /// Logs, counts and stores a refusal. Every refused message or chunk goes through here.
    pub async fn refuse(&self, source: String, kind: &'static str, reason: String) {
        tracing::warn!(%source, kind, %reason, "refused");
        self.refusals.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.add_refusal(now().0, source, kind, reason).await {
            tracing::error!("cannot record refusal: {e:#}");
        }
    }

    pub async fn ban(&self, peer: PeerId, reason: String) {
        let first = self.banned.lock().unwrap_or_else(|p| p.into_inner()).insert(peer);
        if first {
            self.refuse(peer.to_string(), "peer-banned", reason).await;
            self.net.ban(peer).await;
        }
    }
}

/// What a report about `m` is about.
pub fn release_ref(m: &Signed<ReleaseManifest>) -> ReleaseRef {
    let v = m.value();
    ReleaseRef { hash: m.payload_hash(), product: v.product.clone(), version: v.version }
}
