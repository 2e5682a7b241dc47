//! The node service: wires the store, the library, the network, the downloader, the chunk server
//! and the control socket together, and owns the metadata pipeline (gossip and catalog sync in,
//! verification, storage, download start).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::InstallState;
use lanpatch_protocol::{Hash32, Limits, ReleaseManifest, Signed, Timestamp};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId, identity};
use tokio::sync::{Notify, Semaphore, watch};

use crate::config::Config;
use crate::library::Library;
use crate::net::{self, NetEvent, NetHandle};
use crate::policy::{Facts, targets_match};
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::trust::{Accepted, Checked, Trust};

pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Download progress of one release, for status.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub state: String,
    pub detail: String,
    pub total_chunks: usize,
    pub have_chunks: usize,
    pub resumed_chunks: usize,
    pub fetched_chunks: usize,
    pub bytes_from: BTreeMap<String, u64>,
    /// When the download finished in this process (ms since the epoch).
    pub finished_ms: Option<u64>,
    /// Installer state ("waiting", or an `InstallState`) and why.
    pub install_state: String,
    pub install_detail: String,
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
    /// The node's signing key for reports (its libp2p ed25519 identity).
    pub node_key: ed25519_dalek::SigningKey,
    pub seq: AtomicU64,
    pub inventory_changed: Notify,
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

