//! The local control socket: `status`, `publish` and (for tests) raw gossip. One JSON request
//! per line, one JSON response per line.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use lanpatch_protocol::bundle::BundleLayout;
use lanpatch_protocol::control::{
    ControlRequest, ControlResponse, ErrorKind, NodeStatus, PeerStatus, PublishMode, Refusal, ReleaseStatus, Transfer,
};
use lanpatch_protocol::{Approval, ReleaseManifest, ReleaseState, Signed, Yank};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::clock::now;
use crate::config::RawGossip;
use crate::pipeline;
use crate::shared::Shared;
use crate::trust::Checked;

/// A control request that failed for a reason the client can act on.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Failure {
    kind: ErrorKind,
    message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    Failure { kind, message: message.into() }.into()
}

/// Largest request line (a raw-gossip request carries one hex envelope).
const MAX_LINE: u64 = 4 * 1024 * 1024;

/// Binds the control socket with its final mode before anyone can reach it: it is made in a
/// fresh private directory, given its mode (0600, or 0660 and `group`), then renamed into place.
/// The caller holds the data directory's lock, so a socket found at `path` was left by a node
/// that died: it is replaced.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join(format!(".control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    crate::fsmode::create_dir(&private, 0o700)?;
    let tmp = private.join("control.sock");
    let result = (|| -> Result<UnixListener> {
        let l = UnixListener::bind(&tmp).with_context(|| format!("cannot bind control socket {}", tmp.display()))?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move the control socket to {}", path.display()))?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// A group given by name (looked up in /etc/group) or number.
pub fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("control_socket_group {group:?} is not a group on this machine"))
}

/// Requests handled at once; further clients wait in the socket's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request line, and to take the answer.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(s: Arc<Shared>, listener: UnixListener) {
    let mut shutdown = s.shutdown.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = crate::listen::stopped(&mut shutdown) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let conn = tokio::select! {
            _ = crate::listen::stopped(&mut shutdown) => break,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let s = s.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = handle(&s, stream).await {
                        tracing::debug!("control connection: {e:#}");
                    }
                });
            }
            Err(e) => crate::listen::accept_failed("control socket", &e).await,
        }
    }
}

async fn handle(s: &Arc<Shared>, stream: UnixStream) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(IO_TIMEOUT, BufReader::new(r).take(MAX_LINE).read_line(&mut line))
        .await
        .context("no request line within 10 s")??;
    let resp = match serde_json::from_str::<ControlRequest>(&line) {
        Ok(req) => match respond(s, req).await {
            Ok(r) => r,
            Err(e) => ControlResponse::Error {
                kind: e.downcast_ref::<Failure>().map(|f| f.kind).unwrap_or_default(),
                message: format!("{e:#}"),
            },
        },
        Err(e) => ControlResponse::Error { kind: ErrorKind::BadRequest, message: format!("bad request: {e}") },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, async {
        w.write_all(&out).await?;
        w.shutdown().await
    })
    .await
    .context("the client did not take the answer within 10 s")??;
    Ok(())
}

pub use crate::fleetview::{fleet_inventories, fleet_reports};

async fn respond(s: &Arc<Shared>, req: ControlRequest) -> Result<ControlResponse> {
    match req {
        ControlRequest::Status => Ok(ControlResponse::Status(Box::new(status(s).await?))),
        ControlRequest::Publish { bundle, mode } => publish(s, Path::new(&bundle), mode).await,
        ControlRequest::Reports => {
            if !s.cfg.collector {
                return Err(fail(
                    ErrorKind::NotCollector,
                    "this node is not a collector (collector = false): it keeps no fleet reports",
                ));
            }
            Ok(ControlResponse::Reports(fleet_reports(s).await?))
        }
        ControlRequest::Inventories => {
            if !s.cfg.collector {
                return Err(fail(
                    ErrorKind::NotCollector,
                    "this node is not a collector (collector = false): it keeps no fleet inventories",
                ));
            }
            Ok(ControlResponse::Inventories(fleet_inventories(s).await?))
        }
        ControlRequest::PublishMetadata { hex } => publish_metadata(s, &hex).await,
        ControlRequest::RawGossip { hex } => {
            if s.cfg.fault_injection.raw_gossip != RawGossip::Allow {
                bail!("raw gossip is refused (fault_injection.raw_gossip is not \"allow\")");
            }
            let bytes = hex::decode(hex.trim()).context("raw gossip must be hex")?;
            // Said when gossip did not send it (no subscribed peer yet), so a test playing an
            // attacker knows its message left.
            if !s.net.publish_sent(bytes).await? {
                bail!("not sent: no peer subscribed yet, or a duplicate within gossip's cache time");
            }
            Ok(ControlResponse::Done)
        }
    }
}

