//! The node service: wires the store, the library, the lifecycle owner, the network, the
//! downloader, the installer, the chunk server and the control socket together.

use lanpatch_protocol::control::RefusalKind;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use lanpatch_protocol::{Event, Hash32, Limits};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Notify, Semaphore, watch};

use crate::clock::now;
use crate::config::Config;
use crate::library::Library;
use crate::net::{self, NetEvent};
use crate::pipeline;
use crate::policy::Facts;
use crate::ratelimit::RateLimiter;
use crate::report::{Reporter, Seq};
use crate::shared::{Shared, release_ref};
use crate::store::Store;
use crate::trust::Trust;

/// Rebuilds the trust state from the provisioned root and the database. Stored metadata is
/// checked again: whatever expired or no longer verifies is left out.
fn load_trust(cfg: &Config, store: &Store, limits: &Limits) -> Result<Trust> {
    let t = now();
    let mut trust = Trust::from_file(&cfg.trust_root, limits.clone(), t)?;
    let mut replay = store.roots()?;
    replay.extend(store.manifests()?);
    replay.extend(store.approvals()?);
    replay.extend(store.yanks()?);
    replay.extend(store.statement()?);
    for bytes in replay {
        if let Err(e) = trust.ingest(&bytes, t) {
            tracing::debug!("stored metadata no longer accepted: {e}");
        }
    }
    // Manifests that expired while the node was down are gone, but their versions still block
    // a rollback to anything older (they were verified when they arrived).
    for (product, version, hash) in store.manifest_versions()? {
        if let Ok(product) = product.parse() {
            trust.remember_version(product, lanpatch_protocol::Version(version), hash);
        }
    }
    Ok(trust)
}

/// With `enrollment = "required"`: loads and checks this node's certificate and the revocation
/// list held, and takes ring, site, tags and hostname from the certificate (a different value in
/// node.toml is named in a warning). With `off`, says loudly what that gives away.
fn enroll(
    cfg: &mut Config,
    trust: &Trust,
    node_key: &ed25519_dalek::SigningKey,
    limits: &Limits,
) -> Result<Option<Arc<crate::membership::Members>>> {
    if cfg.enrollment == crate::config::Enrollment::Off {
        tracing::warn!(
            "enrollment = \"off\": any process holding this fleet's trust root can join, read inventories and reports, and move ring gates; use it only for throwaway test fleets (docs/OPERATIONS.md \"Enrolling nodes\")"
        );
        return Ok(None);
    }
    if !trust.root.value().roles.contains_key(&lanpatch_protocol::Role::Enroll) {
        // A fleet from before enrollment: no certificate can exist yet. Refusing to start here
        // would stop every node that upgrades itself; it runs open and says so at every start.
        tracing::warn!(
            "the fleet's trust root has no enroll role: membership is NOT checked (anyone holding the root can join, read inventories and move ring gates) until the root is rotated to one with an enroll role and this node restarts with a certificate (docs/OPERATIONS.md \"Moving a fleet to enrollment\")"
        );
        return Ok(None);
    }
    let me = lanpatch_protocol::PublicKey(node_key.verifying_key().to_bytes());
    let members = crate::membership::Members::load(
        &cfg.certificate_path(),
        &cfg.data_dir.join(crate::membership::REVOCATIONS_FILE),
        trust.root.value(),
        trust.fleet,
        &me,
        limits.clone(),
        now(),
    )?;
    let cert = members.own();
    if cfg.ring != cert.ring && cfg.ring != crate::config::Config::default_ring() {
        tracing::warn!(config = %cfg.ring, certificate = %cert.ring, "node.toml's ring is ignored: the certificate's ring applies");
    }
    if cfg.site != cert.site && cfg.site != crate::site::default_site() {
        tracing::warn!(config = %cfg.site, certificate = %cert.site, "node.toml's site is ignored: the certificate's site applies");
    }
    if !cfg.tags.is_empty() && cfg.tags != cert.tags {
        tracing::warn!("node.toml's tags are ignored: the certificate's tags apply");
    }
    if cfg.hostname.as_ref().is_some_and(|h| *h != cert.hostname) {
        tracing::warn!(certificate = %cert.hostname, "node.toml's hostname is ignored: the certificate's hostname applies");
    }
    let left = cert.expires.0.saturating_sub(now().0);
    if left < crate::membership::RENEW_WARNING_SECS {
        tracing::warn!(
            expires = %crate::clock::format_time(cert.expires.0),
            "this node's certificate expires in {} h: enroll it again (lanpatch-node join NEW.cert, then reload)",
            left / 3600
        );
    }
    cfg.ring = cert.ring.clone();
    cfg.site = cert.site.clone();
    cfg.tags = cert.tags.clone();
    cfg.hostname = Some(cert.hostname.clone());
    tracing::info!(hostname = %cert.hostname, ring = %cert.ring, site = %cert.site, expires = cert.expires.0, "enrolled");
    Ok(Some(Arc::new(members)))
}

