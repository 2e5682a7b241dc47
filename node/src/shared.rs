//! State shared by the node's tasks, and the handles they reach each other through.

use lanpatch_protocol::control::RefusalKind;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lanpatch_protocol::{ReleaseManifest, Signed};
use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore, watch};

use crate::clock::now;
use crate::config::Config;
use crate::downloads::handle::Downloads;
use crate::library::Library;
use crate::lifecycle::Lifecycle;
use crate::net::NetHandle;
use crate::policy::Facts;
use crate::ratelimit::RateLimiter;
use crate::report::{ReleaseRef, Reporter};
use crate::store::Store;
use crate::trust::Trust;

/// State shared by the node's tasks.
pub struct Shared {
    pub cfg: Config,
    pub facts: Facts,
    pub store: Store,
    pub library: Library,
    pub trust: Mutex<Trust>,
    pub net: NetHandle,
    /// The download owner: queue, running downloads, progress.
    pub downloads: Downloads,
    /// Signs this node's reports and inventories (its libp2p ed25519 identity).
    pub reporter: Arc<Reporter>,
    /// The owner of every release's state.
    pub lifecycle: Lifecycle,
    pub inventory_changed: Arc<Notify>,
    /// Report anti-entropy (sync.rs): digests, pulls, answers.
    pub sync: crate::sync::state::Sync,
    /// Notified when trusted metadata changed (an approval, a yank, a new release): the
    /// installer looks again.
    pub metadata_changed: Notify,
    /// Fleet membership: this node's certificate, the peers admitted at the door, the revocation
    /// list. `None` with `enrollment = "off"`.
    pub members: Option<Arc<crate::membership::Members>>,
    /// Notified when the current set changed: the node holding the timestamp key signs a new
    /// statement at once rather than at its next interval.
    pub statement_due: Notify,
    /// Banned peers and when their ban ends (seconds since the epoch); persisted in the store.
    pub banned: Mutex<HashMap<PeerId, u64>>,
    /// IPs banned for repeat offences (shared with the swarm's IP guard).
    pub banned_ips: crate::ipguard::BannedIps,
    /// Refusals per peer in the current minute (start of the window, count).
    pub refusal_rate: Mutex<HashMap<PeerId, (u64, u32)>>,
    /// Which refusals get a WARN line (see [`RefusalLines`]).
    pub refusal_lines: Mutex<RefusalLines>,
    pub up_limit: RateLimiter,
    pub down_limit: RateLimiter,
    pub origin_limit: RateLimiter,
    pub origins: crate::origin::Origins,
    pub uploads: Semaphore,
    /// Requests for a chunk this node is still fetching, waiting for it (see serve.rs); at most
    /// `serve::MAX_PARKED` at once.
    pub parked: Semaphore,
    /// Releases this node published and is the first to seed (see seeding.rs).
    pub seeding: crate::seeding::Seeding<PeerId>,
    pub refusals: AtomicU64,
    pub metrics: crate::metrics::Metrics,
    /// Where the metrics endpoint listens (`ip:port`), if it is on.
    pub metrics_addr: Option<String>,
    /// Where the web console listens (`ip:port`), if it is on.
    pub console_addr: Option<String>,
    /// The executable the node started from (self-update: see selfupdate.rs).
    pub exe: Option<crate::selfupdate::Exe>,
    /// Notified when an install replaced the node's executable: the node stops and execs it.
    pub restart: Notify,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn trust(&self) -> std::sync::MutexGuard<'_, Trust> {
        self.trust.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The state the metrics gauges show, read now (a directory walk of the data directory:
    /// blocking, cheap).
    pub fn gauges(&self) -> crate::metrics::Gauges {
        let states = self.lifecycle.snapshot();
        let releases = self
            .trust()
            .manifests
            .keys()
            .map(|h| states.get(h).map(|e| e.state).unwrap_or(lanpatch_protocol::ReleaseState::Available))
            .collect();
        crate::metrics::Gauges {
            peers: self.net.ready_peers().len(),
            door_refusals: self.members.as_ref().map(|m| m.refusals()).unwrap_or_default(),
            disk: crate::disk::disk_use(&self.cfg.data_dir, self.library.held_by_kind()),
            releases,
        }
    }

    /// What this node keeps of the fleet's reports.
    pub fn keeps(&self) -> crate::report::Keeps<'_> {
        if self.cfg.collector { crate::report::Keeps::Everything } else { crate::report::Keeps::Ring(&self.cfg.ring) }
    }

