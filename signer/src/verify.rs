//! `lanpatch-signer verify`: the checks a node makes, run offline on a bundle, reporting every
//! problem found rather than stopping at the first.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lanpatch_protocol::verify::{
    approval_matches, verify_approval, verify_first_root, verify_manifest, verify_root_update, verify_yank,
};
use lanpatch_protocol::{FileEntry, Limits, RingName, Root, Signed, Timestamp, verify_chunk};

use crate::bundle::Bundle;
use crate::ctx::Ctx;
use crate::time;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The trust root. Repeat to give a rotation chain, oldest (version 1) first.
    #[arg(long = "root", required = true)]
    pub roots: Vec<PathBuf>,
    /// Also require a valid approval for this ring.
    #[arg(long)]
    pub ring: Option<RingName>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    pub bundle: PathBuf,
}

/// Exit 0 when the bundle is valid, 1 when a check failed.
pub fn run(a: VerifyArgs, ctx: &Ctx) -> Result<std::process::ExitCode> {
    let ok = verify_bundle(&a.roots, &Bundle::new(&a.bundle), a.ring.as_ref(), &ctx.limits, ctx.now, a.json)?;
    if !a.json {
        if ok {
            println!(
                "next: lanpatch-signer publish --node <admin node's control.sock> {}",
                crate::cosign::sh(&a.bundle)
            );
        } else {
            println!(
                "next: lanpatch-signer pending {} shows which signatures are missing",
                crate::cosign::sh(&a.bundle)
            );
        }
    }
    Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}

/// Every check made, in order; printed as lines (`ok` / `FAIL`) or as JSON at the end.
struct Findings {
    problems: usize,
    checks: Vec<(bool, String)>,
    json: bool,
}

