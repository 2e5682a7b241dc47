//! The metadata pipeline: one path for signed metadata from gossip, catalog sync and local
//! `publish` alike. Check against the trust state, store, then act (queue a download, wake the
//! installer).

use lanpatch_protocol::control::RefusalKind;
use std::sync::Arc;

use anyhow::Result;
use lanpatch_protocol::{Envelope, Event, ReleaseManifest, Signed};

use crate::clock::now;
use crate::policy::targets_match;
use crate::shared::{Shared, release_ref};
use crate::trust::{Accepted, Checked};

/// Where a message came from, for its refusal.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// A peer (gossip or catalog sync): refusals count towards its ban.
    Peer(libp2p::PeerId),
    /// `lanpatch-signer publish` on this machine.
    LocalPublish,
}

/// Checks a signed message, stores it, and acts on it. Refusals are recorded with their reason.
pub async fn ingest(s: &Arc<Shared>, bytes: &[u8], source: Source) -> Result<Accepted> {
    let checked = s.trust().check(bytes, now());
    settle(s, checked, bytes, source).await
}

/// [`ingest`] of an envelope the caller decoded from `bytes` (gossip: decoded once, at the edge).
pub async fn ingest_envelope(s: &Arc<Shared>, envelope: Envelope, bytes: &[u8], source: Source) -> Result<Accepted> {
    let checked = s.trust().check_envelope(envelope, bytes, now());
    settle(s, checked, bytes, source).await
}

async fn settle(
    s: &Arc<Shared>,
    checked: Result<Checked, lanpatch_protocol::VerifyError>,
    bytes: &[u8],
    source: Source,
) -> Result<Accepted> {
    match checked {
        Ok(c) => commit(s, c, bytes).await,
        Err(e) => {
            match source {
                Source::Peer(p) => s.refuse_peer(p, RefusalKind::Metadata, e.to_string()).await,
                Source::LocalPublish => s.refuse("local publish".into(), RefusalKind::Metadata, e.to_string()).await,
            }
            Err(e.into())
        }
    }
}

/// What [`ingest_revocations`] did with a list that verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationsTaken {
    /// Newer than the list held: kept, and revoked peers are cut off.
    New,
    /// The list held (or one issued in the same second).
    Held,
    /// This node runs with enrollment off or under a root without an enroll role: it checks no
    /// membership, so it neither keeps nor forwards lists.
    NotChecked,
}

/// A revocation list (gossip, catalog sync or local publish): steps V1 to V4, then kept in the
/// data directory and applied at once (the swarm task cuts off revoked peers).
pub async fn ingest_revocations(
    s: &Arc<Shared>,
    env: Envelope,
) -> Result<RevocationsTaken, lanpatch_protocol::membership::RevocationError> {
    let Some(m) = &s.members else { return Ok(RevocationsTaken::NotChecked) };
    if !m.offer_revocations(env)? {
        return Ok(RevocationsTaken::Held);
    }
    if let Some(bytes) = m.revocations_bytes() {
        let path = s.cfg.data_dir.join(crate::membership::REVOCATIONS_FILE);
        if let Err(e) = crate::fsmode::write_private(&path, &bytes) {
            tracing::error!("cannot keep the revocation list: {e:#}");
        }
    }
    tracing::info!("new revocation list: revoked peers are cut off");
    Ok(RevocationsTaken::New)
}

/// Applies a checked message: memory, database, then follow-up work.
pub async fn commit(s: &Arc<Shared>, checked: Checked, bytes: &[u8]) -> Result<Accepted> {
    let manifest = match &checked {
        Checked::Manifest(m) => Some((**m).clone()),
        _ => None,
    };
    let accepted = s.trust().commit(checked);
    if !accepted.is_new() {
        return Ok(accepted);
    }
    let t = now().0;
    match &accepted {
        Accepted::Root { version, .. } => {
            s.store.put_root(*version, bytes.to_vec(), t).await?;
            // Membership is checked against the enroll keys of the root in force.
            let root = s.trust().root.value().clone();
            if let Some(m) = &s.members {
                m.set_root(root);
            } else if s.cfg.enrollment == crate::config::Enrollment::Required
                && root.roles.contains_key(&lanpatch_protocol::Role::Enroll)
            {
                tracing::warn!(
                    "the rotated trust root has an enroll role: restart this node once its certificate is in place (lanpatch-node join); until then it does not check membership"
                );
            }
        }
        Accepted::Manifest { hash, .. } => {
            if let Some(m) = manifest {
                let v = m.value();
                tracing::info!(product = %v.product, version = %v.version, manifest = %hash.short(), "new release");
                s.store.put_manifest(*hash, v.product.to_string(), v.version.0, bytes.to_vec(), t).await?;
                consider_download(s, m).await;
            }
        }
        Accepted::Approval { manifest, ring, .. } => {
            tracing::info!(manifest = %manifest.short(), %ring, "approval");
            let issued = s.trust().approvals.get(&(*manifest, ring.clone())).map(|a| a.value().issued.0).unwrap_or(t);
            s.store.put_approval(*manifest, ring.to_string(), issued, bytes.to_vec()).await?;
        }
        Accepted::Yank { manifest, .. } => {
            tracing::warn!(manifest = %manifest.short(), "release yanked");
            s.store.put_yank(*manifest, bytes.to_vec()).await?;
            s.statement_due.notify_one();
        }
        Accepted::Statement { issued, .. } => {
            tracing::debug!(issued = issued.0, "timestamp statement");
            s.store.put_statement(issued.0, bytes.to_vec()).await?;
        }
    }
    if matches!(accepted, Accepted::Manifest { .. } | Accepted::Approval { .. } | Accepted::Root { .. }) {
        s.statement_due.notify_one();
    }
    s.metadata_changed.notify_one();
    Ok(accepted)
}

