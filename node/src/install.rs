//! The installer: runs signed install commands for releases that are downloaded, targeted at this
//! node, approved for its ring and due (not-before passed; inside a maintenance window, or urgent,
//! or past the approval's deadline). Rolls back on failure. Every step is recorded in SQLite before
//! and after it runs, so an install interrupted by a crash is resolved at the next start.
//!
//! Nothing runs that is not part of a manifest that passed verification: the commands come from
//! the signed manifest, and the approval that allows them is itself verified.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{Datelike, Timelike};
use lanpatch_protocol::{Command, Hash32, InstallState, ReleaseManifest, Signed, YankAction};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::node::{Shared, now};
use crate::policy::{Gate, in_windows, install_gate, targets_match};
use crate::report::report;

/// Bytes of command output kept for reports.
const TAIL: usize = 2048;

/// The outcome of one command.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub timed_out: bool,
    pub tail: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
    fn describe(&self, what: &str) -> String {
        let how = match (self.timed_out, self.code) {
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

/// Runs a signed command in `cwd` with a timeout, keeping the tail of its output. On timeout the
/// whole process group is killed.
pub async fn run_command(cmd: &Command, cwd: &Path, env: &[(&str, String)]) -> Outcome {
    run_command_tracked(cmd, cwd, env, |_| async {}).await
}

/// [`run_command`], calling `started` with the process (group) id once it runs.
pub async fn run_command_tracked<F, Fut>(cmd: &Command, cwd: &Path, env: &[(&str, String)], started: F) -> Outcome
where
    F: FnOnce(Option<u32>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some((prog, args)) = cmd.argv.split_first() else {
        return Outcome { code: None, timed_out: false, tail: "empty command".into() };
    };
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return Outcome { code: None, timed_out: false, tail: format!("cannot start {prog:?}: {e}") },
    };
    started(child.id()).await;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let readers = (child.stdout.take(), child.stderr.take());
    let t1 = readers.0.map(|o| tokio::spawn(read_tail(o, tail.clone())));
    let t2 = readers.1.map(|e| tokio::spawn(read_tail(e, tail.clone())));
    let waited = tokio::time::timeout(Duration::from_secs(u64::from(cmd.timeout_secs)), child.wait()).await;
    let (code, timed_out) = match waited {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(_)) => (None, false),
        Err(_) => {
            if let Some(pid) = child.id() {
                kill_group(pid);
            }
            let _ = child.kill().await;
            (None, true)
        }
    };
    for t in [t1, t2].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let bytes: Vec<u8> = tail.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    Outcome { code, timed_out, tail: String::from_utf8_lossy(&bytes).into_owned() }
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

/// Copies the release's verified files into a fresh staging directory. Copies, not links: an
/// install script that modifies its files must not touch the blob store.
fn stage(s: &Shared, manifest: &Hash32, m: &ReleaseManifest) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = stage_dir(s, manifest);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    for f in &m.files {
        let dst = f.path.components().fold(dir.clone(), |p, c| p.join(c));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(s.library.blob_path(&f.hash), &dst)
            .with_context(|| format!("cannot stage {} (disk full?)", f.path))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(if f.executable { 0o755 } else { 0o644 }))?;
    }
    Ok(dir)
}

fn env_for(s: &Shared, m: &ReleaseManifest, stage: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("LANPATCH_DATA", s.cfg.data_dir.display().to_string()),
        ("LANPATCH_STAGE", stage.display().to_string()),
        ("LANPATCH_PRODUCT", m.product.to_string()),
        ("LANPATCH_VERSION", m.version.to_string()),
        ("LANPATCH_LABEL", m.label.clone()),
    ]
}

async fn record(
    s: &Arc<Shared>,
    hash: Hash32,
    m: &ReleaseManifest,
    state: InstallState,
    detail: String,
    code: Option<i32>,
) {
    let update = crate::store::InstallUpdate {
        manifest: hash,
        product: m.product.to_string(),
        version: m.version.0,
        state: state.as_str(),
        detail: detail.clone(),
        exit_code: code,
        now: now().0,
    };
    if let Err(e) = s.store.set_install(update).await {
        tracing::error!("cannot record install state: {e:#}");
    }
    {
        let mut p = s.progress();
        let e = p.entry(hash).or_default();
        e.install_state = state.as_str().into();
        e.install_detail = detail.clone();
    }
    report(s, hash, state, detail, code).await;
    if matches!(state, InstallState::Installed | InstallState::RolledBack) {
        s.inventory_changed.notify_one();
    }
}