/// One signed envelope from `lanpatch-signer publish --metadata`: verified exactly as from gossip
/// (a revocation list, or any metadata the pipeline takes), kept, and gossiped.
async fn publish_metadata(s: &Arc<Shared>, hex_text: &str) -> Result<ControlResponse> {
    let bytes =
        hex::decode(hex_text.trim()).map_err(|e| fail(ErrorKind::BadRequest, format!("metadata must be hex: {e}")))?;
    let limits = s.trust().limits.clone();
    let env = lanpatch_protocol::Envelope::decode(&bytes, &limits)
        .map_err(|e| fail(ErrorKind::BadRequest, format!("not a signed envelope: {e}")))?;
    if env.kind == lanpatch_protocol::Kind::Revocation {
        if s.members.is_none() {
            return Err(fail(
                ErrorKind::Refused,
                "this node runs with enrollment = \"off\": it does not check membership, so a revocation list means nothing to it",
            ));
        }
        crate::pipeline::ingest_revocations(s, env)
            .await
            .map_err(|e| fail(ErrorKind::Refused, format!("revocation list refused: {e}")))?;
    } else {
        crate::pipeline::ingest(s, &bytes, crate::pipeline::Source::LocalPublish)
            .await
            .map_err(|e| fail(ErrorKind::Refused, format!("metadata refused: {e:#}")))?;
    }
    if let Err(e) = s.net.publish(bytes).await {
        tracing::debug!("metadata not gossiped now (peers get it through catalog sync): {e:#}");
    }
    Ok(ControlResponse::Done)
}

/// Verifies a bundle against this node's trust state, imports its files (verifying every chunk)
/// and gossips its metadata. Nothing is gossiped unless it verified. Metadata goes through the
/// same pipeline as gossip.
async fn publish(s: &Arc<Shared>, dir: &Path, mode: PublishMode) -> Result<ControlResponse> {
    let bundle = BundleLayout::new(dir);
    let cap = s.trust().limits.max_envelope_bytes as u64;
    let manifest_bytes = read_bundle_file(bundle.manifest_path(), cap).await?;
    let checked = s.trust().check(&manifest_bytes, now());
    let checked = match checked {
        Ok(c) => c,
        // A yank of a superseded release: the manifest is not taken again (a newer version is
        // trusted), the yank is.
        Err(lanpatch_protocol::verify::VerifyError::Rollback { .. }) if bundle.yank_path().exists() => {
            return publish_superseded_yank(s, &bundle, &manifest_bytes).await;
        }
        Err(e) => return Err(fail(ErrorKind::Refused, format!("manifest refused: {e}"))),
    };
    let Checked::Manifest(m) = checked else {
        let what = format!("{} does not hold a release manifest", bundle.manifest_path().display());
        return Err(fail(ErrorKind::BadRequest, what));
    };
    let manifest: Signed<ReleaseManifest> = (*m).clone();
    if mode == PublishMode::Seed {
        let lib = s.library.clone();
        let entries = manifest.value().files.clone();
        let b = bundle.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            for f in &entries {
                lib.import(f, &b.file_path(&f.path))?;
            }
            Ok(())
        })
        .await??;
        // This node holds the only copy: send each chunk out once before any twice.
        for f in &manifest.value().files {
            s.seeding.start(f.hash, f.chunks.len());
        }
    } else if manifest.value().origins.is_empty() {
        return Err(fail(
            ErrorKind::BadRequest,
            "a release announced without seeding needs origin URLs in its manifest",
        ));
    }
    pipeline::commit(s, Checked::Manifest(m), &manifest_bytes).await?;
    s.net.publish(manifest_bytes).await?;

    let limits = s.trust().limits.clone();
    let mut approvals = Vec::new();
    if let Ok(entries) = std::fs::read_dir(bundle.approvals_dir()) {
        // One approval per ring: a directory of thousands is not a bundle.
        for e in entries.flatten().take(MAX_BUNDLE_APPROVALS) {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some(BundleLayout::APPROVAL_EXT) {
                continue;
            }
            let bytes = read_bundle_file(path.clone(), cap).await?;
            match pipeline::ingest(s, &bytes, pipeline::Source::LocalPublish).await {
                Ok(_) => {
                    if let Ok(a) = Signed::<Approval>::decode(&bytes, &limits) {
                        approvals.push(a.value().ring.to_string());
                    }
                    s.net.publish(bytes).await?;
                }
                Err(err) => {
                    return Err(fail(ErrorKind::Refused, format!("approval {} refused: {err:#}", path.display())));
                }
            }
        }
    }
    let mut yanked = false;
    let yank = bundle.yank_path();
    if yank.exists() {
        let bytes = read_bundle_file(yank, cap).await?;
        yanked = Signed::<Yank>::decode(&bytes, &limits).is_ok();
        take_yank(s, bytes).await?;
    }
    // The publishing node never installs, so nothing else retires what it published: each
    // publish applies keep_versions to it, as an install does on the other nodes.
    let protect: Vec<_> = manifest.value().files.iter().map(|f| f.hash).collect();
    if let Err(e) = crate::retention::make_room(s, 0, &protect).await {
        tracing::warn!("retention after a publish: {e:#}");
    }
    Ok(published(&manifest, approvals, yanked))
}

