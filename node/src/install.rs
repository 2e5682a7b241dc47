//! The installer: runs signed install commands for releases that are downloaded, targeted at this
//! node, approved for its ring and due (not-before passed; inside a maintenance window, or urgent,
//! or past the approval's deadline). Rolls back on failure. Every step is a lifecycle event,
//! persisted before the next one starts (`Installing` before the command runs), so an install
//! interrupted by a crash or a shutdown is resolved at the next start.
//!
//! Event-driven: it looks again when a release's state changes, when trusted metadata changes
//! (an approval, a yank), and at the next time that matters (a not-before, a deadline, the next
//! minute while a maintenance window is awaited); never on a fixed poll.
//!
//! Nothing runs that is not part of a manifest that passed verification: the commands come from
//! the signed manifest, and the approval that allows them is itself verified.

use crate::metrics::InstallOutcome;
use std::cmp::Reverse;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{Datelike, Timelike};
use lanpatch_protocol::lifecycle::Effect;
use lanpatch_protocol::rollout;
use lanpatch_protocol::{
    Approval, Command, DebianPackages, Event, FailReason, Hash32, Installer, ReleaseManifest, ReleaseState,
    RollbackCause, Signed, WaitReason, YankAction,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use lanpatch_protocol::statement::statement_allows;

use crate::clock::now;
use crate::debian::{self, lock::FrontendLock};
use crate::policy::{Gate, in_windows, install_gate};
use crate::report::ReleaseRef;
use crate::shared::{Shared, release_ref};

/// Bytes of command output kept for reports.
const TAIL: usize = 2048;

/// The outcome of one command.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The node was stopping: the command ran past the grace period and its group was killed.
    pub interrupted: bool,
    pub tail: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    fn describe(&self, what: &str) -> String {
        let how = match (self.timed_out, self.code) {
            _ if self.interrupted => "was interrupted by the node's shutdown".to_string(),
            (true, _) => "timed out".to_string(),
            (false, Some(c)) => format!("exited with {c}"),
            (false, None) => "could not run".to_string(),
        };
        format!("{what} {how}; output:\n{}", self.tail)
    }
}

async fn read_tail<R: AsyncRead + Unpin>(mut r: R, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        t.extend(&buf[..n]);
        while t.len() > TAIL {
            t.pop_front();
        }
    }
}

/// When the node stops: the shutdown flag and how long a running command may go on after it.
#[derive(Clone)]
pub struct Stop {
    pub flag: watch::Receiver<bool>,
    pub grace: Duration,
}

/// Runs a signed command in `cwd` with a timeout, keeping the tail of its output. On timeout the
/// whole process group is killed. The command gets only `env` (and nothing of the node's own
/// environment).
pub async fn run_command(cmd: &Command, cwd: &Path, env: &[(&str, String)]) -> Outcome {
    run_command_tracked(cmd, cwd, env, None, |_| async {}).await
}

/// [`run_command`], calling `started` with the process (group) id once it runs. With `stop`, a
/// shutdown gives the command `stop.grace` to finish, then kills its whole process group.
pub async fn run_command_tracked<F, Fut>(
    cmd: &Command,
    cwd: &Path,
    env: &[(&str, String)],
    stop: Option<Stop>,
    started: F,
) -> Outcome
where
    F: FnOnce(Option<u32>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some((prog, args)) = cmd.argv.split_first() else {
        return Outcome { code: None, timed_out: false, interrupted: false, tail: "empty command".into() };
    };
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return Outcome {
                code: None,
                timed_out: false,
                interrupted: false,
                tail: format!("cannot start {prog:?}: {e}"),
            };
        }
    };
    started(child.id()).await;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let readers = (child.stdout.take(), child.stderr.take());
    let t1 = readers.0.map(|o| tokio::spawn(read_tail(o, tail.clone())));
    let t2 = readers.1.map(|e| tokio::spawn(read_tail(e, tail.clone())));
    let pid = child.id();
    let limit = tokio::time::sleep(Duration::from_secs(u64::from(cmd.timeout_secs)));
    tokio::pin!(limit);
    let stopping = async {
        match stop {
            Some(mut st) => {
                let _ = st.flag.wait_for(|v| *v).await;
                tokio::time::sleep(st.grace).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(stopping);
    enum End {
        Exited(Option<i32>),
        TimedOut,
        Interrupted,
    }
    let end = tokio::select! {
        r = child.wait() => End::Exited(r.ok().and_then(|st| st.code())),
        _ = &mut limit => End::TimedOut,
        _ = &mut stopping => End::Interrupted,
    };
    let (code, timed_out, interrupted) = match end {
        End::Exited(code) => (code, false, false),
        End::TimedOut | End::Interrupted => {
            // The whole group: an install's children must not outlive it.
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.kill().await;
            (None, matches!(end, End::TimedOut), matches!(end, End::Interrupted))
        }
    };
    for t in [t1, t2].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let bytes: Vec<u8> = tail.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    Outcome { code, timed_out, interrupted, tail: String::from_utf8_lossy(&bytes).into_owned() }
}

/// Kills the process group `pgid` that an install command ran in (it was started with its own
/// group, so its id is the command's pid). Refuses anything that could hit more: ids 0 and 1, and
/// this process's own group.
pub fn kill_group(pgid: u32) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::{Pid, getpgrp};
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 || Pid::from_raw(raw) == getpgrp() {
        return;
    }
    let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
}

fn stage_dir(s: &Shared, manifest: &Hash32) -> PathBuf {
    s.cfg.data_dir.join("stage").join(manifest.to_hex())
}

/// Removes a release's staging copy once its commands are done: every install, rollback or
/// detect stages afresh from the verified blobs, so nothing needs it afterwards, and it would
/// double the release's disk use.
fn clear_stage(s: &Shared, manifest: &Hash32) {
    let dir = stage_dir(s, manifest);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove the staging copy {}: {e}", dir.display()),
    }
}

