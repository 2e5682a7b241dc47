//! Self-update: lanpatch ships new versions of itself as lanpatch releases (the install command is
//! `dpkg -i` of the new package). After an install, the node compares its executable on disk with
//! the one it started from; when the package replaced it, the node stops its tasks the normal way
//! (the install's outcome is already persisted and reported) and `exec`s the new binary with the
//! same arguments: same PID, so systemd sees a reload, not a crash. The package's postinst does
//! not restart the service when lanpatch-node itself runs it (`LANPATCH_STAGE` is set): systemd
//! would kill the running install with it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The executable this process started from: its path and the file (device, inode) it was.
#[derive(Clone, Debug)]
pub struct Exe {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Exe {
    /// The running executable, if its path can be found (not on every platform or sandbox).
    pub fn current() -> Option<Exe> {
        let path = std::env::current_exe().ok()?;
        Self::at(&path)
    }

    fn at(path: &Path) -> Option<Exe> {
        let m = std::fs::metadata(path).ok()?;
        Some(Exe { path: path.to_path_buf(), dev: m.dev(), ino: m.ino() })
    }

    /// A different file now sits at the path (a package upgrade renames the new binary over the
    /// old one). A missing file is not a replacement: a half-done removal must not be exec'd.
    pub fn replaced(&self) -> bool {
        Self::at(&self.path).is_some_and(|now| (now.dev, now.ino) != (self.dev, self.ino))
    }
}

/// Whether the file at `path` can replace the running node: an ELF executable (glibc's exec
/// would hand any other file to `/bin/sh`) with its owner's execute bit. `Err` says why not.
pub fn executable(path: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let f = crate::fsmode::open_regular(path).map_err(|e| format!("{e:#}"))?;
    let mode = f.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.permissions().mode();
    if mode & 0o100 == 0 {
        return Err(format!("{} is not executable (mode {:o})", path.display(), mode & 0o7777));
    }
    let mut head = [0u8; 20];
    f.take(20).read_exact(&mut head).map_err(|_| format!("{} is not an ELF executable", path.display()))?;
    if &head[..4] != b"\x7fELF" {
        return Err(format!("{} is not an ELF executable", path.display()));
    }
    // The kernel refuses another class, byte order or machine (ENOEXEC): compared with the
    // running executable's header.
    let mut mine = [0u8; 20];
    if std::fs::File::open("/proc/self/exe").and_then(|f| f.take(20).read_exact(&mut mine)).is_ok()
        && (head[4], head[5], &head[18..20]) != (mine[4], mine[5], &mine[18..20])
    {
        return Err(format!("{} is an ELF executable for another machine", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_renamed_over_the_path_is_a_replacement_and_a_removed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"v1").unwrap();
        let exe = Exe::at(&path).unwrap();
        assert!(!exe.replaced());
        let new = dir.path().join("bin.new");
        std::fs::write(&new, b"v2").unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert!(exe.replaced());
        std::fs::remove_file(&path).unwrap();
        assert!(!exe.replaced());
    }

    #[test]
    fn only_an_executable_elf_file_may_replace_the_node() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\necho pwned\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(executable(&script).unwrap_err().contains("not an ELF executable"));
        let elf = dir.path().join("elf");
        std::fs::copy(std::env::current_exe().unwrap(), &elf).unwrap();
        std::fs::set_permissions(&elf, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(executable(&elf).unwrap_err().contains("is not executable"));
        std::fs::set_permissions(&elf, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(executable(&elf), Ok(()));
        // The same file for another machine (e_machine at offset 18).
        let mut bytes = std::fs::read(&elf).unwrap();
        bytes[18] ^= 0xff;
        let other = dir.path().join("other");
        std::fs::write(&other, &bytes).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(executable(&other).unwrap_err().contains("for another machine"));
    }
}
