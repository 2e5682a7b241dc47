//! The handle to the download owner ([`super::owner`]): what other tasks send it and what they
//! read of it. Nothing here reaches the rest of the node, so `Shared` can hold the handle while
//! the owner, above it, works through `Shared`.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Result, anyhow};
use lanpatch_protocol::{Hash32, ReleaseManifest, Signed};
use tokio::sync::{mpsc, oneshot, watch};

/// Download progress of one release, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub total_chunks: usize,
    pub have_chunks: usize,
    pub resumed_chunks: usize,
    pub fetched_chunks: usize,
    pub bytes_from: BTreeMap<String, u64>,
    /// Verified bytes fetched in this process from peers and from origins.
    pub from_peers: u64,
    pub from_origin: u64,
    /// When the download finished in this process (ms since the epoch).
    pub finished_ms: Option<u64>,
}

/// What the owner publishes after every change: which releases wait for a slot, which download,
/// and the progress of each download this process ran or admitted.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Admitted, waiting for a download slot (most severe first when a slot frees).
    pub queued: HashSet<Hash32>,
    pub running: HashSet<Hash32>,
    pub progress: HashMap<Hash32, Progress>,
}

pub(super) enum Command {
    /// Admit a release for download (the caller checked targeting and yanks; the owner checks
    /// quota and disk) and queue it; replies once it is queued or refused.
    Consider { manifest: Box<Signed<ReleaseManifest>>, reply: oneshot::Sender<()> },
    /// A running download's progress.
    Progress { hash: Hash32, progress: Progress },
    /// A running download ended (whatever the outcome: the owner frees its slot), at
    /// `finished_ms` (ms since the epoch) if it completed.
    Ended { hash: Hash32, finished_ms: Option<u64> },
}

/// A cheap, clonable handle to the download owner.
#[derive(Clone)]
pub struct Downloads {
    tx: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
}

/// The owner's ends of the channels, handed to [`super::owner::run`].
pub struct Inbox {
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) view: watch::Sender<View>,
}

/// A handle and the owner's inbox. Commands wait in a bounded channel (back-pressure on chunk
/// progress when the owner is busy admitting).
pub fn channel() -> (Downloads, Inbox) {
    let (tx, rx) = mpsc::channel(256);
    let (view_tx, view) = watch::channel(View::default());
    (Downloads { tx, view }, Inbox { rx, view: view_tx })
}

impl Downloads {
    /// Hands a trusted release to the owner, which admits it (quota, free disk) and queues it,
    /// or records why not. Returns once that was decided.
    pub async fn consider(&self, manifest: Signed<ReleaseManifest>) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Consider { manifest: Box::new(manifest), reply })
            .await
            .map_err(|_| anyhow!("the download owner stopped"))?;
        rx.await.map_err(|_| anyhow!("the download owner stopped"))
    }

    /// A running download's progress (from the release download itself).
    pub(super) async fn report(&self, hash: Hash32, progress: Progress) {
        let _ = self.tx.send(Command::Progress { hash, progress }).await;
    }

    pub(super) async fn ended(&self, hash: Hash32, finished_ms: Option<u64>) {
        let _ = self.tx.send(Command::Ended { hash, finished_ms }).await;
    }

    /// Whether this node downloads the release or waits to (either way a participant in its
    /// site's origin work).
    pub fn takes_part(&self, hash: &Hash32) -> bool {
        let v = self.view.borrow();
        v.running.contains(hash) || v.queued.contains(hash)
    }

    /// The progress of every release this process admitted.
    pub fn progress(&self) -> HashMap<Hash32, Progress> {
        self.view.borrow().progress.clone()
    }
}