/// Removes every staging copy (at start, once interrupted installs are resolved: no command runs).
fn clear_all_stages(s: &Shared) {
    let Ok(entries) = std::fs::read_dir(s.cfg.data_dir.join("stage")) else { return };
    for e in entries.flatten() {
        if let Err(err) = std::fs::remove_dir_all(e.path()) {
            tracing::warn!("cannot remove the staging copy {}: {err}", e.path().display());
        }
    }
}

/// A stored file whose bytes no longer match the signed hash.
#[derive(Debug, thiserror::Error)]
#[error("{path}: the stored copy hashes to {actual}, the manifest says {expected}; refusing to run anything from it")]
pub struct Tampered {
    pub path: String,
    pub expected: String,
    pub actual: String,
}

/// Copies the release's verified files into a fresh staging directory (0700), hashing each while
/// it is copied: what runs is exactly what was signed, even if the blob store was touched since
/// the download. Copies, not links: an install script that modifies its files must not touch
/// the blob store.
fn stage(s: &Shared, manifest: &Hash32, m: &ReleaseManifest) -> Result<PathBuf> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = stage_dir(s, manifest);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    crate::fsmode::create_dir(&dir, crate::fsmode::DIR)?;
    for f in &m.files {
        let dst = f.path.components().fold(dir.clone(), |p, c| p.join(c));
        if let Some(parent) = dst.parent() {
            crate::fsmode::create_dir(parent, crate::fsmode::DIR)?;
        }
        let src = s.library.blob_path(&f.hash);
        let mut input = std::fs::File::open(&src).with_context(|| format!("cannot open {}", src.display()))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::fsmode::FILE)
            .open(&dst)
            .with_context(|| format!("cannot create {}", dst.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = input.read(&mut buf).with_context(|| format!("cannot read {}", src.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).with_context(|| format!("cannot stage {}", f.path))?;
        }
        out.sync_all().with_context(|| format!("cannot stage {}", f.path))?;
        let actual: Hash32 = hasher.finalize().into();
        if actual != f.hash {
            return Err(
                Tampered { path: f.path.to_string(), expected: f.hash.to_hex(), actual: actual.to_hex() }.into()
            );
        }
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(if f.executable { 0o755 } else { 0o644 }))?;
    }
    Ok(dir)
}

/// The whole environment of an install, rollback or detect command: a fixed PATH, the node's
/// LANG, and the LANPATCH_* variables, with absolute paths. Nothing else of the node's
/// environment reaches a command.
fn env_for(s: &Shared, m: &ReleaseManifest, stage: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("LANG", std::env::var("LANG").ok().filter(|l| l.len() < 64).unwrap_or_else(|| "C.UTF-8".into())),
        ("LANPATCH_DATA", s.cfg.data_dir.display().to_string()),
        ("LANPATCH_STAGE", stage.display().to_string()),
        ("LANPATCH_HOSTNAME", s.facts.hostname.clone()),
        ("LANPATCH_RING", s.cfg.ring.to_string()),
        ("LANPATCH_PRODUCT", m.product.to_string()),
        ("LANPATCH_VERSION", m.version.to_string()),
        ("LANPATCH_LABEL", m.label.clone()),
    ]
}

/// Applies a lifecycle event; logs (the owner could not persist it) rather than fails.
async fn apply(
    s: &Shared,
    rel: &ReleaseRef,
    event: Event,
    detail: impl Into<String>,
    code: Option<i32>,
) -> Vec<Effect> {
    match s.lifecycle.apply(rel, event, detail, code).await {
        Ok(Some((_, effects))) => effects,
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!(manifest = %rel.hash.short(), "cannot record release state: {e:#}");
            Vec::new()
        }
    }
}

fn stop_of(s: &Shared) -> Stop {
    Stop { flag: s.shutdown.clone(), grace: Duration::from_secs(s.cfg.shutdown_grace_secs) }
}

/// Runs the installer until shutdown.
pub async fn run(s: Arc<Shared>) {
    if let Err(e) = resolve_interrupted(&s).await {
        tracing::error!("cannot resolve interrupted installs: {e:#}");
    }
    clear_all_stages(&s);
    let mut shutdown = s.shutdown.clone();
    let mut changes = s.lifecycle.subscribe();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wake = match pass(&s).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("installer: {e:#}");
                Some(Duration::from_secs(30))
            }
        };
        let sleep = tokio::time::sleep(wake.unwrap_or(Duration::from_secs(3600)));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = changes.changed() => {}
            _ = s.metadata_changed.notified() => {}
            _ = sleep => {}
        }
    }
}

/// The human text beside a `Waiting` state.
fn wait_detail(why: WaitReason, ring: &lanpatch_protocol::RingName) -> String {
    match why {
        WaitReason::NotApproved => format!("waiting for an approval for ring {ring}"),
        WaitReason::NotBefore(nb) => format!("approved, waiting until not-before {}", nb.0),
        WaitReason::OutsideWindow => "approved, waiting for the maintenance window".to_string(),
        WaitReason::ApprovalExpired => format!("the approval for ring {ring} expired; a new one is needed"),
        WaitReason::Stale => {
            "no fresh timestamp statement from the admin side: no install starts (freeze protection)".to_string()
        }
        WaitReason::NotInStatement => {
            "the newest timestamp statement does not list this release as current for this ring".to_string()
        }
        WaitReason::Wave => "approved, waiting for its rollout wave".to_string(),
        WaitReason::TooFewReports => "approved, holding too few reports from its ring to judge the rollout".to_string(),
        WaitReason::PackageManagerBusy => {
            "approved and due, waiting for another package manager to release dpkg's lock".to_string()
        }
    }
}

