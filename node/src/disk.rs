//! What the data directory holds on disk and what the disk has free: plain filesystem reads,
//! for admission, retention, status and metrics.

/// Bytes available to this process on the filesystem holding `dir` (`None`: cannot tell).
pub fn free_disk(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The size of the filesystem holding `dir` (`None`: cannot tell).
pub fn disk_size(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some((st.blocks() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Bytes of the files under `p` (symbolic links and special files count nothing).
fn tree(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if meta.is_dir() {
        std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| tree(&e.path())).sum()
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}

fn state_bytes(data_dir: &std::path::Path) -> u64 {
    ["state.db", "state.db-wal", "state.db-shm"].iter().map(|f| tree(&data_dir.join(f))).sum()
}

/// What the data directory holds, by kind: release files as the library's map counts them
/// (`held`: complete, partial), the rest by a walk of small directories (staging copies, kept
/// packages) and the database's files (blocking).
pub fn disk_use(data_dir: &std::path::Path, held: (u64, u64)) -> lanpatch_protocol::control::DiskUse {
    lanpatch_protocol::control::DiskUse {
        blobs: held.0,
        partial: held.1,
        stage: tree(&data_dir.join("stage")),
        state: state_bytes(data_dir),
        kept: tree(&data_dir.join("kept")),
    }
}

/// What `cache_quota` counts besides the release files the library holds: staging copies (a
/// release whose commands run), packages kept for a Debian release's rollback, and the
/// database with its WAL (blocking, a few `stat`s).
pub fn written_besides_releases(data_dir: &std::path::Path) -> u64 {
    tree(&data_dir.join("stage")) + tree(&data_dir.join("kept")) + state_bytes(data_dir)
}

/// Bytes of the files under `p` (blocking).
pub fn tree_bytes(p: &std::path::Path) -> u64 {
    tree(p)
}
