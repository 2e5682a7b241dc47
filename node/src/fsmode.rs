//! File modes of the node's data directory, set explicitly whatever the umask.
//!
//! The node runs install commands as root from files in its data directory, so nobody else may
//! write there, and `state.db` (reports, inventories) and `node.key` are private: the data
//! directory and its subdirectories are 0700 (0710 when a control-socket group is configured,
//! so that group can reach the socket), every file the node keeps is 0600. Checked and fixed at
//! every start, with a warning for each fix.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// The private mode of a file the node writes.
pub const FILE: u32 = 0o600;
/// The mode of the node's directories.
pub const DIR: u32 = 0o700;

/// Creates `dir` (and its parents) with `mode` where it does not exist.
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Sets `path` to `mode` if it has another one; returns a warning naming the change.
pub fn ensure(path: &Path, mode: u32) -> Result<Option<String>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if meta.file_type().is_symlink() {
        anyhow::bail!("{} is a symbolic link; the node's data directory holds none", path.display());
    }
    let current = meta.permissions().mode() & 0o7777;
    if current == mode {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(Some(format!("{} had mode {current:04o}, set to {mode:04o}", path.display())))
}

/// Makes the data directory private: the directory itself (`dir_mode`), `blobs/`, `partial/`,
/// `stage/` (0700), the files in `blobs/` and `partial/`, and the node's own files (0600).
/// Returns one warning per mode it had to fix.
pub fn secure_data_dir(data: &Path, dir_mode: u32) -> Result<Vec<String>> {
    create_dir(data, dir_mode)?;
    let mut fixed = Vec::new();
    fixed.extend(ensure(data, dir_mode)?);
    for sub in ["blobs", "partial", "stage"] {
        let d = data.join(sub);
        create_dir(&d, DIR)?;
        fixed.extend(ensure(&d, DIR)?);
    }
    for name in ["state.db", "state.db-wal", "state.db-shm", "node.key", "lock", "console.token"] {
        fixed.extend(ensure(&data.join(name), FILE)?);
    }
    for sub in ["blobs", "partial"] {
        for e in fs::read_dir(data.join(sub)).with_context(|| format!("cannot list {}/{sub}", data.display()))? {
            let e = e?;
            if e.file_type()?.is_file() {
                fixed.extend(ensure(&e.path(), FILE)?);
            }
        }
    }
    Ok(fixed)
}

/// Writes a file of the node's (the revocation list held, its certificate, the record of the
/// packages a Debian release replaced) atomically: a temporary file, synced, then a rename;
/// mode 0600 whatever the umask.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::fsmode::FILE)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Opens a file someone else named (a bundle a control-socket client points at) for reading,
/// as root may not: the last component must not be a symbolic link, and it must be a regular
/// file (a FIFO would block the reader forever, `/dev/zero` never ends). Opened non-blocking,
/// so even a FIFO's open returns at once. Blocking otherwise (call off the async runtime).
pub fn open_regular(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {} (a symbolic link is not followed)", path.display()))?;
    let meta = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    Ok(f)
}

/// Reads a whole file with [`open_regular`], refusing one larger than `cap` bytes (checked
/// before and while reading: the file may grow). Blocking.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > cap {
        anyhow::bail!("{} is {len} bytes, more than the {cap} allowed", path.display());
    }
    let mut out = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut out).with_context(|| format!("cannot read {}", path.display()))?;
    if out.len() as u64 > cap {
        anyhow::bail!("{} grew past the {cap} bytes allowed while it was read", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_modes_are_tightened_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir_all(data.join("blobs")).unwrap();
        fs::write(data.join("blobs/abc"), b"x").unwrap();
        fs::write(data.join("state.db"), b"").unwrap();
        for (p, m) in [
            (data.clone(), 0o777),
            (data.join("blobs"), 0o777),
            (data.join("blobs/abc"), 0o666),
            (data.join("state.db"), 0o644),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        }
        let fixed = secure_data_dir(&data, DIR).unwrap();
        assert_eq!(fixed.len(), 4, "{fixed:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("blobs")), 0o700);
        assert_eq!(mode(&data.join("blobs/abc")), 0o600);
        assert_eq!(mode(&data.join("state.db")), 0o600);
        assert!(secure_data_dir(&data, DIR).unwrap().is_empty(), "a second pass changes nothing");
    }

    #[test]
    fn a_named_file_is_read_only_when_regular_unlinked_and_under_its_cap_and_a_fifo_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        fs::write(&ok, b"hello").unwrap();
        assert_eq!(read_capped(&ok, 5).unwrap(), b"hello");
        assert!(format!("{:#}", read_capped(&ok, 4).unwrap_err()).contains("more than the 4 allowed"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(read_capped(&link, 100).is_err(), "a symbolic link was followed");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_capped(&zero, 100).is_err());
        assert!(format!("{:#}", read_capped(Path::new("/dev/zero"), 100).unwrap_err()).contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer: a blocking open would never return.
        assert!(format!("{:#}", read_capped(&fifo, 100).unwrap_err()).contains("not a regular file"));
    }
}