/// The latest report of each node of this node's ring about `hash`, as stored.
async fn ring_reports(s: &Shared, hash: Hash32) -> Result<Vec<rollout::RingReport>> {
    let limits = s.trust().limits.clone();
    Ok(s.store
        .ring_reports(hash, s.cfg.ring.to_string())
        .await?
        .into_iter()
        .filter_map(|(bytes, received)| {
            let r = Signed::<lanpatch_protocol::Report>::decode(&bytes, &limits).ok()?;
            let v = r.value();
            // Members of this ring only, checked again now (a revoked node stops counting).
            if !s.report_counts(v) {
                return None;
            }
            Some(rollout::RingReport { node: v.node, state: v.state, at: v.at, received })
        })
        .collect())
}

/// What the approval's rollout rules say (halt, wait for a wave or for reports, or go ahead),
/// with the text beside it.
async fn rules_gate(s: &Shared, hash: Hash32, approval: &Approval) -> Result<Option<rollout::WaveGate>> {
    let Some(rules) = &approval.rules else { return Ok(None) };
    let reports = ring_reports(s, hash).await?;
    Ok(Some(rollout::wave_gate(rules, approval.issued, &s.node_public(), &hash, &reports, now().0)))
}

/// Installs that were running (or rolling back) when the node stopped or died: stop what is
/// left of their process group, then ask detect; if it does not say installed, roll back.
async fn resolve_interrupted(s: &Arc<Shared>) -> Result<()> {
    for (hash, entry) in s.lifecycle.snapshot().iter() {
        let resume_rollback = matches!(entry.state, ReleaseState::RollingBack(_));
        if !matches!(entry.state, ReleaseState::Installing | ReleaseState::Interrupted) && !resume_rollback {
            continue;
        }
        let Some(m) = s.trust().manifests.get(hash).cloned() else {
            tracing::warn!(manifest = %hash.short(), "interrupted install of a release no longer trusted");
            continue;
        };
        let rel = release_ref(&m);
        let v = m.value();
        // The install command may have outlived the node: stop what is left of its process group.
        // Only if that group's leader is still our install (its environment names the staging
        // directory), so a reused process id is never hit.
        if let Ok(Some(pid)) = s.store.install_pid(*hash).await {
            let marker = format!("LANPATCH_STAGE={}", stage_dir(s, hash).display());
            let ours = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false);
            if ours {
                kill_group(pid);
            }
        }
        let stage = match stage(s, hash, v) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(product = %v.product, "cannot stage an interrupted install: {e:#}");
                continue;
            }
        };
        if resume_rollback {
            roll_back(s, &rel, v, &stage, "the rollback was interrupted by a restart; ran it again", None, None).await;
            continue;
        }
        tracing::warn!(product = %v.product, version = %v.version, "install was interrupted; resolving");
        if let Some(why) = interrupted_but_installed(s, v, &stage).await {
            apply(s, &rel, Event::InstallSucceeded, why, Some(0)).await;
            continue;
        }
        let effects = apply(
            s,
            &rel,
            Event::InstallFailed { cause: RollbackCause::Interrupted, has_rollback: v.installer.can_roll_back() },
            "install was interrupted (the node stopped during it)",
            None,
        )
        .await;
        if effects.contains(&Effect::RunRollback) {
            roll_back(s, &rel, v, &stage, "install was interrupted; rolled back", None, None).await;
        }
    }
    Ok(())
}

/// After an interrupted install: whether the release is on the host anyway (the detect command
/// exits 0; every Debian package at or above its version with a clean `dpkg --audit`).
async fn interrupted_but_installed(s: &Shared, v: &ReleaseManifest, stage: &Path) -> Option<&'static str> {
    match &v.installer {
        Installer::Commands { detect: Some(detect), .. } => run_command(detect, stage, &env_for(s, v, stage))
            .await
            .ok()
            .then_some("install was interrupted; the detect command says it is installed"),
        Installer::Commands { detect: None, .. } => None,
        Installer::Debian(d) => {
            let (host, native) = debian::host().await.ok()?;
            let at = matches!(debian::plan(d, &host, &native), debian::Plan::AlreadyAt(_));
            (at && debian::audit().await.ok()?.is_empty()).then_some(
                "install was interrupted; every package is at the release's version and dpkg --audit is clean",
            )
        }
    }
}

