//! The on-disk layout of a release bundle, defined once for the signer (which writes bundles) and
//! the node (which reads them on `publish`). Paths only: no I/O here.
//!
//! ```text
//! BUNDLE/manifest.lpm            signed release manifest
//! BUNDLE/files/<file name>       the release's files, as named in the manifest
//! BUNDLE/approvals/<ring>.lpa    signed approvals, one per ring
//! BUNDLE/yank.lpy                a signed yank, if the release was withdrawn
//! ```

use std::path::{Path, PathBuf};

use crate::types::{RelPath, RingName};

#[derive(Clone, Debug)]
pub struct BundleLayout {
    pub dir: PathBuf,
}

impl BundleLayout {
    pub fn new(dir: &Path) -> Self {
        BundleLayout { dir: dir.to_path_buf() }
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.lpm")
    }
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }
    /// Where a file of the release lies (a `RelPath` has no `..` and is never absolute).
    pub fn file_path(&self, name: &RelPath) -> PathBuf {
        name.components().fold(self.files_dir(), |p, c| p.join(c))
    }
    pub fn approvals_dir(&self) -> PathBuf {
        self.dir.join("approvals")
    }
    pub fn approval_path(&self, ring: &RingName) -> PathBuf {
        self.approvals_dir().join(format!("{ring}.lpa"))
    }
    /// Approval files end in this extension; anything else in `approvals/` is ignored.
    pub const APPROVAL_EXT: &'static str = "lpa";
    pub fn yank_path(&self) -> PathBuf {
        self.dir.join("yank.lpy")
    }
}