/// Hands `m` to the download owner unless it does not target this node, is yanked, or is past
/// downloading already (its persisted state says so, restarts included). The owner admits it
/// (quota, free disk) and starts queued downloads most severe first.
pub async fn consider_download(s: &Arc<Shared>, m: Signed<ReleaseManifest>) {
    let hash = m.payload_hash();
    let rel = release_ref(&m);
    let v = m.value();
    let state = s.lifecycle.state(&hash);
    // Held whole (published here, downloaded before a restart, or seeded without being targeted):
    // announced in Kademlia, so nodes at other sites or beyond this node's peers find it.
    if s.library.release_bytes_held(&v.files) >= v.total_bytes() {
        s.net.provide(hash).await;
    }
    if state.rank() >= lanpatch_protocol::ReleaseState::Downloaded.rank() {
        return;
    }
    let apply = |event: Event, detail: String| {
        let (s, rel) = (s.clone(), rel.clone());
        async move {
            if let Err(e) = s.lifecycle.apply(&rel, event, detail, None).await {
                tracing::error!("cannot record release state: {e:#}");
            }
        }
    };
    if let Err(why) = targets_match(&v.targets, &s.facts) {
        tracing::info!(product = %v.product, version = %v.version, "not for this node: {why}");
        apply(Event::NotTargeted, why).await;
        return;
    }
    if s.trust().yanks.contains_key(&hash) {
        let has_rollback = v.installer.can_roll_back();
        apply(Event::Yanked { rollback: false, has_rollback }, "release was yanked".into()).await;
        return;
    }
    if let Some(why) = no_package_here(v).await {
        tracing::info!(product = %v.product, version = %v.version, "not for this node: {why}");
        apply(Event::NotTargeted, why).await;
        return;
    }
    // Admission (quota, free disk) and the queue belong to the download owner.
    if let Err(e) = s.downloads.consider(m).await {
        tracing::error!("cannot queue the download: {e:#}");
    }
}

/// A Debian release that only upgrades packages, on a host that has none of them: not
/// downloaded. (Looked at again, with the host's packages of that moment, before an install.)
async fn no_package_here(v: &lanpatch_protocol::ReleaseManifest) -> Option<String> {
    let lanpatch_protocol::Installer::Debian(d) = &v.installer else { return None };
    if d.add_new {
        return None;
    }
    let (host, native) = match crate::debian::host().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("cannot read dpkg's database; downloading the Debian release anyway: {e:#}");
            return None;
        }
    };
    (crate::debian::plan(d, &host, &native) == crate::debian::Plan::NotHere)
        .then(|| "none of the release's Debian packages is installed here".to_string())
}

/// On the node holding the online timestamp key: signs a statement of the current set every
/// `statement_interval_secs`, and at once (after a short settle) when metadata changed, takes
/// it itself and gossips it.
pub async fn statement_loop(s: Arc<Shared>, key: ed25519_dalek::SigningKey) {
    let mut shutdown = s.shutdown.clone();
    let mut last_issued = 0u64;
    let interval = std::time::Duration::from_secs(s.cfg.statement_interval_secs);
    loop {
        let t = now();
        let issued = t.0.max(last_issued + 1);
        last_issued = issued;
        // One lock for both reads (two `s.trust()` temporaries in one expression would deadlock).
        let (fleet, current) = {
            let tr = s.trust();
            (tr.fleet, tr.current_set(t))
        };
        let value = lanpatch_protocol::Statement {
            fleet,
            issued: lanpatch_protocol::Timestamp(issued),
            expires: lanpatch_protocol::Timestamp(issued + s.cfg.statement_lifetime_secs),
            current,
        };
        let mut signed = Signed::new(value);
        signed.sign(&key);
        let bytes = signed.to_bytes();
        match ingest(&s, &bytes, Source::LocalPublish).await {
            Ok(_) => {
                if let Err(e) = s.net.publish(bytes).await {
                    tracing::warn!("cannot gossip the timestamp statement: {e:#}");
                }
            }
            Err(e) => {
                tracing::error!("own timestamp statement refused (is the key in the root's timestamp role?): {e:#}")
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = s.statement_due.notified() => {
                // Let a burst of metadata (manifest, approvals, yank) land first.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }
    }
}

/// Loads the online timestamp key; refuses a key file others may read.
pub fn load_timestamp_key(path: &std::path::Path) -> Result<ed25519_dalek::SigningKey> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read timestamp key {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!("timestamp key {} has mode {mode:03o}: others can read it; chmod 600 it", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read timestamp key {}", path.display()))?;
    let seed = lanpatch_protocol::keyfile::parse_secret(&text).with_context(|| format!("{}", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}