/// One look at every trusted release, most severe first. Returns when to look again at the
/// latest (a not-before, a deadline, the next minute while awaiting a maintenance window).
async fn pass(s: &Arc<Shared>) -> Result<Option<Duration>> {
    let superseded_again = roll_back_superseded_yanks(s).await?;
    let mut releases: Vec<Signed<ReleaseManifest>> = s.trust().current_manifests();
    releases.sort_by_key(|m| Reverse(m.value().severity.priority_key()));
    let mut wake: Option<u64> = None;
    let mut wake_at = |t: u64| wake = Some(wake.map_or(t, |w| w.min(t)));
    if let Some(again) = superseded_again {
        wake_at(now().0 + again.as_secs());
    }
    for m in releases {
        if *s.shutdown.borrow() {
            break;
        }
        let hash = m.payload_hash();
        let rel = release_ref(&m);
        let v = m.value();
        let state = s.lifecycle.state(&hash);
        let yank = s.trust().yanks.get(&hash).map(|y| (y.value().action, y.value().reason.clone()));
        if state == ReleaseState::Installed {
            if let Some((YankAction::RollBack, reason)) = yank
                && let Some(again) = roll_back_yanked(s, &rel, v, &reason).await?
            {
                wake_at(now().0 + again.as_secs());
            }
            continue;
        }
        if state.retry_kind().is_some() && yank.is_none() {
            if let Some(at) = retry(s, &m, &rel).await {
                wake_at(at);
            }
            continue;
        }
        if state.rank() >= ReleaseState::Installing.rank() {
            continue;
        }
        if let Some((action, reason)) = yank {
            let event =
                Event::Yanked { rollback: action == YankAction::RollBack, has_rollback: v.installer.can_roll_back() };
            apply(s, &rel, event, format!("release was yanked: {reason}"), None).await;
            continue;
        }
        if !matches!(state, ReleaseState::Downloaded | ReleaseState::Waiting(_) | ReleaseState::Halted) {
            continue;
        }
        if v.expires <= now() {
            apply(s, &rel, Event::Expired, format!("the manifest expired at {}", v.expires.0), None).await;
            continue;
        }
        // Freshness (step S6): with a timestamp role, only what the newest fresh statement lists
        // as current for this ring.
        let fresh = {
            let t = s.trust();
            if t.has_timestamp_role() {
                let st = t.statement.as_ref().map(|st| st.value());
                statement_allows(st, &hash, &v.product, &s.cfg.ring, now(), s.cfg.max_staleness_secs)
            } else {
                Ok(())
            }
        };
        if let Err(why) = fresh {
            apply(s, &rel, Event::Wait(why), wait_detail(why, &s.cfg.ring), None).await;
            continue;
        }
        let approval = s.trust().approvals.get(&(hash, s.cfg.ring.clone())).map(|a| a.value().clone());
        let local = chrono::Local::now();
        let in_window =
            in_windows(&s.cfg.windows, local.weekday().num_days_from_monday(), local.hour() * 60 + local.minute());
        let t = now();
        let wait = |why: WaitReason| (why, wait_detail(why, &s.cfg.ring));
        // The approval's rollout rules, once it is in force: a halt holds whatever else is true;
        // a closed wave or too few reports hold until the approval's deadline.
        if let Some(a) = approval.as_ref().filter(|a| a.expires > t && t >= a.not_before)
            && let Some(decision) = rules_gate(s, hash, a).await?
        {
            let past_deadline = a.deadline.is_some_and(|d| t >= d);
            let why = match &decision {
                rollout::WaveGate::Open => None,
                rollout::WaveGate::Halt(_) => {
                    apply(s, &rel, Event::Halt, decision.explain(), None).await;
                    continue;
                }
                rollout::WaveGate::TooFewReports { .. } => Some(WaitReason::TooFewReports),
                rollout::WaveGate::Closed { opens_at, .. } => {
                    if let Some(o) = opens_at {
                        wake_at(*o);
                    }
                    Some(WaitReason::Wave)
                }
            };
            if let Some(why) = why {
                if let Some(d) = a.deadline {
                    wake_at(d.0);
                }
                if !past_deadline {
                    apply(
                        s,
                        &rel,
                        Event::Wait(why),
                        format!("{}: {}", wait_detail(why, &s.cfg.ring), decision.explain()),
                        None,
                    )
                    .await;
                    continue;
                }
                tracing::warn!(manifest = %hash.short(), "past the approval's deadline: installing although {}", decision.explain());
            }
        }
        let waiting = match install_gate(approval.as_ref(), v.urgent, t, in_window) {
            Gate::NotApproved => wait(WaitReason::NotApproved),
            Gate::ApprovalExpired => wait(WaitReason::ApprovalExpired),
            Gate::NotBefore(nb) => {
                wake_at(nb.0);
                wait(WaitReason::NotBefore(nb))
            }
            Gate::OutsideWindow => {
                // Windows have minute resolution; a deadline ends the wait too.
                wake_at(t.0 - t.0 % 60 + 60);
                if let Some(d) = approval.as_ref().and_then(|a| a.deadline) {
                    wake_at(d.0);
                }
                wait(WaitReason::OutsideWindow)
            }
            Gate::Go(reason) => {
                if let Some(retry) = install(s, &rel, v, reason).await? {
                    wake_at(now().0 + retry.as_secs());
                }
                continue;
            }
        };
        apply(s, &rel, Event::Wait(waiting.0), waiting.1, None).await;
    }
    let t = now().0;
    Ok(wake.map(|w| Duration::from_secs(w.saturating_sub(t).max(1))))
}

/// Starts a new attempt at a failed release when its approval for this ring allows it: a
/// transient failure inside the approval's retry rule (at most `count` attempts after the first,
/// each `spacing_secs` after the failure before), or any failure once an approval issued after it
/// arrives (`approve --replace`). Returns when to look again while the spacing runs.
async fn retry(s: &Arc<Shared>, m: &Signed<ReleaseManifest>, rel: &ReleaseRef) -> Option<u64> {
    let entry = s.lifecycle.snapshot().get(&rel.hash).cloned()?;
    let transient = entry.state.retry_kind()?;
    let signed = s.trust().approvals.get(&(rel.hash, s.cfg.ring.clone())).cloned()?;
    let approval = signed.value();
    let t = now().0;
    if approval.expires.0 <= t || m.value().expires.0 <= t {
        return None;
    }
    // An approval issued after the one the failed attempt ran under (recorded when it started;
    // both times are the signer's, and `approve --replace` issues at least a second later) is
    // newer. Only when no attempt recorded one (it failed before the install started) does the
    // failure's time, the node's clock, decide.
    let newer = match s.store.attempt_approval(rel.hash).await {
        Ok(Some(ran_under)) => approval.issued.0 > ran_under,
        Ok(None) => approval.issued.0 > entry.updated,
        Err(e) => {
            tracing::warn!("cannot read the approval of the last attempt: {e:#}");
            false
        }
    };
    let why = if newer {
        format!("a newer approval tries again after: {}", entry.state.label())
    } else {
        let rule = approval.retry.filter(|_| transient)?;
        if entry.attempt >= u32::from(rule.count) {
            return None;
        }
        let due = entry.updated.saturating_add(u64::from(rule.spacing_secs));
        if t < due {
            return Some(due);
        }
        format!("retry {} of {} after: {}", entry.attempt + 1, rule.count, entry.state.label())
    };
    tracing::info!(product = %rel.product, version = %rel.version, "{why}");
    apply(s, rel, Event::Retry, why, None).await;
    record_approval(s, rel.hash, approval.issued.0).await;
    crate::pipeline::consider_download(s, m.clone()).await;
    None
}

