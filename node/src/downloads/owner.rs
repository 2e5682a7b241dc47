//! The download owner: one task holds the queue and the set of running downloads, admits
//! releases (quota, free disk), starts downloads most severe first, at most
//! `max_concurrent_downloads` at a time, and publishes a [`View`] after every change. Other tasks
//! reach it only through the [`Downloads`](super::handle::Downloads) handle.

use std::sync::Arc;

use lanpatch_protocol::{Event, FailReason, Hash32, ReleaseManifest, Signed};
use tokio::sync::watch;

use super::admission;
use super::handle::{Command, Inbox, View};
use super::release::{self, Outcome};
use crate::clock::{now, now_ms};
use crate::report::ReleaseRef;
use crate::shared::{Shared, release_ref};

/// Runs the owner until shutdown.
pub async fn run(s: Arc<Shared>, inbox: Inbox) {
    let Inbox { mut rx, view } = inbox;
    let mut queue: Vec<Signed<ReleaseManifest>> = Vec::new();
    let mut shutdown = s.shutdown.clone();
    loop {
        let cmd = tokio::select! {
            _ = shutdown.changed() => break,
            c = rx.recv() => c,
        };
        let Some(cmd) = cmd else { break };
        match cmd {
            Command::Consider { manifest, reply } => {
                consider(&s, &view, &mut queue, *manifest).await;
                let _ = reply.send(());
            }
            Command::Progress { hash, progress } => view.send_modify(|v| {
                v.progress.insert(hash, progress);
            }),
            Command::Ended { hash, finished_ms } => view.send_modify(|v| {
                v.running.remove(&hash);
                if let Some(p) = v.progress.get_mut(&hash) {
                    p.finished_ms = finished_ms.or(p.finished_ms);
                }
            }),
        }
        start_ready(&s, &view, &mut queue);
    }
}

/// Admits and queues a release, unless it is queued or running already.
async fn consider(
    s: &Shared,
    view: &watch::Sender<View>,
    queue: &mut Vec<Signed<ReleaseManifest>>,
    m: Signed<ReleaseManifest>,
) {
    let hash = m.payload_hash();
    if view.borrow().running.contains(&hash) || queue.iter().any(|q| q.payload_hash() == hash) {
        return;
    }
    let rel = release_ref(&m);
    let v = m.value();
    if let Err(refused) = admission::admit(s, v).await {
        tracing::warn!(product = %v.product, "not downloading: {}", refused.why);
        record(s, &rel, Event::DownloadFailed(refused.reason), refused.why).await;
        return;
    }
    let total_chunks = v.total_chunks();
    view.send_modify(|x| {
        x.progress.entry(hash).or_default().total_chunks = total_chunks;
        x.queued.insert(hash);
    });
    queue.push(m);
    record(s, &rel, Event::Queue, String::new()).await;
}

/// Starts queued downloads, most severe first, while slots are free.
fn start_ready(s: &Arc<Shared>, view: &watch::Sender<View>, queue: &mut Vec<Signed<ReleaseManifest>>) {
    while view.borrow().running.len() < s.cfg.max_concurrent_downloads {
        let best = queue.iter().enumerate().max_by_key(|(_, m)| m.value().severity.priority_key()).map(|(i, _)| i);
        let Some(m) = best.map(|i| queue.remove(i)) else { break };
        let hash = m.payload_hash();
        view.send_modify(|v| {
            v.queued.remove(&hash);
        });
        if !s.trust().is_current(&hash, now()) {
            // Expired (or dropped) while queued: the sweep records it.
            continue;
        }
        view.send_modify(|v| {
            v.running.insert(hash);
        });
        tokio::spawn(run_one(s.clone(), m));
    }
}

async fn record(s: &Shared, rel: &ReleaseRef, event: Event, detail: String) {
    if let Err(e) = s.lifecycle.apply(rel, event, detail, None).await {
        tracing::error!("cannot record release state: {e:#}");
    }
}

/// One release's download, from `DownloadStarted` to its outcome; tells the owner it ended.
async fn run_one(s: Arc<Shared>, m: Signed<ReleaseManifest>) {
    let hash = m.payload_hash();
    let rel = release_ref(&m);
    record(&s, &rel, Event::DownloadStarted, String::new()).await;
    let files: Vec<Hash32> = m.value().files.iter().map(|f| f.hash).collect();
    let total_bytes = m.value().total_bytes();
    let result = release::download(s.clone(), m).await;
    let finished_ms = matches!(result, Ok(Outcome::Complete { .. })).then(now_ms);
    s.downloads.ended(hash, finished_ms).await;
    match result {
        Ok(Outcome::Complete { announce }) => {
            tracing::info!(manifest = %hash.short(), "release downloaded and verified");
            s.metrics.release_downloaded(total_bytes);
            record(&s, &rel, Event::DownloadFinished, String::new()).await;
            // Other sites (and nodes beyond this one's peers) find it in Kademlia: a couple
            // of holders per site announce it.
            if announce {
                s.net.provide(hash).await;
            }
        }
        Ok(Outcome::Stopped) => {}
        Err(e) => {
            let detail = format!("download failed: {e:#}");
            tracing::error!(manifest = %hash.short(), "{detail}");
            let reason = if crate::library::is_disk_full(&e) {
                // Give the space back; a later download starts over (documented).
                let lib = s.library.clone();
                let discarded =
                    tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| lib.discard_partial(f))).await;
                if let Ok(Err(e)) | Err(e) = discarded.map_err(anyhow::Error::from) {
                    tracing::error!("cannot remove partial files: {e:#}");
                }
                FailReason::DiskFull
            } else {
                FailReason::DownloadError
            };
            record(&s, &rel, Event::DownloadFailed(reason), detail).await;
        }
    }
}