fn set_waiting(s: &Shared, hash: Hash32, why: String) {
    let mut p = s.progress();
    let e = p.entry(hash).or_default();
    if e.install_state.is_empty() || e.install_state == "waiting" {
        e.install_state = "waiting".into();
        e.install_detail = why;
    }
}

/// Runs the installer until shutdown.
pub async fn run(s: Arc<Shared>) {
    if let Err(e) = resolve_interrupted(&s).await {
        tracing::error!("cannot resolve interrupted installs: {e:#}");
    }
    let mut shutdown = s.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                if let Err(e) = step(&s).await {
                    tracing::error!("installer: {e:#}");
                }
            }
        }
    }
}

/// An install that was running when the node stopped: ask detect, else roll back.
async fn resolve_interrupted(s: &Arc<Shared>) -> Result<()> {
    for rec in s.store.installs().await?.into_iter().filter(|r| r.state == InstallState::Installing.as_str()) {
        let Some(m) = s.trust().manifests.get(&rec.manifest).cloned() else {
            tracing::warn!(manifest = %rec.manifest.short(), "interrupted install of a release no longer trusted");
            continue;
        };
        let v = m.value();
        // The install command may have outlived the node: stop what is left of its process group.
        // Only if that group's leader is still our install (its environment names the staging
        // directory), so a reused process id is never hit.
        if let Ok(Some(pid)) = s.store.install_pid(rec.manifest).await {
            let marker = format!("LANPATCH_STAGE={}", stage_dir(s, &rec.manifest).display());
            let ours = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false);
            if ours {
                kill_group(pid);
            }
        }
        let stage = stage(s, &rec.manifest, v)?;
        let env = env_for(s, v, &stage);
        tracing::warn!(product = %v.product, version = %v.version, "install was interrupted by a restart; resolving");
        if let Some(detect) = &v.detect
            && run_command(detect, &stage, &env).await.ok()
        {
            record(
                s,
                rec.manifest,
                v,
                InstallState::Installed,
                "install was interrupted by a restart; the detect command says it is installed".into(),
                Some(0),
            )
            .await;
            continue;
        }
        match &v.rollback {
            Some(rb) => {
                let out = run_command(rb, &stage, &env).await;
                let (state, detail) = if out.ok() {
                    (InstallState::RolledBack, "install was interrupted by a restart; rolled back".to_string())
                } else {
                    (
                        InstallState::Failed,
                        format!("install was interrupted by a restart; {}", out.describe("rollback")),
                    )
                };
                record(s, rec.manifest, v, state, detail, out.code).await;
            }
            None => {
                record(
                    s,
                    rec.manifest,
                    v,
                    InstallState::Failed,
                    "install was interrupted by a restart and there is no rollback command".into(),
                    None,
                )
                .await
            }
        }
    }
    Ok(())
}