    pub fn node_public(&self) -> lanpatch_protocol::PublicKey {
        self.reporter.node_public()
    }
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.lock().unwrap_or_else(|p| p.into_inner()).get(peer).is_some_and(|until| *until > now().0)
    }

    /// Whether a stored report still counts where it is used (rollout rules, the collector's
    /// list): this node's own, or one whose author's certificate, checked again now against the
    /// root and revocation list held (expiry at the report's own time: it was valid when made),
    /// still enrolls it for the ring and host the report names (step N4).
    pub fn report_counts(&self, r: &lanpatch_protocol::Report) -> bool {
        self.members.as_ref().is_none_or(|m| r.node == self.node_public() || m.check_author(r, r.at).is_ok())
    }

    /// Logs, counts and stores a refusal. Every refused message or chunk goes through here.
    pub async fn refuse(&self, source: String, kind: RefusalKind, reason: String) {
        let line = self.refusal_lines.lock().unwrap_or_else(|p| p.into_inner()).warn(&source, kind, now().0);
        match line {
            Some(0) => tracing::warn!(%source, kind = kind.as_str(), %reason, "refused"),
            Some(unlogged) => tracing::warn!(%source, kind = kind.as_str(), %reason, unlogged,
                "refused ({unlogged} more of this kind from this source in the last minute were not logged)"),
            None => tracing::debug!(%source, kind = kind.as_str(), %reason, "refused"),
        }
        self.metrics.refused(kind);
        self.refusals.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.add_refusal(now().0, source, kind, reason, self.cfg.refusal_log_max).await {
            tracing::error!("cannot record refusal: {e:#}");
        }
    }

    /// A refusal caused by a peer: recorded like any other, and a peer over
    /// `ban_refusals_per_minute` is banned.
    pub async fn refuse_peer(&self, peer: PeerId, kind: RefusalKind, reason: String) {
        if self.is_banned(&peer) {
            return;
        }
        self.refuse(format!("peer {peer}"), kind, reason).await;
        let t = now().0;
        let over = {
            let mut rates = self.refusal_rate.lock().unwrap_or_else(|p| p.into_inner());
            let e = rates.entry(peer).or_insert((t, 0));
            if t >= e.0 + 60 {
                *e = (t, 0);
            }
            e.1 += 1;
            e.1 > self.cfg.ban_refusals_per_minute
        };
        if over {
            let why = format!("more than {} refusals in a minute", self.cfg.ban_refusals_per_minute);
            self.ban(peer, why).await;
        }
    }

    /// Bans a peer for `ban_secs` (longer for each repeat), persisted; when `ban_ip_after`
    /// different peer ids from one IP were banned within a day, the IP too.
    pub async fn ban(&self, peer: PeerId, reason: String) {
        if self.is_banned(&peer) {
            return;
        }
        let t = now().0;
        let ip =
            self.net.peers().await.ok().and_then(|list| {
                list.into_iter().find(|p| p.peer == peer).and_then(|p| crate::ipguard::ip_of(&p.addr))
            });
        let ban = match self
            .store
            .put_ban(peer.to_string(), ip.map(|i| i.to_string()), t, self.cfg.ban_secs, reason.clone())
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot record ban: {e:#}");
                crate::store::Ban {
                    peer: peer.to_string(),
                    ip: None,
                    until: t + self.cfg.ban_secs,
                    strikes: 1,
                    ip_banned: false,
                }
            }
        };
        self.banned.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, ban.until);
        let mut ban_ip = None;
        if let Some(ip) = ip
            && self.cfg.ban_ip_after > 0
            && self.store.bans_from_ip(ip.to_string(), t.saturating_sub(86_400)).await.unwrap_or(0)
                >= self.cfg.ban_ip_after
        {
            ban_ip = Some(ip);
            self.banned_ips.insert(ip);
            let _ = self.store.set_ip_banned(peer.to_string()).await;
        }
        let what = match ban_ip {
            Some(ip) => format!("{reason}; banned until {} (strike {}), and its IP {ip}", ban.until, ban.strikes),
            None => format!("{reason}; banned until {} (strike {})", ban.until, ban.strikes),
        };
        self.metrics.banned();
        self.refuse(format!("peer {peer}"), RefusalKind::PeerBanned, what).await;
        self.net.ban(peer, ban_ip).await;
    }

    /// Restores the bans in force from the store (at start).
    pub async fn restore_bans(&self) -> anyhow::Result<()> {
        for b in self.store.active_bans(now().0).await? {
            let Ok(peer) = b.peer.parse::<PeerId>() else { continue };
            let ip = if b.ip_banned { b.ip.as_deref().and_then(|i| i.parse().ok()) } else { None };
            if let Some(ip) = ip {
                self.banned_ips.insert(ip);
            }
            self.banned.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, b.until);
            self.net.ban(peer, ip).await;
        }
        Ok(())
    }

    /// Lifts bans that have run out.
    pub async fn expire_bans(&self) {
        let t = now().0;
        let expired: Vec<PeerId> = {
            let mut banned = self.banned.lock().unwrap_or_else(|p| p.into_inner());
            let list: Vec<PeerId> = banned.iter().filter(|(_, u)| **u <= t).map(|(p, _)| *p).collect();
            for p in &list {
                banned.remove(p);
            }
            list
        };
        let ip_bans: Vec<crate::store::Ban> = self.store.active_bans(t).await.unwrap_or_default();
        for p in expired {
            // The IP ban goes with the last active ban that caused it.
            self.net.unban(p, None).await;
        }
        let still: HashSet<std::net::IpAddr> =
            ip_bans.iter().filter(|b| b.ip_banned).filter_map(|b| b.ip.as_deref()?.parse().ok()).collect();
        self.banned_ips.retain(|ip| still.contains(ip));
    }
}