/// Why a node could not start, where the cause is another process: exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("lanpatch-node is already running with data directory {dir} (pid {pid})")]
    AlreadyRunning { dir: String, pid: String },
    #[error("cannot listen on {addr}: the address is already in use")]
    AddressInUse { addr: String },
}

/// Binds `addr` for an HTTP endpoint (metrics, console) at start, so a port in use stops the
/// node with a clear error rather than later. `what` is the config key.
async fn bind_tcp(addr: &str, what: &str) -> Result<tokio::net::TcpListener> {
    let sa: std::net::SocketAddr = addr.parse().with_context(|| format!("bad {what} address {addr:?}"))?;
    tokio::net::TcpListener::bind(sa).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            anyhow::Error::new(StartError::AddressInUse { addr: format!("{sa} ({what})") })
        }
        _ => anyhow::anyhow!("cannot listen on {sa} ({what}): {e}"),
    })
}

/// Takes the data directory's lock for the node's life: one node per data directory. The lock
/// file holds the owner's pid, for the error message of a second start.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim().chars().take(20).collect::<String>();
            return Err(StartError::AlreadyRunning { dir: dir.display().to_string(), pid }.into());
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    f.sync_all()?;
    Ok(f)
}

/// libp2p binds its listeners with SO_REUSEPORT, so a second process could share the port
/// unnoticed. Binding each address first without it makes a port in use an error naming the
/// address. (Two nodes starting in the same instant could still both pass; the data directory
/// lock covers the common case of one config started twice.)
fn check_listen_free(addrs: &[Multiaddr]) -> Result<()> {
    use libp2p::multiaddr::Protocol;
    for addr in addrs {
        let mut ip = None;
        let mut port = None;
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
                Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
                Protocol::Tcp(p) => port = Some(p),
                _ => {}
            }
        }
        if let (Some(ip), Some(port)) = (ip, port)
            && port != 0
        {
            match std::net::TcpListener::bind((ip, port)) {
                Ok(l) => drop(l),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(StartError::AddressInUse { addr: addr.to_string() }.into());
                }
                Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
            }
        }
    }
    Ok(())
}

/// Runs a node until `shutdown` completes.
/// What a SIGHUP may change in a running node: it reloads the config from `config` and applies
/// what is safe to change live (the log filter, upload and download limits); the rest needs a
/// restart, which the log says.
pub struct Reload {
    pub config: std::path::PathBuf,
    /// Replaces the log filter.
    pub set_log_filter: SetLogFilter,
}

/// Replaces the log filter with the one parsed from the given directives.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// The exec of the upgraded executable failed (exit 5: the unit restarts the node).
#[derive(Debug)]
pub struct ExecFailed(pub String);

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExecFailed {}

/// How [`run`] ended.
#[derive(Debug)]
pub enum Exit {
    /// SIGINT or SIGTERM.
    Stopped,
    /// An install replaced the node's executable at this path: exec it.
    Upgraded(std::path::PathBuf),
}