async fn step(s: &Arc<Shared>) -> Result<()> {
    let records: HashMap<Hash32, String> =
        s.store.installs().await?.into_iter().map(|r| (r.manifest, r.state)).collect();
    let mut releases: Vec<Signed<ReleaseManifest>> = s.trust().current_manifests();
    // Most severe first.
    releases.sort_by_key(|m| Reverse(m.value().severity.priority_key()));
    for m in releases {
        let hash = m.payload_hash();
        let v = m.value();
        let state = records.get(&hash).map(String::as_str).unwrap_or("");
        let yank = s.trust().yanks.get(&hash).map(|y| (y.value().action, y.value().reason.clone()));
        if state == InstallState::Installed.as_str() {
            if let Some((YankAction::RollBack, reason)) = yank {
                roll_back_yanked(s, hash, v, &reason).await?;
            }
            continue;
        }
        if !state.is_empty() {
            // failed, rolled-back, skipped: final for this release; a fix is a new version.
            continue;
        }
        if let Some((_, reason)) = yank {
            record(s, hash, v, InstallState::Skipped, format!("release was yanked: {reason}"), None).await;
            continue;
        }
        if let Err(why) = targets_match(&v.targets, &s.facts) {
            record(s, hash, v, InstallState::Skipped, format!("not targeted at this node: {why}"), None).await;
            continue;
        }
        let downloaded = v.files.iter().all(|f| s.library.file(&f.hash).is_some_and(|st| st.complete));
        if !downloaded {
            continue;
        }
        let approval = s.trust().approvals.get(&(hash, s.cfg.ring.clone())).map(|a| a.value().clone());
        let local = chrono::Local::now();
        let in_window =
            in_windows(&s.cfg.windows, local.weekday().num_days_from_monday(), local.hour() * 60 + local.minute());
        match install_gate(approval.as_ref(), v.urgent, now(), in_window) {
            Gate::NotApproved => set_waiting(s, hash, format!("waiting for an approval for ring {}", s.cfg.ring)),
            Gate::NotBefore(t) => set_waiting(s, hash, format!("approved, waiting until not-before {}", t.0)),
            Gate::OutsideWindow => set_waiting(s, hash, "approved, waiting for the maintenance window".into()),
            Gate::Go(reason) => install(s, hash, v, reason).await?,
        }
    }
    Ok(())
}

async fn install(s: &Arc<Shared>, hash: Hash32, v: &ReleaseManifest, reason: &str) -> Result<()> {
    let stage = match stage(s, &hash, v) {
        Ok(d) => d,
        Err(e) => {
            record(s, hash, v, InstallState::Failed, format!("cannot stage files: {e:#}"), None).await;
            return Ok(());
        }
    };
    let env = env_for(s, v, &stage);
    if let Some(detect) = &v.detect
        && run_command(detect, &stage, &env).await.ok()
    {
        record(s, hash, v, InstallState::Skipped, "already installed (the detect command exited 0)".into(), Some(0))
            .await;
        return Ok(());
    }
    tracing::info!(product = %v.product, version = %v.version, "installing: {reason}");
    // Recorded before the command runs, so a crash mid-install is found at the next start.
    record(s, hash, v, InstallState::Installing, reason.to_string(), None).await;
    let store = s.store.clone();
    let out = run_command_tracked(&v.install, &stage, &env, |pid| async move {
        if let Err(e) = store.set_install_pid(hash, pid).await {
            tracing::warn!("cannot record install pid: {e:#}");
        }
    })
    .await;
    if out.ok() {
        record(s, hash, v, InstallState::Installed, out.tail, Some(0)).await;
        return Ok(());
    }
    let failure = out.describe("install");
    tracing::warn!(product = %v.product, version = %v.version, "{failure}");
    record(s, hash, v, InstallState::Failed, failure.clone(), out.code).await;
    if let Some(rb) = &v.rollback {
        let rb_out = run_command(rb, &stage, &env).await;
        if rb_out.ok() {
            record(s, hash, v, InstallState::RolledBack, failure, out.code).await;
        } else {
            record(s, hash, v, InstallState::Failed, format!("{failure}\n{}", rb_out.describe("rollback")), out.code)
                .await;
        }
    }
    Ok(())
}

async fn roll_back_yanked(s: &Arc<Shared>, hash: Hash32, v: &ReleaseManifest, reason: &str) -> Result<()> {
    let Some(rb) = &v.rollback else {
        record(
            s,
            hash,
            v,
            InstallState::Failed,
            format!("yanked with rollback ({reason}), but the release has no rollback command"),
            None,
        )
        .await;
        return Ok(());
    };
    let stage = stage(s, &hash, v)?;
    let out = run_command(rb, &stage, &env_for(s, v, &stage)).await;
    if out.ok() {
        record(s, hash, v, InstallState::RolledBack, format!("yanked: {reason}"), Some(0)).await;
    } else {
        record(s, hash, v, InstallState::Failed, format!("yanked: {reason}; {}", out.describe("rollback")), out.code)
            .await;
    }
    Ok(())
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