fn load_or_create_identity(cfg: &Config) -> Result<identity::Keypair> {
    let path = cfg.data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| anyhow!("{} is not a node key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = identity::Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().map_err(|e| anyhow!("encode node key: {e}"))?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(kp)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Rebuilds the trust state from the provisioned root and the database. Stored metadata is
/// checked again: whatever expired or no longer verifies is left out.
fn load_trust(cfg: &Config, store: &Store, limits: &Limits) -> Result<Trust> {
    let first = std::fs::read(&cfg.trust_root)
        .with_context(|| format!("cannot read trust root {}", cfg.trust_root.display()))?;
    let t = now();
    let mut trust = Trust::new(&first, limits.clone(), t)
        .with_context(|| format!("trust root {} refused", cfg.trust_root.display()))?;
    let mut replay = store.roots()?;
    replay.extend(store.manifests()?);
    replay.extend(store.approvals()?);
    replay.extend(store.yanks()?);
    for bytes in replay {
        if let Err(e) = trust.ingest(&bytes, t) {
            tracing::debug!("stored metadata no longer accepted: {e}");
        }
    }
    Ok(trust)
}

/// Runs a node until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let limits = Limits::default();
    let store = Store::open(&cfg.data_dir.join("state.db"))?;
    let library = Library::open(&cfg.data_dir, store.clone())?;
    let keypair = load_or_create_identity(&cfg)?;
    let node_key = {
        let ed = keypair.clone().try_into_ed25519().map_err(|e| anyhow!("node key is not ed25519: {e}"))?;
        let secret: [u8; 32] = ed.secret().as_ref().try_into().map_err(|_| anyhow!("node key has a bad length"))?;
        ed25519_dalek::SigningKey::from_bytes(&secret)
    };
    let trust = load_trust(&cfg, &store, &limits)?;
    let fleet = trust.fleet;
    let parse_addrs = |list: &[String], what: &str| -> Result<Vec<Multiaddr>> {
        list.iter().map(|a| a.parse::<Multiaddr>().with_context(|| format!("bad {what} address {a:?}"))).collect()
    };
    let (net, mut net_events, swarm_task) = net::start(net::NetConfig {
        keypair,
        fleet,
        listen: parse_addrs(&cfg.listen, "listen")?,
        static_peers: parse_addrs(&cfg.static_peers, "static peer")?,
        mdns: cfg.mdns,
        limits,
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut control = net.control.clone();
    let incoming = control.accept(net.protocol.clone()).map_err(|e| anyhow!("register transfer protocol: {e}"))?;
    let shared = Arc::new(Shared {
        facts: Facts::local(cfg.hostname(), cfg.tags.clone()),
        up_limit: RateLimiter::new(cfg.upload_limit),
        down_limit: RateLimiter::new(cfg.download_limit),
        origin_limit: RateLimiter::new(cfg.origin_limit),
        origins: crate::origin::Origins::new()?,
        uploads: Semaphore::new(cfg.max_concurrent_uploads),
        cfg,
        store,
        library,
        trust: Mutex::new(trust),
        net,
        progress: Mutex::default(),
        downloading: Mutex::default(),
        queue: Mutex::default(),
        queue_changed: Notify::new(),
        node_key,
        seq: AtomicU64::new(0),
        inventory_changed: Notify::new(),
        banned: Mutex::default(),
        refusals: AtomicU64::new(0),
        shutdown: shutdown_rx.clone(),
    });
    shared.refusals.store(
        shared
            .store
            .call(|c| Ok(c.query_row("SELECT count(*) FROM refusals", [], |r| r.get::<_, i64>(0))? as u64))
            .await?,
        Ordering::Relaxed,
    );
    tracing::info!(peer = %shared.net.local, fleet = %fleet.short(), ring = %shared.cfg.ring, "lanpatch-node starting");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(swarm_task.run(shutdown_rx.clone()));
    tasks.spawn(crate::serve::serve(shared.clone(), incoming));
    let control_listener = crate::control::bind(&shared.cfg.control_socket())?;
    tasks.spawn(crate::control::serve(shared.clone(), control_listener));
    tasks.spawn(download_manager(shared.clone()));
    tasks.spawn(crate::install::run(shared.clone()));
    tasks.spawn(crate::node::inventory_loop(shared.clone()));
    // Start (or resume) downloads of what is already trusted.
    // (Collected first: `consider_download` takes the trust lock itself.)
    let current = shared.trust().current_manifests();
    for m in current {
        consider_download(&shared, m);
    }
    let s = shared.clone();
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        let mut resync = tokio::time::interval(Duration::from_secs(15));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = resync.tick() => {
                    let s2 = s.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::report::resend_reports(&s2).await {
                            tracing::debug!("resending reports: {e:#}");
                        }
                    });
                    // Anti-entropy: ask one peer for its catalog now and then, in case gossip
                    // was missed.
                    let peers = s.net.ready_peers();
                    if let Some(p) = peers.get((now().0 as usize) % peers.len().max(1)) {
                        tokio::spawn(catalog_sync(s.clone(), *p));
                    }
                }
                ev = net_events.recv() => match ev {
                    Some(ev) => handle_net_event(&s, ev).await,
                    None => break,
                },
            }
        }
    });

    shutdown.await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    let _ = std::fs::remove_file(shared.cfg.control_socket());
    Ok(())
}

async fn handle_net_event(s: &Arc<Shared>, ev: NetEvent) {
    match ev {
        NetEvent::Gossip { id, source, data } => {
            let kind = lanpatch_protocol::Envelope::decode(&data, &s.trust().limits).map(|e| e.kind);
            if let Ok(lanpatch_protocol::Kind::Report | lanpatch_protocol::Kind::Inventory) = kind {
                let acceptance = match crate::report::accept_node_message(s, &data).await {
                    Ok(()) => MessageAcceptance::Accept,
                    Err(e) => {
                        s.refuse(format!("gossip from {source}"), "node-report", e.to_string()).await;
                        MessageAcceptance::Reject
                    }
                };
                s.net.validation(id, source, acceptance).await;
                return;
            }
            let acceptance = match ingest(s, &data, &format!("gossip from {source}")).await {
                Ok(_) => MessageAcceptance::Accept,
                Err(_) => MessageAcceptance::Reject,
            };
            s.net.validation(id, source, acceptance).await;
        }
        NetEvent::PeerReady(peer) => {
            tokio::spawn(catalog_sync(s.clone(), peer));
        }
        NetEvent::PeerGone(peer) => tracing::info!(%peer, "peer gone"),
    }
}