pub async fn run(mut cfg: Config, shutdown: impl Future<Output = ()>, reload: Option<Reload>) -> Result<Exit> {
    let group = cfg.control_socket_group.as_deref().map(crate::control::group_id).transpose()?;
    let dir_mode = if group.is_some() { 0o710 } else { crate::fsmode::DIR };
    crate::fsmode::create_dir(&cfg.data_dir, dir_mode)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    if let Some(n) = crate::listen::raise_descriptor_limit() {
        tracing::debug!("descriptor limit {n}");
    }
    // Whatever the umask or an earlier version left: the data directory is private.
    for fixed in crate::fsmode::secure_data_dir(&cfg.data_dir, dir_mode)? {
        tracing::warn!("file mode fixed: {fixed}");
    }
    if let Some(gid) = group {
        std::os::unix::fs::chown(&cfg.data_dir, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", cfg.data_dir.display()))?;
    }
    let parse_addrs = |list: &[String], what: &str| -> Result<Vec<Multiaddr>> {
        list.iter().map(|a| a.parse::<Multiaddr>().with_context(|| format!("bad {what} address {a:?}"))).collect()
    };
    let listen = parse_addrs(&cfg.listen, "listen")?;
    check_listen_free(&listen)?;
    let limits = Limits::default();
    let store = Store::open(&cfg.data_dir.join("state.db"))?;
    let library = Library::open(&cfg.data_dir, store.clone())?;
    let keypair = crate::membership::load_or_create_identity(&cfg)?;
    let node_key = {
        let ed = keypair.clone().try_into_ed25519().map_err(|e| anyhow!("node key is not ed25519: {e}"))?;
        let secret: [u8; 32] = ed.secret().as_ref().try_into().map_err(|_| anyhow!("node key has a bad length"))?;
        ed25519_dalek::SigningKey::from_bytes(&secret)
    };
    let trust = load_trust(&cfg, &store, &limits)?;
    let fleet = trust.fleet;
    let members = enroll(&mut cfg, &trust, &node_key, &limits)?;
    let timestamp_key = cfg.timestamp_key.as_deref().map(pipeline::load_timestamp_key).transpose()?;
    if trust.has_timestamp_role() {
        tracing::info!(
            max_staleness_secs = cfg.max_staleness_secs,
            "freshness: installs need a fresh timestamp statement"
        );
    } else {
        tracing::warn!(
            "the trust root has no timestamp role: a node cut off from the admin side cannot tell (freeze attacks)"
        );
    }
    let banned_ips = crate::ipguard::BannedIps::default();
    let published = crate::metrics::Published::default();
    let (net, mut net_events, swarm_task) = net::start(net::NetConfig {
        keypair,
        fleet,
        listen,
        static_peers: parse_addrs(&cfg.static_peers, "static peer")?,
        bootstrap_peers: parse_addrs(&cfg.bootstrap_peers, "bootstrap peer")?,
        mdns: cfg.mdns,
        site: cfg.site.clone(),
        relay: cfg.relay,
        reachability: cfg.reachability,
        limits: limits.clone(),
        banned_ips: banned_ips.clone(),
        conn: net::ConnLimits {
            max_established: cfg.max_connections,
            max_pending: cfg.max_pending_connections,
            max_per_peer: cfg.max_connections_per_peer,
            max_per_ip: cfg.max_connections_per_ip,
        },
        published: published.clone(),
        members: members.clone(),
    })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut control = net.control.clone();
    let incoming = control.accept(net.protocol.clone()).map_err(|e| anyhow!("register transfer protocol: {e}"))?;
    let facts = Facts::local(cfg.hostname(), cfg.tags.clone());
    let seq = Seq::starting_after(store.last_seq()?);
    let reporter = Arc::new(Reporter::new(node_key, &facts.hostname, cfg.ring.clone(), limits, seq, members.clone()));
    let inventory_changed = Arc::new(Notify::new());
    let sync = crate::sync::state::Sync::default();
    let lifecycle = crate::lifecycle::start(
        store.clone(),
        reporter.clone(),
        crate::lifecycle::Outlets {
            net: net.clone(),
            store: store.clone(),
            collector: cfg.collector,
            ring: cfg.ring.clone(),
            inventory_changed: inventory_changed.clone(),
            digest_changed: sync.changed.clone(),
            unsent: sync.unsent.clone(),
        },
    )?;
    let refusals = store.refusal_count().await?;
    let control_listener = crate::control::bind(&cfg.control_socket(), group)?;
    let metrics_listener = match cfg.metrics_listen.as_deref() {
        Some(addr) => Some(bind_tcp(addr, "metrics_listen").await?),
        None => None,
    };
    let console_listener = match cfg.console_listen.as_deref() {
        Some(addr) => Some(bind_tcp(addr, "console_listen").await?),
        None => None,
    };
    let console_token = match console_listener {
        Some(_) => Some(crate::console::load_or_create_token(&cfg.console_token())?),
        None => None,
    };
    let (downloads, downloads_inbox) = crate::downloads::handle::channel();
    let shared = Arc::new(Shared {
        facts,
        up_limit: RateLimiter::new(cfg.upload_limit),
        down_limit: RateLimiter::new(cfg.download_limit),
        origin_limit: RateLimiter::new(cfg.origin_limit),
        origins: crate::origin::Origins::new(cfg.origin_redirects)?,
        uploads: Semaphore::new(cfg.max_concurrent_uploads),
        parked: Semaphore::new(crate::serve::MAX_PARKED),
        seeding: Default::default(),
        cfg,
        store,
        library,
        trust: Mutex::new(trust),
        net,
        downloads,
        reporter,
        lifecycle,
        inventory_changed,
        sync,
        metadata_changed: Notify::new(),
        members,
        statement_due: Notify::new(),
        banned: Mutex::default(),
        banned_ips,
        refusal_rate: Mutex::default(),
        refusal_lines: Mutex::default(),
        refusals: AtomicU64::new(refusals),
        metrics: crate::metrics::Metrics::with_published(published),
        exe: crate::selfupdate::Exe::current(),
        restart: Notify::new(),
        metrics_addr: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        console_addr: console_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        shutdown: shutdown_rx.clone(),
    });
    tracing::info!(peer = %shared.net.local, fleet = %fleet.short(), ring = %shared.cfg.ring, "lanpatch-node starting");
    // First: everything below may hand a release to the download owner and wait for its answer.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::downloads::owner::run(shared.clone(), downloads_inbox));
    shared.restore_bans().await?;
    retire_releases(&shared).await;

    tasks.spawn(swarm_task.run(shutdown_rx.clone()));
    tasks.spawn(crate::serve::serve(shared.clone(), incoming));
    tasks.spawn(crate::control::serve(shared.clone(), control_listener));
    if let Some(l) = metrics_listener {
        if let Some(a) = &shared.metrics_addr {
            tracing::info!("metrics on http://{a}/metrics");
        }
        let s = shared.clone();
        tasks.spawn(crate::metrics::serve(move || s.metrics.render(&s.gauges()), l, shutdown_rx.clone()));
    }
    if let (Some(l), Some(token)) = (console_listener, console_token) {
        if let Some(a) = &shared.console_addr {
            tracing::info!("console on http://{a}/ (lanpatch-node console-url prints a link with the token)");
        }
        tasks.spawn(crate::console::serve(shared.clone(), l, token));
    }
    if shared.cfg.collector && shared.cfg.webhook_url.is_some() {
        tasks.spawn(crate::notify::run(shared.clone()));
    }
    tasks.spawn(crate::install::run(shared.clone()));
    tasks.spawn(inventory_loop(shared.clone()));
    tasks.spawn(crate::sync::digest_loop(shared.clone()));
    if let Some(key) = timestamp_key {
        tasks.spawn(pipeline::statement_loop(shared.clone(), key));
    }
    // Start (or resume) downloads of what is already trusted.
    // (Collected first: `consider_download` takes the trust lock itself.)
    let current = shared.trust().current_manifests();
    for m in current {
        pipeline::consider_download(&shared, m).await;
    }
    let s = shared.clone();
    let mut stop = shutdown_rx.clone();
    tasks.spawn(async move {
        let mut resync = tokio::time::interval(Duration::from_secs(15));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = resync.tick() => {
                    expire_metadata(&s).await;
                    ticks += 1;
                    if ticks % 240 == 1 {
                        // Hourly (and at start).
                        prune_reports(&s).await;
                        retire_releases(&s).await;
                    }
                    s.expire_bans().await;
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

    if let Some(r) = reload {
        tasks.spawn(reload_on_sighup(shared.clone(), r));
    }
    // systemd (Type=notify): ready once every listener is bound and the store is open. Without
    // NOTIFY_SOCKET (not under systemd) these are no-ops.
    let status = format!("running; control socket {}", shared.cfg.control_socket().display());
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)])
    {
        tracing::warn!("cannot notify systemd: {e}");
    }
    let mut watchdog_usec = 0;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        let every = Duration::from_micros(watchdog_usec / 2).max(Duration::from_millis(100));
        let mut stop = shutdown_rx.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => { let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]); }
                }
            }
        });
    }

    let exit = tokio::select! {
        _ = shutdown => Exit::Stopped,
        _ = shared.restart.notified() => match &shared.exe {
            Some(exe) => Exit::Upgraded(exe.path.clone()),
            None => Exit::Stopped,
        },
    };
    match &exit {
        Exit::Stopped => {
            tracing::info!("shutting down");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        }
        Exit::Upgraded(path) => {
            tracing::info!("restarting into the upgraded {}", path.display());
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        }
    }
    let _ = shutdown_tx.send(true);
    // A running install gets its grace period, then is killed and recorded as interrupted.
    let limit = Duration::from_secs(shared.cfg.shutdown_grace_secs + 10);
    let _ = tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    let _ = std::fs::remove_file(shared.cfg.control_socket());
    Ok(exit)
}

