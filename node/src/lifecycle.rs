//! The one owner of every release's state on this node.
//!
//! A task holds the states; everything else sends it events through a [`Lifecycle`] handle
//! (a bounded channel, a oneshot reply each) and reads them from a `watch` snapshot. For each
//! event the task runs the pure `lanpatch_protocol::lifecycle::step`; if the state changes it
//! signs a report, persists the new state, the report and its sequence number in one SQLite
//! transaction, and only then updates the snapshot and announces the report. A state that was
//! not persisted is never reported, and what was persisted is what the node starts from after
//! a restart, so a node's reported states never go backwards.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use lanpatch_protocol::lifecycle::{Effect, Step, step};
use lanpatch_protocol::{DownloadProgress, Event, Hash32, ReleaseState, Report, Signed};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::clock::now;
use crate::net::NetHandle;
use crate::report::{ReleaseRef, Reporter};
use crate::store::{Store, Transition};

/// A release's state on this node and the human text beside it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub state: ReleaseState,
    pub detail: String,
    /// The download's progress as last reported (in memory: a restarted node reports it again
    /// once a download runs).
    pub progress: Option<DownloadProgress>,
    /// When its state last changed (seconds since the epoch).
    pub updated: u64,
    /// Which attempt at the release (0 the first; each retry starts the next).
    pub attempt: u32,
}

pub type Snapshot = Arc<HashMap<Hash32, Entry>>;

/// What changed, for the caller: the new state and the effects it must carry out
/// (`Effect::RunRollback`). `None` when the event did not apply.
pub type Applied = Option<(ReleaseState, Vec<Effect>)>;

struct Apply {
    release: ReleaseRef,
    /// `None`: only `progress` changed; reported while the release is `Downloading`.
    event: Option<Event>,
    progress: Option<DownloadProgress>,
    detail: String,
    exit_code: Option<i32>,
    reply: oneshot::Sender<Result<Applied>>,
}

enum Command {
    Apply(Apply),
    /// Send the latest report about a release again under a new sequence number.
    Restamp {
        hash: Hash32,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Drop from memory every release not in `keep` whose state is an outcome reached before
    /// `before`.
    Retire {
        keep: std::collections::HashSet<Hash32>,
        before: u64,
        reply: oneshot::Sender<usize>,
    },
}

/// A cheap, clonable handle to the lifecycle owner.
#[derive(Clone)]
pub struct Lifecycle {
    tx: mpsc::Sender<Command>,
    view: watch::Receiver<Snapshot>,
}

impl Lifecycle {
    /// The current state of a release (`Available` if nothing happened to it yet).
    pub fn state(&self, hash: &Hash32) -> ReleaseState {
        self.view.borrow().get(hash).map(|e| e.state).unwrap_or(ReleaseState::Available)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.view.borrow().clone()
    }

    /// Changes whenever any release's state changes.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.view.clone()
    }