/// Approvals read from one bundle at most.
const MAX_BUNDLE_APPROVALS: usize = 256;

/// Reads a file of a bundle a client named, off the async runtime: a regular file, not
/// through a symbolic link, at most `cap` bytes ([`crate::fsmode::read_capped`]).
async fn read_bundle_file(path: std::path::PathBuf, cap: u64) -> Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || crate::fsmode::read_capped(&path, cap))
        .await
        .context("the bundle reader stopped")?
        .map_err(|e| fail(ErrorKind::BadRequest, format!("{e:#}")))
}

/// A bundle's yank through the metadata pipeline, as if it came by gossip, then gossiped.
async fn take_yank(s: &Arc<Shared>, bytes: Vec<u8>) -> Result<()> {
    pipeline::ingest(s, &bytes, pipeline::Source::LocalPublish)
        .await
        .map_err(|e| fail(ErrorKind::Refused, format!("yank refused: {e:#}")))?;
    s.net.publish(bytes).await
}

fn published(manifest: &Signed<ReleaseManifest>, approvals: Vec<String>, yanked: bool) -> ControlResponse {
    let v = manifest.value();
    ControlResponse::Published {
        manifest: manifest.payload_hash().to_hex(),
        product: v.product.to_string(),
        version: v.version.0,
        approvals,
        yanked,
    }
}

/// Publishes the yank of a bundle whose release a newer version superseded: the yank must name
/// the bundle's manifest; it acts where nodes are still at that version.
async fn publish_superseded_yank(
    s: &Arc<Shared>,
    bundle: &BundleLayout,
    manifest_bytes: &[u8],
) -> Result<ControlResponse> {
    let limits = s.trust().limits.clone();
    let manifest = Signed::<ReleaseManifest>::decode(manifest_bytes, &limits)
        .map_err(|e| fail(ErrorKind::BadRequest, format!("not a release manifest: {e}")))?;
    let bytes = read_bundle_file(bundle.yank_path(), limits.max_envelope_bytes as u64).await?;
    let yank = Signed::<Yank>::decode(&bytes, &limits)
        .map_err(|e| fail(ErrorKind::BadRequest, format!("{} is not a yank: {e}", bundle.yank_path().display())))?;
    if yank.value().manifest != manifest.payload_hash() {
        return Err(fail(ErrorKind::BadRequest, "the bundle's yank names another manifest"));
    }
    take_yank(s, bytes).await?;
    Ok(published(&manifest, Vec::new(), true))
}