/// On SIGHUP: reads the config again and applies the log filter and the upload / download
/// limits. A config that does not parse changes nothing (and says why).
async fn reload_on_sighup(s: Arc<Shared>, r: Reload) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP (config reload): {e}");
            return;
        }
    };
    let mut stop = s.shutdown.clone();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let reloaded = match Config::load(&r.config) {
            Ok(new) => {
                s.up_limit.set_rate(new.upload_limit);
                s.down_limit.set_rate(new.download_limit);
                // Said before the new filter applies (which may hide info lines).
                tracing::info!(
                    log = %new.log,
                    upload_limit = new.upload_limit,
                    download_limit = new.download_limit,
                    "SIGHUP: reloaded {}; other settings take effect at the next start",
                    r.config.display()
                );
                if let Err(e) = (r.set_log_filter)(&new.log) {
                    tracing::warn!("SIGHUP: bad log filter {:?}, the old one stays: {e:#}", new.log);
                }
                format!("running; config reloaded at {}", crate::clock::format_time(now().0))
            }
            Err(e) => {
                tracing::error!("SIGHUP: config not reloaded, nothing changed: {e:#}");
                format!(
                    "running; the config reload at {} failed, the old one stays",
                    crate::clock::format_time(now().0)
                )
            }
        };
        // A renewed certificate (`lanpatch-node join`) is taken at once; one that does not
        // verify, or that moves the node, leaves the one in use.
        if let Some(m) = &s.members {
            match m.reload_own(&s.cfg.certificate_path(), &s.node_public(), now()) {
                Ok(c) => {
                    tracing::info!(expires = %crate::clock::format_time(c.expires.0), "SIGHUP: node certificate reloaded")
                }
                Err(e) => tracing::warn!("SIGHUP: node certificate not reloaded, the one in use stays: {e:#}"),
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&reloaded)]);
    }
}