/// Fetches a peer's catalog and ingests every item.
pub async fn catalog_sync(s: Arc<Shared>, peer: PeerId) {
    if s.is_banned(&peer) {
        return;
    }
    match crate::download::request_catalog(&s, peer).await {
        Ok(items) => {
            for item in items {
                let _ = ingest(&s, &item, &format!("catalog from {peer}")).await;
            }
        }
        Err(e) => tracing::debug!(%peer, "catalog sync failed: {e:#}"),
    }
    if !s.cfg.peer_exchange {
        return;
    }
    if let Ok(peers) = crate::download::request_peers(&s, peer).await {
        for (p, addrs) in peers {
            if !s.is_banned(&p) {
                s.net.dial(p, addrs).await;
            }
        }
    }
}

/// Checks a signed message, stores it, and acts on it. Refusals are recorded with their reason.
pub async fn ingest(s: &Arc<Shared>, bytes: &[u8], source: &str) -> Result<Accepted> {
    let checked = s.trust().check(bytes, now());
    match checked {
        Ok(c) => commit(s, c, bytes).await,
        Err(e) => {
            s.refuse(source.to_string(), "metadata", e.to_string()).await;
            Err(e.into())
        }
    }
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
        Accepted::Root { version, .. } => s.store.put_root(*version, bytes.to_vec(), t).await?,
        Accepted::Manifest { hash, .. } => {
            if let Some(m) = manifest {
                let v = m.value();
                tracing::info!(product = %v.product, version = %v.version, manifest = %hash.short(), "new release");
                s.store.put_manifest(*hash, v.product.to_string(), v.version.0, bytes.to_vec(), t).await?;
                consider_download(s, m);
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
            s.store.set_manifest_state(*manifest, "yanked").await?;
            if let Some(p) = s.progress().get_mut(manifest) {
                p.state = "yanked".into();
            }
        }
    }
    Ok(accepted)
}

/// Queues a download of `m` unless it does not target this node, is yanked, or does not fit the
/// cache quota. The download manager starts queued downloads most severe first.
pub fn consider_download(s: &Arc<Shared>, m: Signed<ReleaseManifest>) {
    let hash = m.payload_hash();
    let v = m.value();
    let total_chunks = v.total_chunks();
    let set = |state: &str, detail: String| {
        let mut p = s.progress();
        let e = p.entry(hash).or_insert_with(|| Progress { total_chunks, ..Progress::default() });
        e.state = state.into();
        e.detail = detail;
    };
    if let Err(why) = targets_match(&v.targets, &s.facts) {
        tracing::info!(product = %v.product, version = %v.version, "not for this node: {why}");
        set("not-targeted", why);
        return;
    }
    if s.trust().yanks.contains_key(&hash) {
        set("yanked", String::new());
        return;
    }
    let used = s.library.used_bytes();
    if used.saturating_add(v.total_bytes()) > s.cfg.cache_quota {
        let why = format!("needs {} bytes, cache holds {used} of a {} byte quota", v.total_bytes(), s.cfg.cache_quota);
        tracing::warn!(product = %v.product, "not downloading: {why}");
        set("failed", why);
        return;
    }
    if s.downloading.lock().unwrap_or_else(|p| p.into_inner()).contains(&hash) {
        return;
    }
    let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
    if q.iter().any(|x| x.payload_hash() == hash) {
        return;
    }
    set("queued", String::new());
    q.push(m);
    drop(q);
    s.queue_changed.notify_one();
    let s2 = s.clone();
    tokio::spawn(async move { crate::report::report(&s2, hash, InstallState::Available, String::new(), None).await });
}