    /// Applies an event and waits until the resulting state is persisted and reported.
    pub async fn apply(
        &self,
        release: &ReleaseRef,
        event: Event,
        detail: impl Into<String>,
        exit_code: Option<i32>,
    ) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        let cmd = Apply {
            release: release.clone(),
            event: Some(event),
            progress: None,
            detail: detail.into(),
            exit_code,
            reply,
        };
        self.send(cmd, rx).await
    }

    /// Records a download's progress and, while the release is `Downloading`, reports it (a
    /// report of the same state with a new sequence number). Later reports carry it too.
    pub async fn progress(&self, release: &ReleaseRef, progress: DownloadProgress) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        let cmd = Apply {
            release: release.clone(),
            event: None,
            progress: Some(progress),
            detail: String::new(),
            exit_code: None,
            reply,
        };
        self.send(cmd, rx).await
    }

    /// Sends this node's latest report about `hash` again under a new sequence number (a
    /// listener pulled it). Serialised with the transitions, so it never overtakes one. False when
    /// the node never reported on it.
    pub async fn restamp(&self, hash: Hash32) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Restamp { hash, reply }).await.map_err(|_| anyhow!("the lifecycle owner has stopped"))?;
        rx.await.map_err(|_| anyhow!("the lifecycle owner has stopped"))?
    }

    /// Retires releases from memory: every release not in `keep` (the manifests still trusted)
    /// whose state is an outcome reached before `before` leaves the map; its row and reports stay
    /// in the store. An install or rollback under way stays. Returns how many left.
    pub async fn retire(&self, keep: std::collections::HashSet<Hash32>, before: u64) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Retire { keep, before, reply })
            .await
            .map_err(|_| anyhow!("the lifecycle owner has stopped"))?;
        rx.await.map_err(|_| anyhow!("the lifecycle owner has stopped"))
    }

    async fn send(&self, cmd: Apply, rx: oneshot::Receiver<Result<Applied>>) -> Result<Applied> {
        self.tx.send(Command::Apply(cmd)).await.map_err(|_| anyhow!("the lifecycle owner has stopped"))?;
        rx.await.map_err(|_| anyhow!("the lifecycle owner has stopped"))?
    }
}

/// Where the owner sends what it reports.
pub struct Outlets {
    pub net: NetHandle,
    /// Where its own reports are stored like everyone else's (a collector keeps them all, other
    /// nodes their ring's).
    pub store: Store,
    pub collector: bool,
    pub ring: lanpatch_protocol::RingName,
    /// Notified when what is installed changed (the inventory loop sends a fresh inventory).
    pub inventory_changed: Arc<Notify>,
    /// Notified after every report: this node's digest changed (sync.rs).
    pub digest_changed: Arc<Notify>,
    /// Releases whose latest report gossip did not send (no peer yet): sent again, restamped,
    /// when a peer arrives (sync.rs).
    pub unsent: Arc<std::sync::Mutex<std::collections::HashSet<Hash32>>>,
}

/// Loads the persisted states and starts the owner task. The task ends when every handle is
/// dropped (after the node's other tasks stopped), so events sent during shutdown (an
/// interrupted install) are still persisted.
pub fn start(store: Store, reporter: Arc<Reporter>, outlets: Outlets) -> Result<Lifecycle> {
    let mut states = HashMap::new();
    for r in store.releases()? {
        let entry = Entry { state: r.state, detail: r.detail, progress: None, updated: r.updated, attempt: r.attempt };
        states.insert(r.manifest, entry);
    }
    let (view_tx, view) = watch::channel(Arc::new(states.clone()));
    let (tx, mut rx) = mpsc::channel::<Command>(64);
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Apply(cmd) => {
                    let result = transition(&store, &reporter, &outlets, &mut states, &cmd).await;
                    if let Ok(Some(_)) = &result {
                        view_tx.send_replace(Arc::new(states.clone()));
                    }
                    let _ = cmd.reply.send(result);
                }
                Command::Restamp { hash, reply } => {
                    let _ = reply.send(restamp(&store, &reporter, &outlets, hash).await);
                }
                Command::Retire { keep, before, reply } => {
                    let held = states.len();
                    states.retain(|hash, e| keep.contains(hash) || !e.state.is_outcome() || e.updated >= before);
                    let gone = held - states.len();
                    if gone > 0 {
                        view_tx.send_replace(Arc::new(states.clone()));
                    }
                    let _ = reply.send(gone);
                }
            }
        }
    });
    Ok(Lifecycle { tx, view })
}