async fn handle_net_event(s: &Arc<Shared>, ev: NetEvent) {
    match ev {
        NetEvent::Gossip { id, source, data } => {
            // Step 1 / N1, once, at the edge; everything after works on the decoded envelope.
            let limits = s.trust().limits.clone();
            let acceptance = match lanpatch_protocol::Envelope::decode(&data, &limits) {
                Err(e) => {
                    s.refuse_peer(source, RefusalKind::Metadata, e.to_string()).await;
                    MessageAcceptance::Reject
                }
                Ok(env) if matches!(env.kind, lanpatch_protocol::Kind::Digest | lanpatch_protocol::Kind::Pull) => {
                    match crate::sync::on_envelope(s, env, &limits).await {
                        Ok(()) => MessageAcceptance::Accept,
                        Err(e) => refuse_node_message(s, source, e).await,
                    }
                }
                Ok(env) if matches!(env.kind, lanpatch_protocol::Kind::Report | lanpatch_protocol::Kind::Inventory) => {
                    let known = |m: &Hash32| s.trust().manifests.contains_key(m);
                    let author = crate::report::Author::Peer { members: s.members.as_deref(), known: &known };
                    match crate::report::accept_node_envelope(&s.store, s.keeps(), &limits, env, &data, author).await {
                        Ok(kept) => {
                            if kept == crate::report::Kept::Stored && !s.cfg.collector {
                                // A report of this node's ring: the rollout rules may decide
                                // differently now.
                                s.metadata_changed.notify_one();
                            }
                            MessageAcceptance::Accept
                        }
                        Err(e) => refuse_node_message(s, source, e).await,
                    }
                }
                Ok(env) if env.kind == lanpatch_protocol::Kind::Revocation => {
                    match pipeline::ingest_revocations(s, env).await {
                        Ok(pipeline::RevocationsTaken::New | pipeline::RevocationsTaken::Held) => {
                            MessageAcceptance::Accept
                        }
                        // A node that does not check membership has nothing to check it with:
                        // it does not pass it on either.
                        Ok(pipeline::RevocationsTaken::NotChecked) => MessageAcceptance::Ignore,
                        Err(e) => refuse_revocations(s, source, e).await,
                    }
                }
                Ok(env) => match pipeline::ingest_envelope(s, env, &data, pipeline::Source::Peer(source)).await {
                    Ok(_) => MessageAcceptance::Accept,
                    Err(_) => MessageAcceptance::Reject,
                },
            };
            s.metrics.gossip(if matches!(acceptance, MessageAcceptance::Accept) {
                crate::metrics::Verdict::Accepted
            } else {
                crate::metrics::Verdict::Refused
            });
            s.net.validation(id, source, acceptance).await;
        }
        NetEvent::PeerReady(peer) => {
            tokio::spawn(catalog_sync(s.clone(), peer));
            // It may be a collector or a ring peer that was away: it learns what it missed from
            // this node's digest. A collector asks everyone once when it joins.
            s.sync.peer_arrived();
            tokio::spawn(crate::sync::send_unsent(s.clone()));
            tokio::spawn(crate::sync::pull_everyone(s.clone()));
        }
        NetEvent::PeerGone(peer) => tracing::info!(%peer, "peer gone"),
        NetEvent::Graylisted { peer, score } => {
            let why = format!("gossip score {score:.0} below the graylist threshold (refused messages)");
            s.ban(peer, why).await;
        }
    }
}