/// Starts queued downloads, most severe first, at most `max_concurrent_downloads` at a time.
pub async fn download_manager(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.clone();
    loop {
        loop {
            let running = s.downloading.lock().unwrap_or_else(|p| p.into_inner()).len();
            if running >= s.cfg.max_concurrent_downloads {
                break;
            }
            let next = {
                let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
                let best = q.iter().enumerate().max_by_key(|(_, m)| m.value().severity.priority_key()).map(|(i, _)| i);
                best.map(|i| q.remove(i))
            };
            let Some(m) = next else { break };
            start_download(&s, m);
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = s.queue_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn start_download(s: &Arc<Shared>, m: Signed<ReleaseManifest>) {
    let hash = m.payload_hash();
    if !s.downloading.lock().unwrap_or_else(|p| p.into_inner()).insert(hash) {
        return;
    }
    if let Some(e) = s.progress().get_mut(&hash) {
        e.state = "downloading".into();
    }
    let s2 = s.clone();
    tokio::spawn(async move {
        crate::report::report(&s2, hash, InstallState::Downloading, String::new(), None).await;
        let result = crate::download::download(s2.clone(), m).await;
        s2.downloading.lock().unwrap_or_else(|p| p.into_inner()).remove(&hash);
        s2.queue_changed.notify_one();
        let (state, detail) = match result {
            Ok(crate::download::Outcome::Complete) => ("downloaded", String::new()),
            Ok(crate::download::Outcome::Stopped) => return,
            Err(e) => ("failed", format!("{e:#}")),
        };
        if state == "downloaded" {
            tracing::info!(manifest = %hash.short(), "release downloaded and verified");
        } else {
            tracing::error!(manifest = %hash.short(), "download failed: {detail}");
        }
        let _ = s2.store.set_manifest_state(hash, state).await;
        {
            let mut p = s2.progress();
            if let Some(e) = p.get_mut(&hash) {
                e.state = state.into();
                e.detail = detail.clone();
                e.finished_ms = Some(now_ms());
            }
        }
        if state == "downloaded" {
            crate::report::report(&s2, hash, InstallState::Downloaded, String::new(), None).await;
        } else {
            crate::report::report(&s2, hash, InstallState::Failed, format!("download failed: {detail}"), None).await;
        }
    });
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Sends the inventory at start, whenever an install changes it, and every
/// `inventory_interval_secs`, but only when it differs from the last one sent or the interval passed.
pub async fn inventory_loop(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.clone();
    let mut last: Option<(Vec<lanpatch_protocol::report::InstalledRelease>, usize)> = None;
    let mut last_sent = tokio::time::Instant::now();
    let interval = Duration::from_secs(s.cfg.inventory_interval_secs.max(10));
    // Let connections come up first.
    tokio::select! {
        _ = shutdown.changed() => return,
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    loop {
        let machine = match tokio::task::spawn_blocking(crate::inventory::machine).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("inventory: {e}");
                return;
            }
        };
        let installed = match s.store.installs().await {
            Ok(list) => {
                let t = s.trust();
                list.into_iter()
                    .filter(|r| r.state == InstallState::Installed.as_str())
                    .filter_map(|r| {
                        let m = t.manifests.get(&r.manifest)?;
                        Some(lanpatch_protocol::report::InstalledRelease {
                            product: m.value().product.clone(),
                            version: m.value().version,
                            manifest: r.manifest,
                        })
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let installed = crate::inventory::sorted_releases(installed);
        let key = (installed.clone(), machine.packages.len());
        if last.as_ref() != Some(&key) || last_sent.elapsed() >= interval {
            let inv = lanpatch_protocol::Inventory {
                node: s.node_public(),
                hostname: s.facts.hostname.chars().take(64).collect(),
                os: machine.os,
                os_version: machine.os_version,
                kernel: machine.kernel,
                arch: machine.arch,
                ring: s.cfg.ring.clone(),
                tags: s.cfg.tags.clone(),
                packages: machine.packages,
                releases: installed,
                at: now(),
                seq: 0,
            };
            match crate::report::send_inventory(&s, inv).await {
                Ok(()) => {
                    last = Some(key);
                    last_sent = tokio::time::Instant::now();
                }
                Err(e) => tracing::warn!("cannot send inventory: {e:#}"),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = s.inventory_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}