/// Installs a due release. Returns when to try again if it had to wait (dpkg's lock was held).
async fn install(s: &Arc<Shared>, rel: &ReleaseRef, v: &ReleaseManifest, reason: &str) -> Result<Option<Duration>> {
    let approval = s.trust().approvals.get(&(rel.hash, s.cfg.ring.clone())).map(|a| a.value().issued.0);
    if let Some(a) = approval {
        record_approval(s, rel.hash, a).await;
    }
    let result = install_staged(s, rel, v, reason).await;
    clear_stage(s, &rel.hash);
    // What the outcome made obsolete (the version before the one now installed, beyond
    // keep_versions) goes now.
    if let Err(e) = crate::retention::make_room(s, 0, &[]).await {
        tracing::warn!("retention: {e:#}");
    }
    if let Err(e) = crate::retention::prune_kept(s).await {
        tracing::warn!("retention of kept packages: {e:#}");
    }
    result
}

/// Records the issue time of the approval an attempt at `manifest` runs under (see [`retry`]).
async fn record_approval(s: &Shared, manifest: Hash32, issued: u64) {
    if let Err(e) = s.store.set_attempt_approval(manifest, issued).await {
        tracing::warn!("cannot record the approval of an install attempt: {e:#}");
    }
}

/// How long a Debian install waits before it looks at dpkg's lock again.
const LOCK_RETRY: Duration = Duration::from_secs(15);

/// What the installer found before a Debian install.
enum Prepared {
    /// An outcome was recorded (already at the version, not on this host, refused).
    Done,
    /// Go: the packages the install replaces are kept (`kept_now`: by this call, not by an
    /// earlier attempt whose rollback did not finish).
    Go { command: Command, kept_now: bool },
}

/// dpkg's lock for a Debian release, taken before anything else is done for it.
enum Locked {
    Held(FrontendLock),
    /// Another package manager holds it: the state says so; look again later.
    Busy,
    /// It could not be tried: recorded as a staging failure.
    Failed,
}

async fn lock_dpkg(s: &Arc<Shared>, rel: &ReleaseRef) -> Locked {
    match debian::lock::try_lock(Path::new(debian::lock::ADMIN_DIR)) {
        Ok(Some(l)) => Locked::Held(l),
        Ok(None) => {
            let why = WaitReason::PackageManagerBusy;
            apply(s, rel, Event::Wait(why), wait_detail(why, &s.cfg.ring), None).await;
            Locked::Busy
        }
        Err(e) => {
            let detail = format!("cannot take dpkg's lock: {e:#}");
            apply(s, rel, Event::StageFailed(FailReason::StageError), detail, None).await;
            Locked::Failed
        }
    }
}

/// Plans a Debian install (dpkg's lock is held), checks that dpkg reports nothing broken and
/// that dependencies are met, and keeps the packages it replaces.
async fn prepare_debian(s: &Arc<Shared>, rel: &ReleaseRef, d: &DebianPackages, stage: &Path) -> Prepared {
    let refuse = |why: FailReason, detail: String| async move {
        apply(s, rel, Event::Refused(why), format!("refused before dpkg ran: {detail}"), None).await;
        Prepared::Done
    };
    let (host, native) = match debian::host().await {
        Ok(h) => h,
        Err(e) => {
            let detail = format!("cannot read dpkg's database: {e:#}");
            apply(s, rel, Event::StageFailed(FailReason::StageError), detail, None).await;
            return Prepared::Done;
        }
    };
    let kept = kept_dir(s, &rel.hash);
    let install = match debian::plan(d, &host, &native) {
        debian::Plan::AlreadyAt(at) => {
            // Nothing of an earlier attempt is left to undo: the host is where the release goes.
            let _ = std::fs::remove_dir_all(&kept);
            apply(s, rel, Event::AlreadyInstalled, format!("already at {}", at.join(", ")), Some(0)).await;
            return Prepared::Done;
        }
        debian::Plan::NotHere => {
            apply(s, rel, Event::NotTargeted, "none of the release's packages is installed here", None).await;
            return Prepared::Done;
        }
        debian::Plan::Install(i) => i,
    };
    match debian::audit().await {
        Ok(report) if report.is_empty() => {}
        Ok(report) => return refuse(FailReason::BrokenPackages, format!("dpkg --audit:\n{report}")).await,
        Err(e) => return refuse(FailReason::BrokenPackages, format!("cannot run dpkg --audit: {e:#}")).await,
    }
    let found = match debian::obstacles(stage, &install, &host).await {
        Ok(o) => o,
        Err(e) => debian::Obstacles {
            missing: vec![format!("cannot read the packages' relations: {e:#}")],
            conflicts: Vec::new(),
        },
    };
    if !found.missing.is_empty() {
        return refuse(FailReason::MissingDependency, found.missing.join("; ")).await;
    }
    if !found.conflicts.is_empty() {
        return refuse(FailReason::Conflicts, found.conflicts.join("; ")).await;
    }
    // An earlier attempt whose rollback did not finish kept the original packages: they stay.
    let kept_now = match debian::load_kept(&kept) {
        Ok(Some(_)) => false,
        _ => {
            if let Err(e) = debian::keep_previous(&kept, &install, &host, &native).await {
                return refuse(FailReason::PreviousNotKept, format!("{e:#}")).await;
            }
            true
        }
    };
    Prepared::Go { command: debian::install_command(stage, &install, d.timeout_secs), kept_now }
}