/// A revocation list refused. An older list than the one held (a peer that is behind, gossip out
/// of order) and one signed under enroll keys a root rotation retired are news an honest peer
/// may carry: ignored, and only the rest counts towards the peer's ban.
async fn refuse_revocations(
    s: &Arc<Shared>,
    source: PeerId,
    e: lanpatch_protocol::membership::RevocationError,
) -> MessageAcceptance {
    use lanpatch_protocol::membership::RevocationError;
    match e {
        RevocationError::Older { .. } => MessageAcceptance::Ignore,
        RevocationError::Signature(_) | RevocationError::NoEnrollRole => {
            s.refuse(format!("peer {source}"), RefusalKind::Metadata, format!("revocation list: {e}")).await;
            MessageAcceptance::Ignore
        }
        RevocationError::Malformed(_) | RevocationError::WrongFleet { .. } => {
            s.refuse_peer(source, RefusalKind::Metadata, format!("revocation list: {e}")).await;
            MessageAcceptance::Reject
        }
    }
}

/// A node message refused: a membership refusal that depends on time or news (an expiry, a
/// revocation the forwarder may not hold yet) is ignored; anything else is the forwarder's fault
/// (it forwards only what it accepted) and counts towards its ban.
async fn refuse_node_message(s: &Arc<Shared>, source: PeerId, e: crate::report::NodeMessageError) -> MessageAcceptance {
    let kind = match &e {
        crate::report::NodeMessageError::Member(_) => RefusalKind::Membership,
        crate::report::NodeMessageError::OverBudget(_) => RefusalKind::MemberFlood,
        crate::report::NodeMessageError::Verify(_) => RefusalKind::NodeReport,
        // A replay or a late copy: not forwarded, not worth a line in the refusal log.
        crate::report::NodeMessageError::Stale => {
            tracing::debug!(%source, "stale node message ignored");
            return MessageAcceptance::Ignore;
        }
    };
    if e.is_timing() {
        s.refuse(format!("peer {source}"), kind, e.to_string()).await;
        MessageAcceptance::Ignore
    } else {
        s.refuse_peer(source, kind, e.to_string()).await;
        MessageAcceptance::Reject
    }
}

