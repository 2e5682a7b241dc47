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
}
