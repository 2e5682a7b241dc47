//! Signed reports from this node (install state changes, inventory) and, on a collector, the
//! storage of everyone's reports.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use lanpatch_protocol::report::{FromNode, verify_node_signed};
use lanpatch_protocol::{
    Envelope, Hash32, InstallState, Inventory, Kind, Payload, PublicKey, Report, Signed, VerifyError,
};

use crate::node::{Shared, now};

impl Shared {
    pub fn node_public(&self) -> PublicKey {
        PublicKey(self.node_key.verifying_key().to_bytes())
    }

    /// A sequence number that only goes up, also across restarts (milliseconds since the epoch,
    /// bumped if the clock stands still).
    pub fn next_seq(&self) -> u64 {
        let ms = crate::node::now_ms();
        let mut cur = self.seq.load(Ordering::Relaxed);
        loop {
            let next = ms.max(cur + 1);
            match self.seq.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    fn sign<T: Payload>(&self, value: T) -> Signed<T> {
        let mut s = Signed::new(value);
        s.sign(&self.node_key);
        s
    }
}

/// Records and announces a state change of a release on this node.
pub async fn report(s: &Arc<Shared>, manifest: Hash32, state: InstallState, detail: String, exit_code: Option<i32>) {
    let Some((product, version)) =
        s.trust().manifests.get(&manifest).map(|m| (m.value().product.clone(), m.value().version))
    else {
        return;
    };
    let mut detail = detail;
    let max = s.trust().limits.max_text_bytes;
    if detail.len() > max {
        let cut = detail.len() - max;
        let start = (cut..detail.len()).find(|i| detail.is_char_boundary(*i)).unwrap_or(detail.len());
        detail = detail[start..].to_string();
    }
    let value = Report {
        node: s.node_public(),
        hostname: s.facts.hostname.chars().take(64).collect(),
        ring: s.cfg.ring.clone(),
        manifest,
        product,
        version,
        state,
        detail,
        exit_code,
        at: now(),
        seq: s.next_seq(),
    };
    tracing::info!(manifest = %manifest.short(), state = state.as_str(), "report");
    let bytes = s.sign(value).to_bytes();
    if let Err(e) = send(s, manifest, bytes).await {
        tracing::warn!("cannot send report: {e:#}");
    }
}

async fn send(s: &Arc<Shared>, manifest: Hash32, bytes: Vec<u8>) -> Result<()> {
    s.store.put_report_out(manifest, bytes.clone()).await?;
    if s.cfg.collector {
        accept_node_message(s, &bytes).await?;
    }
    s.net.publish(bytes).await
}

/// Signs and announces this node's inventory.
pub async fn send_inventory(s: &Arc<Shared>, mut inv: Inventory) -> Result<()> {
    inv.seq = s.next_seq();
    let bytes = s.sign(inv).to_bytes();
    if s.cfg.collector {
        accept_node_message(s, &bytes).await?;
    }
    s.net.publish(bytes).await
}

/// Re-sends the latest report of every release, for collectors that were away.
pub async fn resend_reports(s: &Arc<Shared>) -> Result<()> {
    for bytes in s.store.reports_out().await? {
        s.net.publish(bytes).await?;
    }
    Ok(())
}

/// Checks a node report or inventory (steps N1 to N3) and, on a collector, stores it.
pub async fn accept_node_message(s: &Arc<Shared>, bytes: &[u8]) -> Result<(), VerifyError> {
    let limits = s.trust().limits.clone();
    let kind = Envelope::decode(bytes, &limits)?.kind;
    let store = |r: Result<bool>| {
        if let Err(e) = r {
            tracing::error!("cannot store node report: {e:#}");
        }
    };
    match kind {
        Kind::Report => {
            let r = verify_node_signed::<Report>(bytes, &limits)?;
            if s.cfg.collector {
                let v = r.value();
                store(s.store.put_report(v.node().0.to_vec(), v.manifest, v.seq, bytes.to_vec()).await);
            }
        }
        Kind::Inventory => {
            let i = verify_node_signed::<Inventory>(bytes, &limits)?;
            if s.cfg.collector {
                let v = i.value();
                store(s.store.put_inventory(v.node().0.to_vec(), v.seq, bytes.to_vec()).await);
            }
        }
        other => {
            return Err(VerifyError::Signature(lanpatch_protocol::SignatureError::WrongKind {
                expected: Kind::Report,
                actual: other,
            }));
        }
    }
    Ok(())
}