/// Drops expired metadata from memory; a release that expired before its install ends
/// `Skipped(Expired)`.
/// Deletes reports of retired releases past `report_retention_days` (see the config).
async fn prune_reports(s: &Arc<Shared>) {
    let days = s.cfg.report_retention_days;
    if days == 0 {
        return;
    }
    let before = now().0.saturating_sub(days.saturating_mul(86_400));
    let keep: Vec<Hash32> = s.trust().manifests.keys().copied().collect();
    match s.store.prune_reports(before, keep, s.cfg.collector).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, days, "pruned the reports of retired releases"),
        Err(e) => tracing::warn!("cannot prune reports: {e:#}"),
    }
}

async fn expire_metadata(s: &Arc<Shared>) {
    let gone = s.trust().expire(now());
    if gone.is_empty() {
        return;
    }
    tracing::info!(count = gone.len(), "expired manifests dropped");
    for m in &gone {
        let detail = format!("the manifest expired at {}", m.value().expires.0);
        if let Err(e) = s.lifecycle.apply(&release_ref(m), Event::Expired, detail, None).await {
            tracing::error!("cannot record release state: {e:#}");
        }
    }
    s.metadata_changed.notify_one();
}

/// A release whose manifest left trust (expired) leaves the lifecycle's memory this long after
/// its last transition, once that was an outcome: status still shows a just-expired release, and
/// memory follows what is trusted, not history. Its row and reports stay in the store.
const RETIRE_AFTER_SECS: u64 = 86_400;

/// At start and hourly: see [`RETIRE_AFTER_SECS`].
async fn retire_releases(s: &Arc<Shared>) {
    let keep = s.trust().manifests.keys().copied().collect();
    match s.lifecycle.retire(keep, now().0.saturating_sub(RETIRE_AFTER_SECS)).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(releases = n, "retired releases from memory"),
        Err(e) => tracing::error!("cannot retire releases: {e:#}"),
    }
}