/// What a report about `m` is about.
pub fn release_ref(m: &Signed<ReleaseManifest>) -> ReleaseRef {
    let v = m.value();
    ReleaseRef { hash: m.payload_hash(), product: v.product.clone(), version: v.version }
}

/// Sources with a refusal line on record at once. Past it (entries a minute old are dropped
/// first), refusals from sources not on record share one line per kind a minute.
const REFUSAL_LINE_SOURCES: usize = 4096;
/// The source the refusals of sources not on record are logged under when the table is full.
const OTHER_SOURCES: &str = "(more sources)";

/// At most one WARN line per source and kind of refusal a minute. A member over its message
/// budget, or a hostile peer, otherwise wrote one line per message (650 lines in a minute of the
/// loopback soak). Every refusal is still counted (metrics) and kept in the refusal log; the
/// others are logged at debug, and the next WARN line says how many were not logged.
#[derive(Default)]
pub struct RefusalLines {
    by_source: HashMap<(String, RefusalKind), (u64, u32)>,
}

impl RefusalLines {
    /// Whether a refusal at `t` (seconds) gets a WARN line: `Some(n)`, `n` the refusals of that
    /// source and kind not logged since the last line; `None` when it does not.
    pub fn warn(&mut self, source: &str, kind: RefusalKind, t: u64) -> Option<u32> {
        // Within the minute of the entry's line; a clock stepped back starts a new minute.
        let recent = |at: u64| t >= at && t < at.saturating_add(60);
        let mut key = (source.to_string(), kind);
        if !self.by_source.contains_key(&key) && self.by_source.len() >= REFUSAL_LINE_SOURCES {
            self.by_source.retain(|_, (at, _)| recent(*at));
            if self.by_source.len() >= REFUSAL_LINE_SOURCES {
                key = (OTHER_SOURCES.to_string(), kind);
            }
        }
        match self.by_source.get_mut(&key) {
            Some((at, quiet)) if recent(*at) => {
                *quiet += 1;
                None
            }
            Some(entry) => {
                let unlogged = entry.1;
                *entry = (t, 0);
                Some(unlogged)
            }
            None => {
                self.by_source.insert(key, (t, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod refusal_line_tests {
    use super::*;

    #[test]
    fn one_warn_line_per_source_and_kind_a_minute_and_the_next_says_how_many_were_not_logged() {
        let mut l = RefusalLines::default();
        assert_eq!(l.warn("peer a", RefusalKind::MemberFlood, 100), Some(0));
        for t in 101..150 {
            assert_eq!(l.warn("peer a", RefusalKind::MemberFlood, t), None);
        }
        // Another kind or another source gets its own line.
        assert_eq!(l.warn("peer a", RefusalKind::Metadata, 120), Some(0));
        assert_eq!(l.warn("peer b", RefusalKind::MemberFlood, 120), Some(0));
        // A minute later: a line again, with the count of the quiet ones.
        assert_eq!(l.warn("peer a", RefusalKind::MemberFlood, 160), Some(49));
        assert_eq!(l.warn("peer a", RefusalKind::MemberFlood, 161), None);
        // A clock stepped back does not silence a source.
        assert_eq!(l.warn("peer a", RefusalKind::MemberFlood, 10), Some(1));
        // Many sources within a minute: the table stays bounded, and the sources past it share
        // one line per kind a minute.
        let mut l = RefusalLines::default();
        let mut lines = 0;
        for i in 0..(3 * REFUSAL_LINE_SOURCES) {
            lines += usize::from(l.warn(&format!("peer {i}"), RefusalKind::MemberFlood, 1000).is_some());
        }
        assert_eq!(lines, REFUSAL_LINE_SOURCES + 1);
        assert!(l.by_source.len() <= REFUSAL_LINE_SOURCES + 1);
        // A minute later the old entries make room again.
        assert_eq!(l.warn("peer new", RefusalKind::MemberFlood, 1060), Some(0));
        assert!(l.by_source.contains_key(&("peer new".to_string(), RefusalKind::MemberFlood)));
    }
}
