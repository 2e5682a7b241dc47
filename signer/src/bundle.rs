//! A release bundle on disk: the signed manifest, the files, and any approvals and yank.
//!
//! The layout itself is defined once, in `lanpatch_protocol::bundle`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lanpatch_protocol::{FileEntry, FileHasher, Limits, Payload, RelPath, Signed};

/// The bundle layout is defined once, in `lanpatch_protocol::bundle`.
pub use lanpatch_protocol::bundle::BundleLayout as Bundle;

/// Reads and decodes a signed file of type `T` (signatures are not checked here).
/// The bytes of a signed file, refused unread when it is larger than any envelope may be.
pub fn read_limited(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > limits.max_envelope_bytes as u64 {
        bail!("{} is {} bytes, larger than any signed lanpatch file", path.display(), meta.len());
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn load<T: Payload>(path: &Path, limits: &Limits) -> Result<Signed<T>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > limits.max_envelope_bytes as u64 {
        bail!(
            "{} is {} bytes, larger than any valid {} ({} bytes)",
            path.display(),
            meta.len(),
            T::NAME,
            limits.max_envelope_bytes
        );
    }
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Signed::<T>::decode(&bytes, limits).with_context(|| format!("{} is not a valid {}", path.display(), T::NAME))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes a new file with exactly `mode` (whatever the umask), refusing to replace an existing
/// one. A failed write removes what it created.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = match fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} already exists; refusing to overwrite it", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    let written = f
        .set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()));
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// [`write_atomic`] with exactly `mode` (whatever the umask): replaces `path` in one rename.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let done = f
        .set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|_| {
            fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

/// Refuses to overwrite a file or directory a command would create.
pub fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        anyhow::bail!("{} already exists; refusing to overwrite it", path.display());
    }
    Ok(())
}

/// The protocol's own checks of a payload (sizes, names, ranges) before it is signed and saved.
pub fn check_payload<T: Payload>(value: &T, limits: &Limits) -> Result<()> {
    value.validate(limits).map_err(|e| anyhow::anyhow!("{} is not valid: {e}", T::NAME))
}

pub fn save<T: Payload>(path: &Path, signed: &Signed<T>) -> Result<()> {
    write_atomic(path, &signed.to_bytes())
}

/// A file to put into a release: where it is now and its name in the release.
pub struct Source {
    pub path: PathBuf,
    pub name: RelPath,
    pub executable: bool,
    pub size: u64,
}

/// Lists the regular files under `dir`, named by their path relative to it. Symlinks and special
/// files are refused rather than followed, so a release holds exactly what the admin sees.
pub fn sources_from_dir(dir: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", d.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path.strip_prefix(dir).context("file outside the release directory")?;
                let rel = rel.to_str().with_context(|| format!("{} is not valid UTF-8", rel.display()))?;
                out.push(source(&path, rel)?);
            } else {
                bail!("{} is a symlink or special file; a release may only contain regular files", path.display());
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn source(path: &Path, name: &str) -> Result<Source> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let name: RelPath =
        name.replace(std::path::MAIN_SEPARATOR, "/").parse().with_context(|| format!("bad file name {name:?}"))?;
    #[cfg(unix)]
    let executable = {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    };
    #[cfg(not(unix))]
    let executable = false;
    Ok(Source { path: path.to_path_buf(), name, executable, size: meta.len() })
}

/// Hashes a file in 1 MiB reads, copying it to `copy_to` on the way if given.
pub fn hash_file(src: &Source, chunk_size: u32, copy_to: Option<&Path>) -> Result<FileEntry> {
    let mut f = fs::File::open(&src.path).with_context(|| format!("cannot open {}", src.path.display()))?;
    let mut out = match copy_to {
        Some(p) => {
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            Some(fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => None,
    };
    let mut hasher = FileHasher::new(chunk_size);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", src.path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(o) = out.as_mut() {
            o.write_all(&buf[..n])?;
        }
    }
    if let Some(o) = out {
        o.sync_all()?;
    }
    #[cfg(unix)]
    if let (Some(p), true) = (copy_to, src.executable) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
    }
    Ok(hasher.finish(src.name.clone(), src.executable))
}