impl Findings {
    fn ok(&mut self, msg: impl std::fmt::Display) {
        if !self.json {
            println!("ok    {msg}");
        }
        self.checks.push((true, msg.to_string()));
    }
    fn fail(&mut self, msg: impl std::fmt::Display) {
        self.problems += 1;
        if !self.json {
            println!("FAIL  {msg}");
        }
        self.checks.push((false, msg.to_string()));
    }
    /// Prints the verdict and returns whether the bundle is valid.
    fn finish(self, note: Option<&str>) -> Result<bool> {
        let valid = self.problems == 0;
        if self.json {
            let checks: Vec<serde_json::Value> =
                self.checks.iter().map(|(ok, m)| serde_json::json!({ "ok": ok, "message": m })).collect();
            let v = serde_json::json!({ "valid": valid, "problems": self.problems, "checks": checks, "note": note });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let Some(n) = note {
            println!("invalid: {n}");
        } else if valid {
            println!("valid");
        } else {
            println!("invalid: {} problem(s)", self.problems);
        }
        Ok(valid)
    }
}

/// Returns whether the bundle is valid.
pub fn verify_bundle(
    roots: &[PathBuf],
    b: &Bundle,
    ring: Option<&RingName>,
    limits: &Limits,
    now: Timestamp,
    json: bool,
) -> Result<bool> {
    let mut f = Findings { problems: 0, checks: Vec::new(), json };
    let root = match load_root_chain(roots, limits, now) {
        Ok(r) => {
            f.ok(format_args!("trust root version {} (expires {})", r.value().version, time::show(r.value().expires)));
            r
        }
        Err(e) => {
            f.fail(format_args!("trust root: {e:#}"));
            return f.finish(Some("cannot check anything without a valid trust root"));
        }
    };
    let root_value = root.value();
    let manifest_bytes =
        std::fs::read(b.manifest_path()).with_context(|| format!("cannot read {}", b.manifest_path().display()))?;
    let manifest = match verify_manifest(&manifest_bytes, root_value, limits, now, None) {
        Ok(m) => {
            f.ok(format_args!(
                "manifest {} version {} signed by {} release key(s), expires {}",
                m.value().product,
                m.value().version,
                m.envelope().count_signatures(&root_value.keys(lanpatch_protocol::Role::Release)).valid,
                time::show(m.value().expires)
            ));
            Some(m)
        }
        Err(e) => {
            f.fail(format_args!("manifest: {e}"));
            // Still check the files against the (untrusted) manifest so the admin sees everything.
            Signed::<lanpatch_protocol::ReleaseManifest>::decode(&manifest_bytes, limits).ok()
        }
    };
    if let Some(m) = &manifest {
        for file in &m.value().files {
            match check_file(b, file) {
                Ok(()) => f.ok(format_args!("file {} ({} bytes, {} chunks)", file.path, file.size, file.chunks.len())),
                Err(e) => f.fail(format_args!("file {}: {e:#}", file.path)),
            }
        }
        // What Debian's archive said about each package when the release was made.
        if let lanpatch_protocol::Installer::Debian(d) = &m.value().installer {
            for p in &d.packages {
                match &p.archive {
                    Some(r) => f.ok(format_args!(
                        "package {} {} {}: listed by Debian's archive, {} ({}), {}",
                        p.name, p.version, p.architecture, r.suite, r.date, r.index
                    )),
                    None => f.ok(format_args!(
                        "package {} {} {}: not checked against Debian's archive (made without --apt-lists)",
                        p.name, p.version, p.architecture
                    )),
                }
            }
        }
    }
    let mut rings_ok = Vec::new();
    if let Ok(entries) = std::fs::read_dir(b.approvals_dir()) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let result = verify_approval(&bytes, root_value, limits, now).map_err(anyhow::Error::from).and_then(|a| {
                if let Some(m) = &manifest {
                    approval_matches(a.value(), m)?;
                }
                Ok(a)
            });
            match result {
                Ok(a) => {
                    let v = a.value();
                    f.ok(format_args!(
                        "approval for ring {} (not before {}{}{}); rollout rules: {}",
                        v.ring,
                        time::show(v.not_before),
                        v.deadline.map(|d| format!(", deadline {}", time::show(d))).unwrap_or_default(),
                        v.forced_reason.as_ref().map(|r| format!(", FORCED: {r}")).unwrap_or_default(),
                        v.rules.as_ref().map(|r| r.describe()).unwrap_or_else(|| "none".into())
                    ));
                    rings_ok.push(v.ring.clone());
                }
                Err(e) => f.fail(format_args!("approval {}: {e:#}", p.display())),
            }
        }
    }
    if let Some(r) = ring
        && !rings_ok.contains(r)
    {
        f.fail(format_args!("no valid approval for ring {r}"));
    }
    if b.yank_path().exists() {
        let bytes = std::fs::read(b.yank_path())?;
        match verify_yank(&bytes, root_value, limits, now) {
            Ok(y) => f.fail(format_args!("release is YANKED ({:?}): {}", y.value().action, y.value().reason)),
            Err(e) => f.fail(format_args!("yank file present but not valid: {e}")),
        }
    }
    f.finish(None)
}

fn load_root_chain(roots: &[PathBuf], limits: &Limits, now: Timestamp) -> Result<Signed<Root>> {
    let mut iter = roots.iter();
    let first = iter.next().context("no trust root given")?;
    let bytes = std::fs::read(first).with_context(|| format!("cannot read {}", first.display()))?;
    let mut current = verify_first_root(&bytes, limits, now).with_context(|| format!("{}", first.display()))?;
    for p in iter {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        current = verify_root_update(&current, &bytes, limits, now).with_context(|| format!("{}", p.display()))?;
    }
    Ok(current)
}

fn check_file(b: &Bundle, file: &FileEntry) -> Result<()> {
    use std::io::Read;
    let path = b.file_path(&file.path);
    let mut fh = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = fh.metadata()?.len();
    if len != file.size {
        anyhow::bail!("is {len} bytes, the manifest says {}", file.size);
    }
    let mut buf = vec![0u8; file.chunk_size as usize];
    for i in 0..file.chunks.len() as u32 {
        let Some((_, n)) = file.chunk_range(i) else { break };
        fh.read_exact(&mut buf[..n as usize])?;
        verify_chunk(file, i, &buf[..n as usize])?;
    }
    Ok(())
}