/// Where the packages a Debian release replaced are kept for its rollback.
fn kept_dir(s: &Shared, manifest: &Hash32) -> PathBuf {
    s.cfg.data_dir.join("kept").join(manifest.to_hex())
}

/// The environment of an install or rollback: dpkg's own for Debian releases.
fn install_env(s: &Shared, v: &ReleaseManifest, stage: &Path) -> Vec<(&'static str, String)> {
    let mut env = env_for(s, v, stage);
    if matches!(v.installer, Installer::Debian(_)) {
        env.extend(debian::dpkg_env().into_iter().filter(|(k, _)| !matches!(*k, "PATH" | "LANG")));
    }
    env
}

/// The metadata must be valid at the moment of use: the manifest, the approval, the statement.
fn still_valid(s: &Shared, hash: &Hash32, v: &ReleaseManifest) -> bool {
    let t = now();
    let approval_valid = s.trust().approvals.get(&(*hash, s.cfg.ring.clone())).is_some_and(|a| a.value().expires > t);
    if v.expires <= t || !approval_valid || !s.trust().is_current(hash, t) {
        tracing::warn!(product = %v.product, version = %v.version, "not installing: metadata expired");
        return false;
    }
    let tr = s.trust();
    let fresh = !tr.has_timestamp_role()
        || statement_allows(
            tr.statement.as_ref().map(|st| st.value()),
            hash,
            &v.product,
            &s.cfg.ring,
            t,
            s.cfg.max_staleness_secs,
        )
        .is_ok();
    if !fresh {
        tracing::warn!(product = %v.product, version = %v.version, "not installing: the timestamp statement went stale");
    }
    fresh
}

async fn install_staged(
    s: &Arc<Shared>,
    rel: &ReleaseRef,
    v: &ReleaseManifest,
    reason: &str,
) -> Result<Option<Duration>> {
    let hash = rel.hash;
    // dpkg's lock first: while another package manager works, nothing is staged.
    let lock = match &v.installer {
        Installer::Debian(_) => match lock_dpkg(s, rel).await {
            Locked::Held(l) => Some(l),
            Locked::Busy => return Ok(Some(LOCK_RETRY)),
            Locked::Failed => return Ok(None),
        },
        Installer::Commands { .. } => None,
    };
    let stage = match stage(s, &hash, v) {
        Ok(d) => d,
        Err(e) => {
            let why = if e.downcast_ref::<Tampered>().is_some() {
                tracing::error!(product = %v.product, version = %v.version, "{e:#}");
                FailReason::Tampered
            } else if crate::library::is_disk_full(&e) {
                FailReason::DiskFull
            } else {
                FailReason::StageError
            };
            let _ = std::fs::remove_dir_all(stage_dir(s, &hash));
            apply(s, rel, Event::StageFailed(why), format!("cannot stage files: {e:#}"), None).await;
            return Ok(None);
        }
    };
    let env = install_env(s, v, &stage);
    let (command, kept_now) = match &v.installer {
        Installer::Commands { install, detect, .. } => {
            if let Some(detect) = detect
                && run_command(detect, &stage, &env).await.ok()
            {
                apply(s, rel, Event::AlreadyInstalled, "already installed (the detect command exited 0)", Some(0))
                    .await;
                return Ok(None);
            }
            (install.clone(), false)
        }
        Installer::Debian(d) => match prepare_debian(s, rel, d, &stage).await {
            Prepared::Done => return Ok(None),
            Prepared::Go { command, kept_now } => (command, kept_now),
        },
    };
    if !still_valid(s, &hash, v) {
        if kept_now {
            // Kept for an install that did not start: a later one keeps afresh.
            let _ = std::fs::remove_dir_all(kept_dir(s, &hash));
        }
        return Ok(None);
    }
    tracing::info!(product = %v.product, version = %v.version, "installing: {reason}");
    // Persisted before the command runs, so a crash mid-install is found at the next start.
    if s.lifecycle.apply(rel, Event::InstallStarted, reason, None).await?.is_none() {
        return Ok(None);
    }
    let store = s.store.clone();
    let began = std::time::Instant::now();
    let mut out = run_command_tracked(&command, &stage, &env, Some(stop_of(s)), |pid| async move {
        if let Err(e) = store.set_install_pid(hash, pid).await {
            tracing::warn!("cannot record install pid: {e:#}");
        }
    })
    .await;
    if lock.is_some() && out.ok() {
        audit_after(&mut out).await;
    }
    finish_install(s, rel, v, &stage, out, began, lock.as_ref()).await;
    Ok(None)
}

/// A Debian install that dpkg reported as done still fails if `dpkg --audit` finds a package in
/// a broken state.
async fn audit_after(out: &mut Outcome) {
    match debian::audit().await {
        Ok(report) if report.is_empty() => {}
        Ok(report) => {
            out.code = Some(1);
            out.tail = format!("{}\ndpkg --audit after the install:\n{report}", out.tail);
        }
        Err(e) => {
            out.code = Some(1);
            out.tail = format!("{}\ncannot run dpkg --audit: {e:#}", out.tail);
        }
    }
}