/// Fetches a peer's catalog and ingests every item.
pub async fn catalog_sync(s: Arc<Shared>, peer: PeerId) {
    if s.is_banned(&peer) {
        return;
    }
    match crate::request::catalog(&s.net, peer).await {
        Ok(items) => {
            let limits = s.trust().limits.clone();
            for item in items {
                // Decoded once (step 1): a revocation list goes to membership, the rest through
                // the pipeline, which records a refusal for what does not decode.
                match lanpatch_protocol::Envelope::decode(&item, &limits) {
                    Ok(env) if env.kind == lanpatch_protocol::Kind::Revocation => {
                        if let Err(e) = pipeline::ingest_revocations(&s, env).await {
                            refuse_revocations(&s, peer, e).await;
                        }
                    }
                    Ok(env) => {
                        let _ = pipeline::ingest_envelope(&s, env, &item, pipeline::Source::Peer(peer)).await;
                    }
                    Err(_) => {
                        let _ = pipeline::ingest(&s, &item, pipeline::Source::Peer(peer)).await;
                    }
                }
            }
        }
        Err(e) => tracing::debug!(%peer, "catalog sync failed: {e:#}"),
    }
    if !s.cfg.peer_exchange {
        return;
    }
    if let Ok(peers) = crate::request::peers(&s.net, peer).await {
        for (p, addrs) in peers {
            if !s.is_banned(&p) {
                s.net.dial(p, addrs, peer).await;
            }
        }
    }
}

/// Sends the inventory at start and whenever it changes (an install, the OS packages). It is not
/// re-sent on a timer: the digest (sync.rs) tells a collector that lacks it, which pulls it.
pub async fn inventory_loop(s: Arc<Shared>) {
    let mut shutdown = s.shutdown.clone();
    type Seen = (Vec<lanpatch_protocol::report::InstalledRelease>, blake3::Hash, Option<Vec<String>>);
    let mut last: Option<Seen> = None;
    let mut pulled = false;
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
        let installed = {
            let states = s.lifecycle.snapshot();
            let t = s.trust();
            states
                .iter()
                .filter(|(_, e)| e.state.is_installed())
                .filter_map(|(hash, _)| {
                    let m = t.manifests.get(hash)?;
                    Some(lanpatch_protocol::report::InstalledRelease {
                        product: m.value().product.clone(),
                        version: m.value().version,
                        manifest: *hash,
                    })
                })
                .collect()
        };
        let installed = crate::inventory::sorted_releases(installed);
        // Any change of a package's version, of lanpatch's releases or of the reboot flag.
        let packages_digest = {
            let mut h = blake3::Hasher::new();
            for p in &machine.packages {
                h.update(p.name.as_bytes()).update(b"\0").update(p.version.as_bytes()).update(b"\n");
            }
            h.finalize()
        };
        let key = (installed.clone(), packages_digest, machine.reboot_required.clone());
        if last.as_ref() != Some(&key) || std::mem::take(&mut pulled) {
            let inv = lanpatch_protocol::Inventory {
                node: s.node_public(),
                hostname: s.reporter.hostname.clone(),
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
                agent_version: crate::VERSION.to_string(),
                certificate: None,
                reboot_required: machine.reboot_required,
            };
            match send_inventory(&s, inv).await {
                Ok(()) => last = Some(key),
                Err(e) => tracing::warn!("cannot send inventory: {e:#}"),
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = s.inventory_changed.notified() => {}
            _ = s.sync.inventory_pulled.notified() => pulled = true,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

async fn send_inventory(s: &Arc<Shared>, inv: lanpatch_protocol::Inventory) -> Result<()> {
    let (seq, bytes) = s.reporter.inventory(inv);
    s.store.use_seq(seq).await?;
    s.store.put_inventory_out(seq, bytes.clone()).await?;
    s.sync.changed.notify_one();
    if s.cfg.collector {
        crate::report::accept_node_message(
            &s.store,
            s.keeps(),
            &s.reporter.limits,
            &bytes,
            crate::report::Author::Local,
        )
        .await?;
    }
    s.net.publish(bytes).await
}