async fn status(s: &Arc<Shared>) -> Result<NodeStatus> {
    let peers = s
        .net
        .peers()
        .await?
        .into_iter()
        .map(|p| PeerStatus { peer: p.peer.to_string(), addr: p.addr.to_string(), site: p.site.to_string() })
        .collect();
    let listen = s.net.listening().await?.into_iter().map(|a| a.to_string()).collect();
    let progress = s.downloads.progress();
    let states = s.lifecycle.snapshot();
    let releases = {
        let t = s.trust();
        let mut list: Vec<ReleaseStatus> = t
            .manifests
            .iter()
            .map(|(hash, m)| {
                let v = m.value();
                let p = progress.get(hash).cloned().unwrap_or_default();
                let entry = states.get(hash);
                ReleaseStatus {
                    manifest: hash.to_hex(),
                    product: v.product.to_string(),
                    version: v.version.0,
                    label: v.label.clone(),
                    severity: format!("{:?}", v.severity.level).to_lowercase(),
                    state: entry.map(|e| e.state).unwrap_or(ReleaseState::Available),
                    detail: entry.map(|e| e.detail.clone()).unwrap_or_default(),
                    yanked: t.yanks.contains_key(hash),
                    total_bytes: v.total_bytes(),
                    total_chunks: v.total_chunks(),
                    have_chunks: p.have_chunks,
                    resumed_chunks: p.resumed_chunks,
                    fetched_chunks: p.fetched_chunks,
                    from_origin: p.from_origin,
                    from_peers: p.from_peers,
                    bytes_from: p.bytes_from,
                    approved_rings: t.approved_rings(hash).into_iter().map(|r| r.to_string()).collect(),
                    finished_ms: p.finished_ms,
                    wave: t
                        .approvals
                        .get(&(*hash, s.cfg.ring.clone()))
                        .and_then(|a| a.value().rules.as_ref())
                        .map(|r| lanpatch_protocol::rollout::wave_of(&s.node_public(), hash, &r.waves) as u32 + 1),
                }
            })
            .collect();
        list.sort_by(|a, b| (&a.product, a.version).cmp(&(&b.product, b.version)));
        list
    };
    let recent_refusals = s
        .store
        .refusals(20)
        .await?
        .into_iter()
        .map(|(at, source, kind, reason)| Refusal { at, source, kind, reason })
        .collect();
    // Refusals at the door are kept by `Members` (the door runs outside the node's tasks).
    let mut recent_refusals: Vec<Refusal> = recent_refusals;
    if let Some(m) = &s.members {
        recent_refusals.extend(m.recent().into_iter().map(|r| Refusal {
            at: r.at.0,
            source: r.peer,
            kind: lanpatch_protocol::control::RefusalKind::Membership,
            reason: format!("refused at the door ({}): {}", r.reason.as_str(), r.detail),
        }));
        recent_refusals.sort_by_key(|r| std::cmp::Reverse(r.at));
    }
    let transfers = s
        .store
        .transfers()
        .await?
        .into_iter()
        .map(|(peer, bytes_down, bytes_up)| Transfer { peer, bytes_down, bytes_up })
        .collect();
    let banned = s.banned.lock().unwrap_or_else(|p| p.into_inner()).keys().map(|p| p.to_string()).collect();
    let fleet = s.trust().fleet.to_hex();
    let statement = s.trust().statement.as_ref().map(|st| (st.value().issued.0, st.value().expires.0));
    Ok(NodeStatus {
        peer_id: s.net.local.to_string(),
        node_key: s.node_public().to_hex(),
        fleet,
        ring: s.cfg.ring.to_string(),
        hostname: s.facts.hostname.clone(),
        membership: match &s.members {
            Some(m) => lanpatch_protocol::control::Membership::Enrolled {
                expires: m.own().expires.0,
                peers_refused: m.refused_total(),
            },
            None if s.cfg.enrollment == crate::config::Enrollment::Off => lanpatch_protocol::control::Membership::Off,
            None => lanpatch_protocol::control::Membership::NoEnrollRole,
        },
        site: s.cfg.site.to_string(),
        listen,
        peers,
        releases,
        refusals: s.refusals.load(std::sync::atomic::Ordering::Relaxed),
        recent_refusals,
        transfers,
        banned,
        statement,
        metrics: s.metrics_addr.clone(),
        version: crate::VERSION.to_string(),
        console: s.console_addr.clone(),
        disk: {
            let (dir, held) = (s.cfg.data_dir.clone(), s.library.held_by_kind());
            tokio::task::spawn_blocking(move || crate::disk::disk_use(&dir, held)).await?
        },
    })
}

/// Sends one request to a node's control socket and returns its response.
pub async fn request(socket: &Path, req: &ControlRequest) -> Result<ControlResponse> {
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("cannot connect to {} (is the node running?)", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut resp = String::new();
    BufReader::new(stream).take(64 * 1024 * 1024).read_line(&mut resp).await?;
    serde_json::from_str(&resp).with_context(|| format!("bad response from {}", socket.display()))
}