/// Records an install's outcome, and rolls back a failed one.
async fn finish_install(
    s: &Arc<Shared>,
    rel: &ReleaseRef,
    v: &ReleaseManifest,
    stage: &Path,
    out: Outcome,
    began: std::time::Instant,
    lock: Option<&FrontendLock>,
) {
    let outcome = match () {
        _ if out.interrupted => InstallOutcome::Interrupted,
        _ if out.timed_out => InstallOutcome::TimedOut,
        _ if out.ok() => InstallOutcome::Succeeded,
        _ => InstallOutcome::Failed,
    };
    s.metrics.installed(outcome, began.elapsed());
    if out.ok() {
        apply(s, rel, Event::InstallSucceeded, out.tail, Some(0)).await;
        if let Some(exe) = s.exe.as_ref().filter(|e| e.replaced()) {
            match crate::selfupdate::executable(&exe.path) {
                Ok(()) => {
                    tracing::info!(product = %v.product, version = %v.version, "this install replaced lanpatch-node's executable");
                    s.restart.notify_one();
                }
                // The running node keeps patching; an admin must fix the package.
                Err(why) => tracing::error!(
                    product = %v.product, version = %v.version,
                    "this install replaced lanpatch-node's executable with one that cannot run ({why}): the running node stays"
                ),
            }
        }
        return;
    }
    let failure = out.describe("install");
    tracing::warn!(product = %v.product, version = %v.version, "{failure}");
    if out.interrupted {
        // Resolved at the next start (detect, else rollback); the node is stopping now.
        apply(s, rel, Event::Interrupted, failure, None).await;
        return;
    }
    let cause = if out.timed_out { RollbackCause::TimedOut } else { RollbackCause::InstallFailed };
    let has_rollback = v.installer.can_roll_back();
    let effects = apply(s, rel, Event::InstallFailed { cause, has_rollback }, failure.clone(), out.code).await;
    // While the node stops, the rollback waits for the next start (the state says RollingBack).
    if effects.contains(&Effect::RunRollback) && !*s.shutdown.borrow() {
        roll_back(s, rel, v, stage, &failure, out.code, lock).await;
    }
}

/// Runs the rollback of a release whose state is `RollingBack`, and records the result with
/// `install_code`, the exit code of the install that failed (if one did). `lock`: dpkg's lock,
/// when the caller holds it already.
async fn roll_back(
    s: &Arc<Shared>,
    rel: &ReleaseRef,
    v: &ReleaseManifest,
    stage: &Path,
    why: &str,
    install_code: Option<i32>,
    lock: Option<&FrontendLock>,
) {
    let result = match &v.installer {
        Installer::Commands { rollback: None, .. } => return,
        Installer::Commands { rollback: Some(rb), .. } => {
            let out = run_command_tracked(rb, stage, &env_for(s, v, stage), None, |_| async {}).await;
            if out.ok() { Ok(String::new()) } else { Err(out.describe("rollback")) }
        }
        Installer::Debian(d) => roll_back_debian(s, &rel.hash, v, d, stage, lock).await,
    };
    match result {
        Ok(note) => apply(s, rel, Event::RollbackSucceeded, format!("{why}{note}"), install_code).await,
        Err(e) => apply(s, rel, Event::RollbackFailed, format!("{why}\n{e}"), install_code).await,
    };
}

/// Reinstalls the packages a Debian release replaced and purges the ones it added, holding
/// dpkg's lock (waiting for it up to the release's timeout), then checks `dpkg --audit`. After a
/// yank, only packages still at the release's version are touched: a host that moved on to a
/// newer version keeps it.
async fn roll_back_debian(
    s: &Arc<Shared>,
    hash: &Hash32,
    v: &ReleaseManifest,
    d: &DebianPackages,
    stage: &Path,
    held: Option<&FrontendLock>,
) -> std::result::Result<String, String> {
    let dir = kept_dir(s, hash);
    let mut kept = match debian::load_kept(&dir) {
        Ok(Some(k)) => k,
        // The host was already at the release when it arrived: this node replaced nothing.
        Ok(None) if crate::retention::pruned_marker(&dir).exists() => {
            return Err(format!(
                "the packages it replaced were removed (keep_versions = {}: only the newest installed versions keep theirs); install the version wanted with a new release",
                s.cfg.keep_versions
            ));
        }
        Ok(None) => return Ok("; nothing to undo: the packages were already there when the release arrived".into()),
        Err(e) => return Err(format!("nothing to roll back with: {e:#}")),
    };
    let _own = match held {
        Some(_) => None,
        None => Some(wait_for_lock(s, d.timeout_secs).await?),
    };
    let host = debian::host_packages().await.map_err(|e| format!("{e:#}"))?;
    let moved_on: Vec<String> = d
        .packages
        .iter()
        .filter_map(|p| {
            let h = host.iter().find(|h| h.installed && h.name == p.name)?;
            (lanpatch_protocol::debver::compare(&h.version, &p.version) == Some(std::cmp::Ordering::Greater))
                .then(|| format!("{} {}", h.name, h.version))
        })
        .collect();
    let newer = |name: &str| moved_on.iter().any(|m| m.split(' ').next() == Some(name));
    kept.packages.retain(|k| !newer(&k.name));
    kept.added.retain(|a| !newer(a.split(':').next().unwrap_or(a)));
    for cmd in debian::rollback_commands(&dir, &kept, d.timeout_secs) {
        let out = run_command_tracked(&cmd, stage, &install_env(s, v, stage), None, |_| async {}).await;
        if !out.ok() {
            return Err(out.describe("rollback (dpkg)"));
        }
    }
    let report = debian::audit().await.map_err(|e| format!("{e:#}"))?;
    if !report.is_empty() {
        return Err(format!("dpkg --audit after the rollback:\n{report}"));
    }
    // Done: what was kept for this release has served (a new attempt keeps afresh).
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        tracing::warn!("cannot remove {}: {e}", dir.display());
    }
    let restored: Vec<String> = kept
        .packages
        .iter()
        .map(|k| {
            let from = match k.from {
                debian::KeptFrom::AptCache => "kept from apt's cache",
                debian::KeptFrom::DpkgRepack => "rebuilt by dpkg-repack",
            };
            format!("{} {} ({from})", k.name, k.version)
        })
        .collect();
    let mut note =
        format!("; reinstalled {}", if restored.is_empty() { "nothing".into() } else { restored.join(", ") });
    if !kept.added.is_empty() {
        note.push_str(&format!("; purged {}", kept.added.join(", ")));
    }
    if !moved_on.is_empty() {
        note.push_str(&format!("; left alone (newer now): {}", moved_on.join(", ")));
    }
    Ok(note)
}