async fn transition(
    store: &Store,
    reporter: &Reporter,
    outlets: &Outlets,
    states: &mut HashMap<Hash32, Entry>,
    cmd: &Apply,
) -> Result<Applied> {
    let hash = cmd.release.hash;
    let current = states.get(&hash).map(|e| e.state).unwrap_or(ReleaseState::Available);
    let progress = cmd.progress.or_else(|| states.get(&hash).and_then(|e| e.progress));
    let (next, effects, detail) = match cmd.event {
        Some(event) => {
            let Step::To(next, effects) = step(current, event) else {
                tracing::debug!(manifest = %hash.short(), state = %current, event = ?event, "event does not apply");
                return Ok(None);
            };
            (next, effects, cmd.detail.clone())
        }
        None if current == ReleaseState::Downloading => {
            let detail = states.get(&hash).map(|e| e.detail.clone()).unwrap_or_default();
            (current, Vec::new(), detail)
        }
        None => {
            if let Some(e) = states.get_mut(&hash) {
                e.progress = progress;
            }
            return Ok(None);
        }
    };
    let attempt = states.get(&hash).map_or(0, |e| e.attempt) + u32::from(cmd.event == Some(Event::Retry));
    // A new attempt starts without the last one's download progress.
    let progress = if cmd.event == Some(Event::Retry) { None } else { progress };
    let (seq, report) = reporter.report(&cmd.release, next, &detail, cmd.exit_code, progress, attempt);
    store
        .commit_transition(Transition {
            manifest: hash,
            product: cmd.release.product.to_string(),
            version: cmd.release.version.0,
            state: next,
            detail: detail.clone(),
            exit_code: cmd.exit_code,
            now: now().0,
            seq,
            report: report.clone(),
            attempt,
        })
        .await?;
    states.insert(hash, Entry { state: next, detail, progress, updated: now().0, attempt });
    if cmd.event.is_none() {
        tracing::debug!(manifest = %hash.short(), ?progress, "download progress reported");
    } else {
        tracing::info!(manifest = %hash.short(), product = %cmd.release.product, version = %cmd.release.version, from = %current, to = %next, "release state");
    }
    announce(outlets, reporter, hash, report).await;
    if effects.contains(&Effect::InventoryChanged) {
        outlets.inventory_changed.notify_one();
    }
    Ok(Some((next, effects)))
}

async fn restamp(store: &Store, reporter: &Reporter, outlets: &Outlets, hash: Hash32) -> Result<bool> {
    let Some(bytes) = store.report_out(hash).await? else {
        mark_unsent(outlets, hash, false);
        return Ok(false);
    };
    let old = Signed::<Report>::decode(&bytes, &reporter.limits)?;
    let (seq, report) = reporter.restamp(old.value().clone());
    store.restamp_report_out(hash, seq, report.clone()).await?;
    announce(outlets, reporter, hash, report).await;
    Ok(true)
}

/// A report this node just signed: stored like everyone else's (a collector keeps them all,
/// other nodes their ring's), published, kept as unsent when gossip could not send it, and the
/// digest told.
async fn announce(outlets: &Outlets, reporter: &Reporter, hash: Hash32, report: Vec<u8>) {
    let keeps =
        if outlets.collector { crate::report::Keeps::Everything } else { crate::report::Keeps::Ring(&outlets.ring) };
    if let Err(e) = crate::report::accept_node_message(
        &outlets.store,
        keeps,
        &reporter.limits,
        &report,
        crate::report::Author::Local,
    )
    .await
    {
        tracing::error!("own report refused: {e}");
    }
    let sent = match outlets.net.publish_sent(report).await {
        Ok(sent) => sent,
        Err(e) => {
            tracing::debug!("report not published now: {e:#}");
            false
        }
    };
    // Kept in reports_out; an unsent one goes out again when a peer arrives (sync.rs).
    mark_unsent(outlets, hash, !sent);
    outlets.digest_changed.notify_one();
}

fn mark_unsent(outlets: &Outlets, hash: Hash32, unsent: bool) {
    let mut set = outlets.unsent.lock().unwrap_or_else(|p| p.into_inner());
    if unsent {
        set.insert(hash);
    } else {
        set.remove(&hash);
    }
}