/// Waits for dpkg's lock, looking every 2 s, for at most `timeout_secs`.
async fn wait_for_lock(s: &Shared, timeout_secs: u32) -> std::result::Result<FrontendLock, String> {
    let until = std::time::Instant::now() + Duration::from_secs(u64::from(timeout_secs));
    loop {
        match debian::lock::try_lock(Path::new(debian::lock::ADMIN_DIR)) {
            Ok(Some(l)) => return Ok(l),
            Ok(None) if std::time::Instant::now() < until && !*s.shutdown.borrow() => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Ok(None) => return Err(format!("another package manager held dpkg's lock for {timeout_secs} s")),
            Err(e) => return Err(format!("{e:#}")),
        }
    }
}

/// Yanks with `--rollback` of releases that are no longer current (a newer version of the
/// product is trusted): they act where this node is still at that version, that is where the
/// release is installed and no newer version of the product is.
async fn roll_back_superseded_yanks(s: &Arc<Shared>) -> Result<Option<Duration>> {
    let yanked: Vec<(Signed<ReleaseManifest>, String)> = {
        let t = s.trust();
        let current: Vec<Hash32> = t.current_manifests().iter().map(|m| m.payload_hash()).collect();
        t.yanks
            .iter()
            .filter(|(h, y)| y.value().action == YankAction::RollBack && !current.contains(h))
            .filter_map(|(h, y)| Some((t.manifests.get(h)?.clone(), y.value().reason.clone())))
            .collect()
    };
    let snapshot = s.lifecycle.snapshot();
    for (m, reason) in yanked {
        let hash = m.payload_hash();
        if snapshot.get(&hash).map(|e| e.state) != Some(ReleaseState::Installed) {
            continue;
        }
        let v = m.value();
        let newer_installed = snapshot.iter().any(|(h, e)| {
            e.state == ReleaseState::Installed
                && s.trust()
                    .manifests
                    .get(h)
                    .is_some_and(|o| o.value().product == v.product && o.value().version > v.version)
        });
        if newer_installed {
            continue;
        }
        if let Some(again) = roll_back_yanked(s, &release_ref(&m), v, &reason).await? {
            return Ok(Some(again));
        }
    }
    Ok(None)
}

/// Rolls back an installed release that a yank with `--rollback` names. A Debian release waits
/// while another package manager holds dpkg's lock (the state stays `Installed`; returns when to
/// look again), then holds the lock for the whole rollback.
async fn roll_back_yanked(
    s: &Arc<Shared>,
    rel: &ReleaseRef,
    v: &ReleaseManifest,
    reason: &str,
) -> Result<Option<Duration>> {
    let lock = match &v.installer {
        Installer::Debian(_) => match debian::lock::try_lock(Path::new(debian::lock::ADMIN_DIR)) {
            Ok(Some(l)) => Some(l),
            Ok(None) => return Ok(Some(LOCK_RETRY)),
            Err(e) => {
                tracing::warn!(product = %v.product, version = %v.version, "cannot take dpkg's lock for a yank's rollback: {e:#}");
                return Ok(Some(LOCK_RETRY));
            }
        },
        Installer::Commands { .. } => None,
    };
    let can = v.installer.can_roll_back();
    let detail = if can {
        format!("yanked: {reason}")
    } else {
        format!("yanked with rollback ({reason}), but the release has no rollback command")
    };
    let effects = apply(s, rel, Event::Yanked { rollback: true, has_rollback: can }, detail.clone(), None).await;
    if effects.contains(&Effect::RunRollback) && !*s.shutdown.borrow() {
        let stage = stage(s, &rel.hash, v)?;
        roll_back(s, rel, v, &stage, &detail, None, lock.as_ref()).await;
        clear_stage(s, &rel.hash);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str], timeout: u32) -> Command {
        Command { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_secs: timeout }
    }

    #[tokio::test]
    async fn command_output_tail_and_exit_code_are_captured() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_command(&cmd(&["sh", "-c", "echo hello; echo oops >&2; exit 3"], 10), dir.path(), &[]).await;
        assert_eq!(out.code, Some(3));
        assert!(out.tail.contains("hello") && out.tail.contains("oops"), "{}", out.tail);
    }

    #[tokio::test]
    async fn command_running_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let out = run_command(&cmd(&["sh", "-c", "sleep 30"], 1), dir.path(), &[]).await;
        assert!(out.timed_out);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn missing_program_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_command(&cmd(&["/nonexistent/installer"], 5), dir.path(), &[]).await;
        assert!(!out.ok());
        assert!(out.tail.contains("cannot start"), "{}", out.tail);
    }
}
